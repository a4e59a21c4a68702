"""Shared pytest fixtures: the real Debian driver roots and caches, built once and cached across runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixture_set():
    """Driver roots and ld.so.cache files made from Debian's NVIDIA 535 packages by the real ldconfig."""
    from fixtures.driver_roots import ensure_all

    return ensure_all()
