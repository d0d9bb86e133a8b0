"""Timings of the lab: `up` cold (from down) and warm (already up), `down`, and the
demo's phases (upload, finalize, start, run, artifact download) over a few runs.

Prints a table; changes nothing it does not restore (the lab is left up if it was up).
Needs root.

    python bench/lab.py [--demos 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time

from flashpods.lab import lab


def _timed(fn: object) -> float:
    start = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - start


def _demo_phases() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-m", "flashpods.lab.cli", "demo"],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    summary = out.split("summary:", 1)[1]
    return {k.strip(): float(v) for k, v in re.findall(r"([a-z ]+?) ([\d.]+) s", summary)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demos", type=int, default=3)
    args = parser.parse_args()
    was_up = bool(lab.status().get("supervisor_running"))
    rows = [
        ("down", _timed(lab.down)),
        ("up cold (from down)", _timed(lab.up)),
        ("up warm (already up)", _timed(lab.up)),
    ]
    for name, seconds in rows:
        print(f"{name:32} {seconds:8.2f} s")
    runs = [_demo_phases() for _ in range(args.demos)]
    for phase in runs[0]:
        values = [r[phase] for r in runs]
        print(
            f"demo {phase:27} {statistics.median(values):8.2f} s  (median of {len(values)},"
            f" min {min(values):.2f}, max {max(values):.2f})"
        )
    if not was_up:
        lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
