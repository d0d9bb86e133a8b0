"""Where the laptop side finds the API, its token and the rsync module.

Precedence: environment (FLASHPODS_*) over the config file
(`$XDG_CONFIG_HOME/flashpods/config.toml` or `config.json`, default `~/.config`) over
defaults. The token comes from FLASHPODS_API_TOKEN, else from a token file
(FLASHPODS_API_TOKEN_FILE or the file's `token_file`), else from the file's `token`.
What the client remembers goes to `$XDG_CACHE_HOME/flashpods` (default `~/.cache`).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.client.errors import FlashpodsError

DEFAULT_HOST = "10.0.0.1"
DEFAULT_PORT = 8080
RSYNC_MODULE = "uploads"  # modules/data/flashpods.nix rsync.module
DEFAULT_DOWNLOAD_DIR = "flashpods-artifacts"

# Config-file keys and the environment variable that overrides each.
_ENV_KEYS = {
    "host": "FLASHPODS_HOST",
    "port": "FLASHPODS_PORT",
    "token": "FLASHPODS_API_TOKEN",
    "token_file": "FLASHPODS_API_TOKEN_FILE",
    "rsync_url": "FLASHPODS_RSYNC_URL",
    "rsync_port": "FLASHPODS_RSYNC_PORT",
    "download_dir": "FLASHPODS_DOWNLOAD_DIR",
}


@dataclass(frozen=True)
class ClientConfig:
    host: str
    port: int
    token: str
    rsync_url: str  # rsync://HOST[:PORT]/uploads, without a trailing slash
    download_dir: Path  # where the MCP server saves artifacts
    cache_dir: Path | None = None  # what the client remembers (client/bases.py)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def config_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "flashpods"


def cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "flashpods"


def read_config_file(directory: Path) -> dict[str, Any]:
    """The first of config.toml / config.json that exists; {} when neither does."""
    toml_path, json_path = directory / "config.toml", directory / "config.json"
    try:
        if toml_path.is_file():
            with toml_path.open("rb") as fh:
                data: Any = tomllib.load(fh)
        elif json_path.is_file():
            data = json.loads(json_path.read_text())
        else:
            return {}
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise FlashpodsError("invalid_config", f"cannot read config in {directory}: {exc}") from exc
    if not isinstance(data, dict):
        raise FlashpodsError("invalid_config", f"config in {directory} is not a table/object")
    unknown = sorted(set(data) - set(_ENV_KEYS))
    if unknown:
        raise FlashpodsError("invalid_config", f"unknown config keys: {', '.join(unknown)}")
    return data


def resolve_config(env: Mapping[str, str], file_values: Mapping[str, Any]) -> ClientConfig:
    """Pure: merge environment over file values over defaults."""

    def pick(key: str) -> Any:
        value = env.get(_ENV_KEYS[key])
        return value if value not in (None, "") else file_values.get(key)

    host = str(pick("host") or DEFAULT_HOST)
    port = _port(pick("port"), "port") or DEFAULT_PORT
    token = pick("token")
    if not token and pick("token_file"):
        token = _read_token_file(Path(str(pick("token_file"))).expanduser())
    if not token:
        raise FlashpodsError(
            "missing_token",
            "no API token: set FLASHPODS_API_TOKEN or FLASHPODS_API_TOKEN_FILE, "
            f"or `token`/`token_file` in {config_dir(env)}/config.toml",
        )
    rsync_url = pick("rsync_url")
    if not rsync_url:
        rsync_port = _port(pick("rsync_port"), "rsync_port")
        netloc = host if rsync_port is None else f"{host}:{rsync_port}"
        rsync_url = f"rsync://{netloc}/{RSYNC_MODULE}"
    if not str(rsync_url).startswith("rsync://"):
        raise FlashpodsError("invalid_config", f"rsync_url must start with rsync://: {rsync_url}")
    download_dir = Path(str(pick("download_dir") or DEFAULT_DOWNLOAD_DIR)).expanduser()
    return ClientConfig(
        host=host,
        port=port,
        token=str(token).strip(),
        rsync_url=str(rsync_url).rstrip("/"),
        download_dir=download_dir.absolute(),
        cache_dir=cache_dir(env),
    )


def load_config(env: Mapping[str, str] | None = None) -> ClientConfig:
    env = os.environ if env is None else env
    return resolve_config(env, read_config_file(config_dir(env)))


def _port(raw: Any, name: str) -> int | None:
    if raw in (None, ""):
        return None
    try:
        port = int(raw)
    except (TypeError, ValueError):
        port = -1
    if not 0 < port < 65536:
        raise FlashpodsError("invalid_config", f"{name} must be 1-65535, got {raw!r}")
    return port


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise FlashpodsError("missing_token", f"cannot read token file {path}: {exc}") from exc
    if not token:
        raise FlashpodsError("missing_token", f"token file {path} is empty")
    return token
