"""The host's user, directories, secrets and credentials, as the NixOS modules give them.

Paths, owners and modes come from the deployment data (`paths`); the secrets are
generated once (lab values, never real tokens) and stay 0600 root. The API reads its
bearer token the way systemd's LoadCredential would hand it over: a copy in a
credentials directory only the service user can read ($CREDENTIALS_DIRECTORY).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
from pathlib import Path
from typing import Any

from flashpods.lab.proc import LabError, run

API_CREDENTIAL = "api-token"


def ensure_user(name: str, group: str) -> None:
    try:
        grp.getgrnam(group)
    except KeyError:
        run(["groupadd", "--system", group])
    try:
        pwd.getpwnam(name)
    except KeyError:
        run(
            [
                "useradd",
                "--system",
                "--gid",
                group,
                "--home-dir",
                "/var/lib/flashpods",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ]
        )


def _ids(user: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


def _write_secret_once(path: Path, content: str) -> None:
    if path.exists() and path.stat().st_size > 0:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)


def lab_secrets() -> dict[str, str]:
    """Stand-ins with the real shapes; the job never prints them."""
    return {
        "anthropic_api_key": "sk-ant-lab-" + secrets.token_hex(16),
        "github_token": "ghp_lab" + secrets.token_hex(16),
    }


def ensure_paths(paths: list[dict[str, Any]]) -> None:
    """Directories and operator files with the modules' owner and mode (sockets are the
    services' own; they are checked, not created, here)."""
    for entry in paths:
        path = Path(entry["path"])
        uid, gid = _ids(entry["user"], entry["group"])
        mode = int(entry["mode"], 8)
        if entry["kind"] == "d":
            path.mkdir(parents=True, exist_ok=True)
        elif entry["kind"] == "f":
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.name == "api-token":
                _write_secret_once(path, secrets.token_hex(32) + "\n")
            elif path.name == "secrets.json":
                _write_secret_once(path, json.dumps(lab_secrets(), indent=2) + "\n")
            else:
                raise LabError(f"no lab content for operator file {path}")
        else:
            continue
        os.chown(path, uid, gid)
        os.chmod(path, mode)


def ensure_credentials(token_file: Path, user: str, group: str, directory: Path) -> Path:
    """The API's credentials directory (like LoadCredential=api-token:<token_file>):
    only the service user can read it; the parent is traversable, not listable."""
    uid, gid = _ids(user, group)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory.parent, 0o711)
    target = directory / API_CREDENTIAL
    shutil.copyfile(token_file, target)
    os.chown(target, uid, gid)
    os.chmod(target, 0o400)
    os.chown(directory, uid, gid)
    os.chmod(directory, 0o500)
    return directory


def api_token(token_file: Path) -> str:
    return token_file.read_text().strip()
