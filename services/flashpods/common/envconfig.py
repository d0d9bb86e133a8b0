"""Configuration from the environment, the one way every service reads it.

Defaults are the host's paths (system.md; modules/data/flashpods.nix is the same data for
the NixOS modules and the lab) and are defined here once. A bad value becomes a
ConfigError of one line naming the variable, which the service prints before it exits:
never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

SPIRE_SOCKET_DIR = Path("/run/spire/sockets")
SPIRE_AGENT_SOCKET = SPIRE_SOCKET_DIR / "agent.sock"
TOKEN_SOCKET = Path("/run/flashpods/token.sock")
PODMAN_SOCKET = Path("/run/flashpods/podman.sock")
SECRETS_FILE = Path("/etc/flashpods/secrets.json")
API_TOKEN_FILE = Path("/etc/flashpods/api-token")
DB_PATH = Path("/var/lib/flashpods/db/flashpods.db")
UPLOADS_PATH = Path("/tmp/flashpods/uploads")
ARTIFACTS_PATH = Path("/var/lib/flashpods/artifacts")
LOGS_PATH = Path("/var/log/flashpods")
LISTEN_ADDR = "10.0.0.1:8080"
# podman's --pull values; the API's FLASHPODS_PULL_POLICY takes one of them.
PULL_POLICIES = ("always", "missing", "never", "newer")
DEFAULT_PULL_POLICY = "missing"


class ConfigError(Exception):
    """A configuration problem, in one line that names the variable."""


def text(env: Mapping[str, str], name: str, default: str) -> str:
    """The variable's value; unset or empty means the default."""
    return env.get(name) or default


def path(env: Mapping[str, str], name: str, default: Path) -> Path:
    return Path(env.get(name) or default)


def choice(env: Mapping[str, str], name: str, default: str, choices: Sequence[str]) -> str:
    value = text(env, name, default)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_number(name: str, raw: str, kind: type[int] | type[float], minimum: float = 0) -> float:
    """`raw` as an int or float of at least `minimum` (finite), or ConfigError."""
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        qualifier = "negative" if minimum == 0 else f"below {minimum:g}"
        raise ConfigError(f"{name} must not be {qualifier}, got {raw!r}")
    return value


def number(
    env: Mapping[str, str],
    name: str,
    default: float,
    kind: type[int] | type[float] = float,
    minimum: float = 0,
) -> float:
    raw = env.get(name)
    return default if not raw else parse_number(name, raw, kind, minimum)
