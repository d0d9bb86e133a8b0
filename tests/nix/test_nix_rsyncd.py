"""What rsync does with the rsyncd.conf nixos-24.05 writes from services.rsyncd.settings.

pkgs.formats.ini puts the `global` attribute under a `[global]` header. rsync reads its
daemon-only parameters (`address`, `port`) in a first pass that stops at the first section
header (rsync params.c, Parse(): `case '[': if (!sfunc) return 2;`), so under `[global]`
they are ignored: rsync listens on every address (and port 873), and the firewall is what
keeps it to the laptop (modules/firewall.nix). Module parameters there (`hosts allow`, ...)
still apply to every module. Shown here with the real daemon in a private network
namespace, rendered as nixpkgs renders it (flashpods.lab.rsyncd, same format).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flashpods import deployment
from flashpods.common.polling import wait_until
from flashpods.lab import rsyncd

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("rsync") is None or shutil.which("unshare") is None,
    reason="needs root, rsync and unshare (a private network namespace); .ci/run has them",
)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """rsync --daemon as nixpkgs' rsync.service runs it, in its own network namespace."""
    settings = deployment.values()["rsyncd"]
    module = deployment.values()["rsync"]["module"]
    settings = settings | {module: settings[module] | {"path": str(tmp_path)}}
    config = tmp_path / "rsyncd.conf"
    config.write_text(rsyncd.render(settings))
    # No --fork: unshare and then sh exec in place, so the process Popen returns is the
    # daemon itself and killing it ends the daemon (with --fork only unshare was killed and
    # rsync, its child, ran on under init).
    proc = subprocess.Popen(
        [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            f'ip link set lo up && exec rsync --daemon --no-detach --config="{config}"',
        ]
    )
    try:
        yield proc.pid, settings
    finally:
        proc.kill()
        proc.wait()


def listening(pid: int) -> list[str]:
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ss", "-Hltn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(line.split()[3] for line in out.splitlines())


def test_rsync_ignores_address_under_a_global_header(daemon: tuple[int, dict[str, Any]]) -> None:
    pid, settings = daemon
    assert settings["global"]["address"] == deployment.values()["wireguard"]["hostAddress"]
    # rsync binds one socket per address family, one after the other: wait for both
    # (honouring `address` would leave only 10.0.0.1:873, and this wait would time out).
    wait_until(lambda: len(listening(pid)) >= 2, timeout=10, what="rsync to listen twice")
    # Not 10.0.0.1:873 only: every IPv4 and IPv6 address.
    assert listening(pid) == ["0.0.0.0:873", "[::]:873"]
