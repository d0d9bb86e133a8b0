"""The read-only tools directory mounted into job containers at /opt/flashpods.

Layout (container/README.md): `bin/spire-agent` (the SPIRE build, for `api fetch jwt`)
and the entrypoints from `container/bin/`. Any image with sh, curl and jq can then
attest and exchange tokens.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flashpods import deployment

CONTAINER_SCRIPTS = ("flashpods-agent-entrypoint", "flashpods-token-helper")


def container_bin_dir() -> Path:
    return deployment.repo_root() / "container" / "bin"


def _install(src: Path, dest: Path) -> None:
    """Copy unless `dest` already has the same content size and mtime (idempotent)."""
    if dest.exists():
        s, d = src.stat(), dest.stat()
        if s.st_size == d.st_size and int(s.st_mtime) == int(d.st_mtime):
            return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def assemble_tools_dir(dest: Path, spire_bin_dir: Path) -> Path:
    """Create or refresh `dest` (0755, root-owned files); returns it."""
    bin_dir = dest / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    os.chmod(bin_dir, 0o755)
    _install(spire_bin_dir / "spire-agent", bin_dir / "spire-agent")
    for name in CONTAINER_SCRIPTS:
        _install(container_bin_dir() / name, bin_dir / name)
    return dest
