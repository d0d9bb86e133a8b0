"""The Python packages the flake builds itself run, in the same version, in every test.

nixos-24.05 lacks py-spiffe and has a sqlite-utils too old for the API, so nix/ packages
them from PyPI. pyproject.toml pins exactly those versions, so what `pip` installs for the
lab, CI and the tests is what the NixOS host runs (spiffe 0.3 would need protobuf >= 6 and
grpcio >= 1.78; nixos-24.05 has neither).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pytest
from nix_support import REPO


def pinned() -> dict[str, str]:
    """`name==version` requirements of pyproject.toml (every extra included)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return dict(r.split("==", 1) for r in requirements if "==" in r)


@pytest.fixture(scope="module")
def packaged(nix_eval: Callable[[str], Any]) -> dict[str, str]:
    """PyPI name -> version of every Python package nix/ builds from PyPI itself."""
    result: dict[str, str] = nix_eval(
        """
        let
          inherit (import ./tests/nix/standin/flake.nix) flake system;
          flashpods = flake.packages.${system}.flashpods;
        in { spiffe = flashpods.spiffe.version; sqlite-utils = flashpods.sqlite-utils.version; }
        """
    )
    return result


def test_the_flake_packages_what_pyproject_pins(packaged: dict[str, str]) -> None:
    pins = pinned()
    assert {name: pins.get(name) for name in packaged} == packaged


def test_the_tests_run_the_packaged_versions(packaged: dict[str, str]) -> None:
    try:
        installed = {name: metadata.version(name) for name in packaged}
    except metadata.PackageNotFoundError:
        # nix-static's sandbox has tests/nix's tools only; python-unit has the packages.
        pytest.skip("the services' dependencies are not installed here")
    assert installed == packaged, "re-run scripts/setup.sh: the venv predates the pins"
