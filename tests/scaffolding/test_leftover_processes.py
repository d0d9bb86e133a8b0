"""The session guard (flashpods_testing.leftover_processes): what counts as left behind,
and a real pytest session that leaks processes fails and leaves none running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flashpods_testing
from flashpods_testing.leftover_processes import Process, leftovers, names_a_path_under, processes

BASE = Path("/tmp/pytest-of-root/pytest-22")


def test_children_orphans_naming_the_basetemp_and_their_descendants_are_left_behind() -> None:
    table = {
        p.pid: p
        for p in [
            Process(1, 0, "S", ("init",)),
            Process(10, 1, "S", ("flock", "lab.lock", "pytest", f"--basetemp={BASE}")),
            Process(20, 10, "S", ("pytest", f"--basetemp={BASE}")),  # the session itself
            Process(30, 20, "S", ("sleep", "1000")),  # a child never ended
            Process(31, 20, "Z", ("true",)),  # a zombie: not running
            Process(40, 1, "S", ("rsync", f"--config={BASE}/t0/rsyncd.conf")),  # orphaned
            Process(41, 40, "S", ("rsync-child",)),  # and its descendant
            Process(50, 1, "S", ("rsync", f"--config={BASE}4/t0/rsyncd.conf")),  # pytest-224
            Process(60, 1, "S", ("catatonit", "-P")),  # a shared daemon
        ]
    }
    assert [p.pid for p in leftovers(20, BASE, table)] == [30, 40, 41]
    assert [p.pid for p in leftovers(20, None, table)] == [30]


def run_session(tmp_path: Path, test_body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(
        "import subprocess\n\n\ndef test_inner(tmp_path):\n" + test_body
    )
    testing = str(Path(flashpods_testing.__file__).parent.parent)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "flashpods_testing.leftover_processes",
            f"--basetemp={tmp_path / 'inner'}",
            "test_inner.py",
        ],
        cwd=tmp_path,
        # No entry-point plugins (hypothesis alone takes seconds to import).
        env={**os.environ, "PYTHONPATH": testing, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_session_that_leaks_fails_and_its_processes_are_killed(tmp_path: Path) -> None:
    result = run_session(
        tmp_path,
        '    subprocess.Popen(["sleep", "7777.25"])\n'
        "    # A wrapper that exits at once: its child runs on under init.\n"
        '    subprocess.run(["sh", "-c", f"sh -c \'sleep 7777.5; : {tmp_path}/x\' '
        '>/dev/null 2>&1 &"], check=True)\n',
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "processes left behind" in result.stdout
    for leaked in ("sleep 7777.25", "sleep 7777.5", f"{tmp_path}/inner/test_inner0/x"):
        assert leaked in result.stdout
    still = [
        p.describe()
        for p in processes()
        if names_a_path_under(p, tmp_path)
        or p.args[:2] in (("sleep", "7777.25"), ("sleep", "7777.5"))
    ]
    assert still == []


def test_a_session_that_ends_its_processes_passes(tmp_path: Path) -> None:
    result = run_session(tmp_path, '    subprocess.run(["sleep", "0"], check=True)\n')
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processes left behind" not in result.stdout
