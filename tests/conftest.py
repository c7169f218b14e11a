"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EARTH_MIRROR = Path(os.environ.get("MADBENCH_EARTH_DIR", REPO.parent / "shared" / "data" / "earth"))


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    """geomstats' torch backend switches the default dtype on import; undo it after each test."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def earth_dir() -> Path:
    if not EARTH_MIRROR.is_dir():
        pytest.skip(f"earth data mirror not found at {EARTH_MIRROR} (set MADBENCH_EARTH_DIR)")
    return EARTH_MIRROR


@pytest.fixture
def gen() -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0)
    return g
