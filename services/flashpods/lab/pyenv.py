"""A Python environment the service users can run.

The development venv may sit on an interpreter under /root (pyenv), which the
`flashpods` user cannot execute. The services therefore run from their own venv on
Debian's /usr/bin/python3, with this package and its `host` extra installed editable
(its sources stay in the repository, readable by everyone). Cached outside the
repository and rebuilt only when pyproject.toml or the checkout changes: an editable
install points at one checkout, and a fresh clone elsewhere (CI) must run its own code,
not the previous clone's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flashpods import deployment
from flashpods.lab.proc import LabError, run

SYSTEM_PYTHON = Path("/usr/bin/python3")


def service_venv() -> Path:
    return deployment.cache_dir() / "service-venv"


def venv_stamp(repo_root: Path) -> str:
    """What the service venv was built from: the checkout and its dependencies."""
    digest = hashlib.sha256((repo_root / "pyproject.toml").read_bytes())
    digest.update(str(repo_root.resolve()).encode())
    return digest.hexdigest()


def ensure_service_venv() -> Path:
    """The venv's bin directory, (re)built when the checkout or its dependencies changed."""
    venv = service_venv()
    stamp = venv / "flashpods-pyproject.sha256"
    want = venv_stamp(deployment.repo_root())
    if stamp.exists() and stamp.read_text().strip() == want and (venv / "bin/python").exists():
        return venv / "bin"
    if not SYSTEM_PYTHON.exists():
        raise LabError(f"missing: {SYSTEM_PYTHON} (Debian's python3, for the service users)")
    run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], timeout=300)
    editable = f"{deployment.repo_root()}[host]"
    run([str(venv / "bin/pip"), "install", "-q", "-e", editable], timeout=900)
    stamp.write_text(want + "\n")
    return venv / "bin"
