"""Shared fixtures: a clean march setting per test."""

import pytest
import torch

import qframe_core.march as march_mod


@pytest.fixture(autouse=True)
def _reset_march():
    saved = march_mod._GLOBAL
    yield
    march_mod._GLOBAL = saved


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.manual_seed(0)
    yield
