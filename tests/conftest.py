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
pytest_plugins = ["service_fixtures"]


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `needs_explain_methods` wait for issue 10's explain methods: skipped until the marker goes."""
    skip = pytest.mark.skip(reason="needs a bundle with two or more explanation methods (issue 10)")
    for item in items:
        if "needs_explain_methods" in item.keywords:
            item.add_marker(skip)
