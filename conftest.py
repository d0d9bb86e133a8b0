"""Markers by place: every test under a directory that needs a real component carries
that component's marker, so `-m "not lab"` (or podman, spire, slow) really leaves those
tests out. Tests elsewhere that need one mark themselves. A session that leaves processes
running fails (flashpods_testing.leftover_processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["flashpods_testing.leftover_processes"]

ROOT = Path(__file__).resolve().parent
MARKERS = {
    "integration/lab": ("lab", "podman", "spire", "slow"),
    "integration/identity": ("spire", "podman", "slow"),
    "integration/api": ("podman", "slow"),
    "integration/client": ("podman", "slow"),
    "integration/setup": ("slow",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        place = item.path.resolve()
        for directory, names in MARKERS.items():
            if place.is_relative_to(ROOT / directory):
                for name in names:
                    item.add_marker(name)
