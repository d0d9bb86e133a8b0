"""The VM test scripts lint here as the NixOS test driver would run them.

The driver executes each script with its globals (start_all, subtest, retry, Machine, ...)
and one global per node; vm-tests/ruff.toml declares exactly those, so undefined or
unused names fail here rather than in a KVM build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nix_support import REPO

VM_TESTS = REPO / "vm-tests"
RUFF_CONFIG = VM_TESTS / "ruff.toml"
# nixos/lib/test-driver/test_driver/driver.py, Driver.test_symbols() (plus `os`).
DRIVER_SYMBOLS = {
    "Machine",
    "create_machine",
    "driver",
    "join_all",
    "log",
    "machines",
    "polling_condition",
    "retry",
    "run_tests",
    "serial_stdout_off",
    "serial_stdout_on",
    "start_all",
    "subtest",
    "test_script",
    "vlans",
}


def ruff() -> str:
    path = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(path).exists():
        pytest.fail("ruff is missing: install the test extras (pip install -e '.[test]')")
    return path


def scripts() -> list[Path]:
    return sorted(VM_TESTS.glob("*.py"))


@pytest.fixture(scope="module")
def node_names(nix_eval: Callable[[str], Any]) -> set[str]:
    names: list[str] = nix_eval(
        "builtins.attrNames ((import ./vm-tests/nodes.nix { self = null; }) { lib = null; }).nodes"
    )
    return set(names)


def test_ruff_knows_exactly_the_driver_globals_and_the_nodes(node_names: set[str]) -> None:
    declared = set(tomllib.loads(RUFF_CONFIG.read_text())["builtins"])
    assert declared == DRIVER_SYMBOLS | node_names
    assert node_names == {"host", "laptop", "internet"}


def test_every_vm_test_has_its_script() -> None:
    tests = sorted(p for p in VM_TESTS.glob("*.nix") if p.name != "nodes.nix")
    assert tests, "no VM tests"
    for test in tests:
        named = re.findall(r"builtins\.readFile \./([\w-]+\.py)", test.read_text())
        assert named == [test.with_suffix(".py").name], test.name
        assert (VM_TESTS / named[0]).exists()
    assert {p.stem for p in scripts()} == {p.stem for p in tests}


def test_scripts_pass_ruff_check() -> None:
    proc = subprocess.run(
        [ruff(), "check", "--no-cache", "--config", str(RUFF_CONFIG), *map(str, scripts())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_formatted() -> None:
    proc = subprocess.run(
        [
            ruff(),
            "format",
            "--no-cache",
            "--check",
            "--config",
            str(RUFF_CONFIG),
            *map(str, scripts()),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_flags_an_unknown_global(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("start_all()\nlaptopp.succeed('true')\n")
    proc = subprocess.run(
        [ruff(), "check", "--no-cache", "--config", str(RUFF_CONFIG), str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "F821" in proc.stdout, proc.stdout


def test_scripts_read_container_cgroups_on_the_host() -> None:
    """Under cgroup v2 podman gives each container a private cgroup namespace, so inside
    one /proc/self/cgroup reads `0::/`: cgroups are read on the host, at the container's
    PID (podman inspect .State.Pid)."""
    for script in scripts():
        text = script.read_text()
        assert "/proc/self/cgroup" not in text, script.name
        if "libpod-" in text:
            assert "/proc/{pid}/cgroup" in text and ".State.Pid" in text, script.name
