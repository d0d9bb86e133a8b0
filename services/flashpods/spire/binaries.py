"""Where the SPIRE v1.13.3 binaries are (built by scripts/build-spire.sh, cached)."""

from __future__ import annotations

import os
from pathlib import Path

from flashpods import deployment


class SpireBinariesMissing(RuntimeError):
    pass


def spire_bin_dir(version: str) -> Path:
    """FLASHPODS_SPIRE_BIN_DIR, else $FLASHPODS_CACHE_DIR/spire-<version>/bin."""
    override = os.environ.get("FLASHPODS_SPIRE_BIN_DIR")
    default = deployment.cache_dir() / f"spire-{version}" / "bin"
    bin_dir = Path(override) if override else default
    for name in ("spire-server", "spire-agent"):
        if not os.access(bin_dir / name, os.X_OK):
            raise SpireBinariesMissing(
                f"{bin_dir / name} is missing: run scripts/build-spire.sh "
                "(or set FLASHPODS_SPIRE_BIN_DIR)"
            )
    return bin_dir
