"""Shared test fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: the earth-data mirror, resolved (MADBENCH_EARTH_DIR may be relative to where pytest starts)
EARTH_MIRROR = Path(
    os.environ.get("MADBENCH_EARTH_DIR", REPO.parent / "shared" / "data" / "earth")
).resolve()


def pytest_collection_modifyitems(config, items):
    """The SLURM tier installs packages and starts daemons as root: it runs only when selected
    (-m slurm), not in a bare `pytest` or `pytest -m "not slow"`."""
    if "slurm" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="SLURM tier: runs only when selected (pytest -m slurm)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


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


def chrome_driver():
    """A headless chromium with browser and network logs, or skip with the reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("chromium or chromedriver missing: apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.binary_location = browser
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)
