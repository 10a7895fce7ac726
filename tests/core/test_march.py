"""March names, the global and scoped settings, and their errors."""

import threading

import pytest

import qframe_core.march as march_mod
from qframe_core.errors import MarchNotSetError, NotInstalledError
from qframe_core.march import March, get_march, march, resolve_march, set_march


def test_march_attributes_resolve_against_installed_plugins():
    assert March.BAYES == "bayes" and March.BERNOULLI2 == "bernoulli2"
    assert "BAYES" in dir(March)
    with pytest.raises(NotInstalledError, match="march 'nash_m' is not installed.*qframe-march-nash_m"):
        March.NASH_M  # noqa: B018


def test_set_get_and_scoped():
    set_march(March.BERNOULLI2)
    assert get_march() == "bernoulli2"
    with march("bayes"):
        assert get_march() == "bayes"
        with march(March.BERNOULLI2):
            assert get_march() == "bernoulli2"
        assert get_march() == "bayes"
    assert get_march() == "bernoulli2"
    assert resolve_march().requant.multiplier_bits == 16
    assert resolve_march("bayes").requant.multiplier_bits == 32


def test_scoped_march_is_thread_local():
    set_march("bernoulli2")
    seen = []
    with march("bayes"):
        t = threading.Thread(target=lambda: seen.append(get_march()))
        t.start()
        t.join()
    assert seen == ["bernoulli2"]


def test_unknown_and_unset():
    with pytest.raises(NotInstalledError, match="installed marches: bernoulli2, bayes"):
        set_march("x3000")
    with pytest.raises(TypeError):
        set_march(3)
    march_mod._GLOBAL = None
    with pytest.raises(MarchNotSetError, match="set_march"):
        get_march()
