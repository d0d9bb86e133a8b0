"""Delta re-upload in the lab, from the laptop namespace over WireGuard, with the full
upload beside it in the same run.

Tree: 5,000 files of random bytes, 100 MiB (one of them a 1 MiB file). Wire bytes are
the laptop's WireGuard interface counters (tx + rx, /proc/net/dev in its namespace: the
tunnel's payload, API calls included), next to rsync's own "Total bytes sent".

1. uploads through the SDK: the full upload (no base), the unchanged tree again with its
   base still in use (the host copies it) and with its base's job over (the host moves
   it), and the tree with the 1 MiB file rewritten;
2. `flashpods run -- true` (the console script) on an empty folder (the yardstick), on the
   unchanged tree (each round's base is the previous round's upload) and on the tree with
   no base (a fresh cache: the full upload), rounds interleaved.

Brings the lab up if it is down (and takes it down again). Needs root; the lab is shared:

    flock /tmp/flashpods-lab.lock python bench/upload_delta.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "testing"))

from flashpods.client.bases import UploadBases  # noqa: E402
from flashpods.client.config import load_config  # noqa: E402
from flashpods.client.models import Upload  # noqa: E402
from flashpods.client.sdk import Flashpods  # noqa: E402
from flashpods.lab import lab  # noqa: E402
from flashpods_testing.trees import write_tree  # noqa: E402

BIN = Path(sys.executable).parent
FILES, TOTAL, BIG = 5000, 100 * 1024 * 1024, 1024 * 1024


def wire_bytes(interface: str) -> int:
    """rx + tx of `interface` in this process's network namespace."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == interface:
            fields = counters.split()
            return int(fields[0]) + int(fields[8])
    raise SystemExit(f"no interface {interface} in this namespace")


def measured(interface: str, fn: Callable[[], Upload]) -> tuple[Upload, int, float]:
    before, start = wire_bytes(interface), time.perf_counter()
    upload = fn()
    return upload, wire_bytes(interface) - before, time.perf_counter() - start


def run_true(env: dict[str, str], folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(BIN / "flashpods"), "run", "--dir", str(folder), "--", "true"],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def in_laptop(rounds: int) -> None:
    interface = lab.topology().laptop_wg
    with tempfile.TemporaryDirectory(prefix="flashpods-bench-") as tmp:
        work = Path(tmp)
        project, empty = work / "project", work / "empty"
        empty.mkdir()
        write_tree(project, FILES - 1, TOTAL - BIG)
        (project / "big.bin").write_bytes(os.urandom(BIG))
        config = load_config()
        bases = UploadBases(work / "sdk-cache")
        rows: list[tuple[str, Upload, int, float]] = []

        def row(name: str, fn: Callable[[], Upload]) -> Upload:
            rows.append((name, *measured(interface, fn)))
            return rows[-1][1]

        with (
            Flashpods.from_config(config, upload_bases=None) as full,
            Flashpods.from_config(config, upload_bases=bases) as fp,
        ):
            first = row("full upload (no base)", lambda: full.upload(project))
            bases.remember(fp.base_url, project, first.upload_id)
            again = row("unchanged, base in use (copied)", lambda: fp.upload(project))
            fp.wait(fp.create_worker("true", files_id=again.upload_id).job_id, timeout=120)
            row("unchanged, base's job over (moved)", lambda: fp.upload(project))
            (project / "big.bin").write_bytes(os.urandom(BIG))
            row("one 1 MiB file rewritten", lambda: fp.upload(project))

        env = {**os.environ, "XDG_CACHE_HOME": str(work / "cli-cache")}
        timings: dict[str, list[float]] = {"empty": [], "delta": [], "full": []}
        run_true(env, project)  # warm-up; the delta runs start from its upload
        run_true(env, empty)
        for n in range(rounds):
            timings["empty"].append(run_true(env, empty))
            timings["delta"].append(run_true(env, project))
            fresh = {**env, "XDG_CACHE_HOME": str(work / f"fresh-{n}")}
            timings["full"].append(run_true(fresh, project))

    print(f"tree: {FILES} files, {TOTAL:,} bytes; wire = {interface} rx+tx in the laptop netns")
    print(f"{'upload':36} {'wire bytes':>13} {'of tree':>8} {'rsync sent':>13} {'literal':>11} s")
    for name, upload, wire, seconds in rows:
        t = upload.transfer
        sent, literal = (f"{t.sent_bytes:,}", f"{t.literal_bytes:,}") if t else ("?", "?")
        print(f"{name:36} {wire:>13,} {wire / TOTAL:>8.2%} {sent:>13} {literal:>11} {seconds:.2f}")
    medians = {k: statistics.median(v) for k, v in timings.items()}
    print(f"flashpods run -- true, median of {rounds} (min-max):")
    for name, label in (
        ("empty", "empty folder (yardstick)"),
        ("delta", "unchanged tree, delta"),
        ("full", "unchanged tree, no base (full)"),
    ):
        values = timings[name]
        print(
            f"  {label:34} {medians[name]:6.2f} s ({min(values):.2f}-{max(values):.2f})"
            f"  {medians[name] / medians['empty']:.2f}x the yardstick"
        )
    full_wire, unchanged_wire, changed_wire = rows[0][2], rows[2][2], rows[3][2]
    print("targets:")
    print(
        f"  unchanged tree on the wire < 1 %: {unchanged_wire / TOTAL:.2%}"
        f" (full upload {full_wire / TOTAL:.0%})"
    )
    print(
        "  run -- true on it within 1.5x of an empty folder: "
        f"{medians['delta'] / medians['empty']:.2f}x"
        f" (full upload {medians['full'] / medians['empty']:.2f}x)"
    )
    print(
        f"  one changed 1 MiB file re-sends about 1 MiB: {changed_wire:,} bytes"
        f" ({changed_wire / BIG:.2f}x; full upload {full_wire:,})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.environ.get("FLASHPODS_LAB_NETNS") == "laptop":
        in_laptop(args.rounds)
        return 0
    was_up = bool(lab.status().get("supervisor_running"))
    if not was_up:
        lab.up()
    try:
        argv = lab.shell_argv("laptop", [sys.executable, __file__, f"--rounds={args.rounds}"])
        return subprocess.run(argv, env=lab.shell_env("laptop"), check=False).returncode
    finally:
        if not was_up:
            lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
