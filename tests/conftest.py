"""Suite-wide settings: keep every test frugal with this machine's two cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tests run beside servers and load generators
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# Fixtures for the service tests (bundles, a real uvicorn server on loopback).
pytest_plugins = ["service_fixtures", "web_browser"]  # fixtures shared by every module (one browser a session)
