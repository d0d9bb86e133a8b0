"""Hostile jobs shared by integration/api/test_hostile_limits.py (which asserts) and
bench/hostile.py (which prints the numbers): the commands, and a sampler of the host disk
a job's container uses while it runs."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30
DD_3G = "dd if=/dev/zero of={path} bs=1M count=3072"
FLOOD_BYTES = 300_000_000
FLOOD = f"yes | head -c {FLOOD_BYTES}"
# Fails at the first path it cannot fill; exit 1 when every write failed.
DD_ROOT = (
    f"for f in /big /var/tmp/big /run/big; do {DD_3G.format(path='$f')} && exit 0; done; exit 1"
)
IGNORES_TERM = (
    'trap "" TERM; while :; do echo tick; dd if=/dev/zero of=/tmp/f bs=1M count=64 2>/dev/null; '
    "done"
)
ORPHAN = "sleep 600 & exit 0"
FORK_5000 = (
    "i=0; while [ $i -lt 5000 ]; do sleep 600 & i=$((i+1)); echo $i > /artifacts/started; done"
)


def tree_bytes(path: Path) -> int:
    """Bytes allocated on disk under `path` (st_blocks; vanishing entries skipped)."""
    total = 0
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def upper_dir(podman_socket: Path, container: str) -> Path | None:
    """The container's writable overlay layer on the host (None until it exists)."""
    result = subprocess.run(
        ["podman", "--url", f"unix://{podman_socket}", "container", "inspect", container],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        return None
    data = json.loads(result.stdout)[0].get("GraphDriver", {}).get("Data", {})
    upper = data.get("UpperDir")
    return Path(upper) if upper else None


@dataclass
class DiskPeak:
    """Samples, every 100 ms until stopped, the host disk a job's container has taken:
    its artifacts directory plus its overlay upper directory."""

    podman_socket: Path
    artifacts_dir: Path
    container: str
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> DiskPeak:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def _run(self) -> None:
        upper: Path | None = None
        while not self._stop.is_set():
            if upper is None:
                upper = upper_dir(self.podman_socket, self.container)
            used = tree_bytes(self.artifacts_dir) + (tree_bytes(upper) if upper else 0)
            self.peak = max(self.peak, used)
            self._stop.wait(0.1)
