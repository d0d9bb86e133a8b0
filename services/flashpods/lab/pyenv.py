"""A Python environment the service users can run.

The development venv may sit on an interpreter under /root (pyenv), which the
`flashpods` user cannot execute. The services therefore run from their own venv on
Debian's /usr/bin/python3, with this package installed editable (its sources stay in
the repository, readable by everyone). Cached outside the repository and rebuilt only
when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flashpods import deployment
from flashpods.lab.proc import LabError, run

SYSTEM_PYTHON = Path("/usr/bin/python3")


def cache_dir() -> Path:
    return Path(os.environ.get("FLASHPODS_CACHE_DIR", "/var/cache/flashpods"))


def service_venv() -> Path:
    return cache_dir() / "service-venv"


def ensure_service_venv() -> Path:
    """The venv's bin directory, (re)built when the project's dependencies changed."""
    venv = service_venv()
    pyproject = deployment.repo_root() / "pyproject.toml"
    stamp = venv / "flashpods-pyproject.sha256"
    want = hashlib.sha256(pyproject.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want and (venv / "bin/python").exists():
        return venv / "bin"
    if not SYSTEM_PYTHON.exists():
        raise LabError(f"missing: {SYSTEM_PYTHON} (Debian's python3, for the service users)")
    run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], timeout=300)
    run([str(venv / "bin/pip"), "install", "-q", "-e", str(deployment.repo_root())], timeout=900)
    stamp.write_text(want + "\n")
    return venv / "bin"
