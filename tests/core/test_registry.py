"""Discovery rules of SPEC.md: listing, not-installed errors, duplicates, broken plugins, laziness."""

import subprocess
import sys

import pytest

from qframe_core.errors import DuplicateContributionError, NotInstalledError
from qframe_core.hookspecs import hookimpl
from qframe_core.quantization.observer import ObserverBase
from qframe_core.registry import AnalysisTool, Registry, registry


class _Obs(ObserverBase):
    pass


class ObserverPlugin:
    def __init__(self, name):
        self.name = name

    @hookimpl
    def qframe_register_observers(self, register):
        register(self.name, _Obs)


class RaisingPlugin:
    @hookimpl
    def qframe_register_observers(self, register):
        register("half_done", _Obs)
        raise RuntimeError("boom")


class BadRegisterPlugin:
    @hookimpl
    def qframe_register_tools(self, register):
        register("not a tool record")


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setenv("QFRAME_PLUGINS", "")  # no installed plugin: only what the test registers
    return Registry()


def test_installed_plugins_are_listed_with_their_distribution():
    dists = {c.key: c.distribution for c in registry.contributions("march")}
    assert dists == {"bernoulli2": "qframe-march-bernoulli2", "bayes": "qframe-march-bayes"}
    assert registry.distribution_of("observer", "min_max") == "qframe-observers"
    assert registry.distribution_of("tool", "featuremap_similarity") == "qframe-profiler"
    assert registry.lowerings("bayes") and registry.fusion_patterns("bernoulli2")
    assert registry.broken() == []


def test_in_process_plugin_and_lookup(fresh):
    fresh.register_plugin(ObserverPlugin("mine"), "mine", "my-dist")
    assert fresh.observer("mine") is _Obs
    assert fresh.distribution_of("observer", "mine") == "my-dist"


def test_not_installed_names_what_is_and_what_to_install(fresh):
    fresh.register_plugin(ObserverPlugin("mine"), "mine", "my-dist")
    with pytest.raises(NotInstalledError, match=r"march 'bayes' is not installed \(installed marches: none\).*"
                                                r"pip install qframe-march-bayes"):
        fresh.march("bayes")
    with pytest.raises(NotInstalledError, match=r"installed observers: mine"):
        fresh.observer("kl")


def test_duplicate_names_are_an_error_naming_both_distributions(fresh):
    fresh.register_plugin(ObserverPlugin("dup"), "p1", "dist-one")
    with pytest.warns(RuntimeWarning, match="dist-one"):
        fresh.register_plugin(ObserverPlugin("dup"), "p2", "dist-two")
        fresh.load()
    with pytest.raises(DuplicateContributionError, match=r"dist-one \(plugin 'p1'\) and dist-two \(plugin 'p2'\)"):
        fresh.observer("dup")
    assert len(fresh.conflicts()) == 1


def test_broken_plugin_is_isolated_and_reported(fresh):
    fresh.register_plugin(ObserverPlugin("good"), "good", "good-dist")
    with pytest.warns(RuntimeWarning, match="broken"):
        fresh.register_plugin(RaisingPlugin(), "bad", "bad-dist")
        fresh.register_plugin(BadRegisterPlugin(), "worse", "worse-dist")
        fresh.load()
    assert fresh.observer("good") is _Obs
    # nothing of a plugin that failed half-way is kept
    with pytest.raises(NotInstalledError):
        fresh.observer("half_done")
    broken = {b.plugin: b for b in fresh.broken()}
    assert set(broken) == {"bad", "worse"}
    assert "RuntimeError" in broken["bad"].error and "boom" in broken["bad"].error
    assert "AnalysisTool" in broken["worse"].error


def test_qframe_plugins_env_pins_what_loads(monkeypatch):
    monkeypatch.setenv("QFRAME_PLUGINS", "bayes,observers")
    r = Registry()
    assert r.march_names() == ["bayes"]
    assert r.contributions("tool") == []


def test_tool_record_roundtrip(fresh):
    class ToolPlugin:
        @hookimpl
        def qframe_register_tools(self, register):
            register(AnalysisTool("t", len, "length"))

    fresh.register_plugin(ToolPlugin(), "tp", "tool-dist")
    assert fresh.tool("t").function is len
    with pytest.raises(NotInstalledError, match="installed tools: t"):
        fresh.tool("nope")


def test_importing_core_loads_no_plugin():
    code = ("import sys, qframe_core, qframe_core.quantization, qframe_core.quantization.qconfig;"
            "from qframe_core.registry import registry;"
            "assert not registry._loaded;"
            "assert not any(m.startswith(('qframe_march', 'qframe_observers', 'qframe_profiler')) for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_plugin_registering_a_name_twice_is_broken_with_a_clear_reason(fresh):
    class Twice:
        @hookimpl
        def qframe_register_observers(self, register):
            register("same", _Obs)
            register("same", _Obs)

    with pytest.warns(RuntimeWarning, match="registers observer 'same' twice"):
        fresh.register_plugin(Twice(), "twice", "twice-dist")
        fresh.load()
    assert [b.plugin for b in fresh.broken()] == ["twice"]
