"""The VM test scripts type-check the way the NixOS test driver checks them.

The driver prepends typed declarations of its globals and one `Machine` per node to the
script and runs mypy before booting anything; the same is done here against stubs of the
driver's signatures (tests/nix/driver_types, from nixos-24.05's test driver).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from nix_support import REPO

STUBS = Path(__file__).parent / "driver_types"
HEADER = """\
from contextlib import AbstractContextManager
from typing import Any, Callable

from test_driver.machine import Machine, retry

start_all: Callable[[], None]
subtest: Callable[[str], AbstractContextManager[None]]
host: Machine
laptop: Machine
internet: Machine
"""


def mypy(script: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    typed = tmp_path / script.name
    typed.write_text(HEADER + script.read_text())
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--no-implicit-optional",
            "--pretty",
            "--no-color-output",
            str(typed),
        ],
        # No project config: the driver runs mypy with its defaults.
        cwd=tmp_path,
        env={"MYPYPATH": str(STUBS), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("name", ["network.py", "jobs.py"])
def test_vm_script_type_checks(name: str, tmp_path: Path) -> None:
    proc = mypy(REPO / "vm-tests" / name, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_type_error_is_caught(tmp_path: Path) -> None:
    script = tmp_path / "src" / "bad.py"
    script.parent.mkdir()
    script.write_text("start_all()\nhost.wait_for_unit(42)\n")
    proc = mypy(script, tmp_path)
    assert proc.returncode == 1 and "wait_for_unit" in proc.stdout, proc.stdout
