"""The API's configuration: environment variables in, one frozen dataclass out.

Everything is validated here, at start-up, so a bad deployment stops with one clear line
(`ConfigError`) instead of failing on the first request. Names are the seed's
(FLASHPODS_DB_PATH, ...) plus the knobs of api.md with the same prefix.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from flashpods.common import envconfig
from flashpods.common.envconfig import ConfigError, parse_number
from flashpods.common.numbers import parse_decimal

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class ModelService:
    """Where agent jobs' Claude Code finds the model service (deployment data, never the
    job's caller): passed into agent containers, whose entrypoint hands it to the CLI as
    ANTHROPIC_BASE_URL, CLAUDE_CODE_MAX_RETRIES and API_TIMEOUT_MS. Empty/None: the
    CLI's own defaults (api.anthropic.com, 10 retries, 600 s)."""

    base_url: str = ""
    max_retries: int | None = None
    timeout_ms: int | None = None

    def environment(self) -> dict[str, str]:
        def text(value: int | None) -> str:
            return "" if value is None else str(value)

        return {
            "FLASHPODS_MODEL_BASE_URL": self.base_url,
            "FLASHPODS_MODEL_MAX_RETRIES": text(self.max_retries),
            "FLASHPODS_MODEL_TIMEOUT_MS": text(self.timeout_ms),
        }


def parse_model_service(env: Mapping[str, str]) -> ModelService:
    url = env.get("FLASHPODS_MODEL_BASE_URL", "").strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ConfigError(
                f"FLASHPODS_MODEL_BASE_URL must be an http(s) URL without a query, got {url!r}"
            )
    numbers: dict[str, int | None] = {}
    for name in ("FLASHPODS_MODEL_MAX_RETRIES", "FLASHPODS_MODEL_TIMEOUT_MS"):
        raw = env.get(name)
        numbers[name] = int(parse_number(name, raw, int)) if raw else None
    if numbers["FLASHPODS_MODEL_TIMEOUT_MS"] == 0:
        raise ConfigError("FLASHPODS_MODEL_TIMEOUT_MS must be at least 1")
    return ModelService(
        url, numbers["FLASHPODS_MODEL_MAX_RETRIES"], numbers["FLASHPODS_MODEL_TIMEOUT_MS"]
    )


@dataclass(frozen=True)
class Config:
    db_path: Path
    uploads_path: Path
    snapshots_path: Path  # finalized uploads, moved out of rsync's reach (same filesystem)
    artifacts_path: Path
    logs_path: Path
    listen_host: str
    listen_port: int
    token: str
    podman_socket: Path
    host_cpus: int
    host_memory_gb: int
    instance: str = "default"
    default_image: str = "ubuntu:22.04"
    pull_policy: str = envconfig.DEFAULT_PULL_POLICY
    spire_socket_dir: Path = envconfig.SPIRE_SOCKET_DIR
    token_socket: Path = envconfig.TOKEN_SOCKET
    tools_dir: Path | None = None
    agent_command: str = "claude"
    model_service: ModelService = field(default_factory=ModelService)
    job_network: str | None = None  # a podman network for jobs; None: podman's default
    # TTLs (seconds)
    upload_unfinalized_ttl: int = 30 * 60
    upload_finalized_ttl: int = 60 * 60
    artifacts_ttl: int = 60 * 60
    logs_ttl: int = 24 * 60 * 60
    # Quotas (bytes / counts)
    upload_max_bytes: int = 2 * GIB
    # Entries of one upload (files, directories, symlinks): 500,000 is ~2x a big
    # monorepo's 100k-300k, and as empty directories (one 4 KiB block each on ext4)
    # still under the byte limit's 2 GiB of disk (docs/api.md).
    upload_max_entries: int = 500_000
    uploads_total_max_bytes: int = 10 * GIB
    logs_total_max_bytes: int = 10 * GIB
    artifacts_total_max_bytes: int = 50 * GIB
    log_max_bytes: int = 50 * MIB
    artifact_max_file_bytes: int = 1 * GIB
    artifact_max_job_bytes: int = 2 * GIB
    artifact_max_files: int = 200
    # Rate limit (token bucket per client address); rate 0 turns it off.
    rate_limit_per_second: float = 100.0
    rate_limit_burst: int = 10
    # Background loops (seconds)
    cleanup_interval: float = 60.0
    reconcile_interval: float = 60.0
    max_body_bytes: int = 1 * MIB
    # Concurrent GET /jobs/{id}/output?follow=true; each holds a server thread.
    max_log_followers: int = 64


_INT_KNOBS: dict[str, str] = {
    "FLASHPODS_UPLOAD_UNFINALIZED_TTL_SECONDS": "upload_unfinalized_ttl",
    "FLASHPODS_UPLOAD_FINALIZED_TTL_SECONDS": "upload_finalized_ttl",
    "FLASHPODS_ARTIFACTS_TTL_SECONDS": "artifacts_ttl",
    "FLASHPODS_LOGS_TTL_SECONDS": "logs_ttl",
    "FLASHPODS_UPLOAD_MAX_BYTES": "upload_max_bytes",
    "FLASHPODS_UPLOAD_MAX_ENTRIES": "upload_max_entries",
    "FLASHPODS_UPLOADS_TOTAL_MAX_BYTES": "uploads_total_max_bytes",
    "FLASHPODS_LOGS_TOTAL_MAX_BYTES": "logs_total_max_bytes",
    "FLASHPODS_ARTIFACTS_TOTAL_MAX_BYTES": "artifacts_total_max_bytes",
    "FLASHPODS_LOG_MAX_BYTES": "log_max_bytes",
    "FLASHPODS_ARTIFACT_MAX_FILE_BYTES": "artifact_max_file_bytes",
    "FLASHPODS_ARTIFACT_MAX_JOB_BYTES": "artifact_max_job_bytes",
    "FLASHPODS_ARTIFACT_MAX_FILES": "artifact_max_files",
    "FLASHPODS_RATE_LIMIT_BURST": "rate_limit_burst",
    "FLASHPODS_MAX_LOG_FOLLOWERS": "max_log_followers",
}
_FLOAT_KNOBS: dict[str, str] = {
    "FLASHPODS_RATE_LIMIT_PER_SECOND": "rate_limit_per_second",
    "FLASHPODS_CLEANUP_INTERVAL_SECONDS": "cleanup_interval",
    "FLASHPODS_RECONCILE_INTERVAL_SECONDS": "reconcile_interval",
}
_STR_KNOBS: dict[str, str] = {
    "FLASHPODS_INSTANCE": "instance",
    "FLASHPODS_DEFAULT_IMAGE": "default_image",
    "FLASHPODS_PULL_POLICY": "pull_policy",
    "FLASHPODS_AGENT_COMMAND": "agent_command",
    "FLASHPODS_JOB_NETWORK": "job_network",
}

DEFAULT_PATHS = {
    "FLASHPODS_DB_PATH": envconfig.DB_PATH,
    "FLASHPODS_UPLOADS_PATH": envconfig.UPLOADS_PATH,
    "FLASHPODS_ARTIFACTS_PATH": envconfig.ARTIFACTS_PATH,
    "FLASHPODS_LOGS_PATH": envconfig.LOGS_PATH,
    "FLASHPODS_TOKEN_FILE": envconfig.API_TOKEN_FILE,
    "FLASHPODS_PODMAN_SOCKET": envconfig.PODMAN_SOCKET,
}


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


def machine_memory_gb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return max(1, int(line.split()[1]) // (1024 * 1024))
    return 1


def parse_listen_addr(text: str) -> tuple[str, int]:
    host, sep, raw_port = text.strip().rpartition(":")
    port = parse_decimal(raw_port)
    if not sep or not host or port is None or port > 65535:
        raise ConfigError(f"FLASHPODS_LISTEN_ADDR must be HOST:PORT, got {text!r}")
    return host.strip("[]"), port


def read_token(env: Mapping[str, str]) -> str:
    """The systemd credential wins (the token file stays root-only); else the token file."""
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / "api-token").exists():
        label, path = "systemd credential api-token", Path(cred_dir) / "api-token"
    else:
        path = envconfig.path(env, "FLASHPODS_TOKEN_FILE", envconfig.API_TOKEN_FILE)
        label = f"token file {path}"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"{label} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{label} is not readable: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"{label} is empty")
    return token


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and validate; raise ConfigError with one line on the first problem."""
    env = os.environ if env is None else env

    def path(name: str) -> Path:
        return envconfig.path(env, name, DEFAULT_PATHS[name])

    host, port = parse_listen_addr(
        envconfig.text(env, "FLASHPODS_LISTEN_ADDR", envconfig.LISTEN_ADDR)
    )
    uploads = path("FLASHPODS_UPLOADS_PATH")
    snapshots = Path(env.get("FLASHPODS_SNAPSHOTS_PATH") or uploads.parent / "snapshots")
    tools = env.get("FLASHPODS_TOOLS_DIR")
    values: dict[str, object] = {
        "db_path": path("FLASHPODS_DB_PATH"),
        "uploads_path": uploads,
        "snapshots_path": snapshots,
        "artifacts_path": path("FLASHPODS_ARTIFACTS_PATH"),
        "logs_path": path("FLASHPODS_LOGS_PATH"),
        "listen_host": host,
        "listen_port": port,
        "token": read_token(env),
        "podman_socket": path("FLASHPODS_PODMAN_SOCKET"),
        "spire_socket_dir": envconfig.path(
            env, "FLASHPODS_SPIRE_SOCKET_DIR", envconfig.SPIRE_SOCKET_DIR
        ),
        "token_socket": envconfig.path(env, "FLASHPODS_TOKEN_SOCKET", envconfig.TOKEN_SOCKET),
        "tools_dir": Path(tools) if tools else None,
        "model_service": parse_model_service(env),
    }
    for name, key in (
        ("FLASHPODS_HOST_CPUS", "host_cpus"),
        ("FLASHPODS_HOST_MEMORY_GB", "host_memory_gb"),
    ):
        raw = env.get(name)
        if raw:
            number = int(parse_number(name, raw, int))
            if number < 1:
                raise ConfigError(f"{name} must be at least 1, got {raw!r}")
            values[key] = number
    values.setdefault("host_cpus", machine_cpus())
    values.setdefault("host_memory_gb", machine_memory_gb())
    for name, key in _INT_KNOBS.items():
        if env.get(name):
            values[key] = int(parse_number(name, env[name], int))
    for name, key in _FLOAT_KNOBS.items():
        if env.get(name):
            values[key] = parse_number(name, env[name], float)
    for name, key in _STR_KNOBS.items():
        if env.get(name):
            values[key] = env[name]
    values["pull_policy"] = envconfig.choice(
        env, "FLASHPODS_PULL_POLICY", envconfig.DEFAULT_PULL_POLICY, envconfig.PULL_POLICIES
    )
    config = Config(**values)  # type: ignore[arg-type]
    check_storage(config)
    return config


def _writable_dir(label: str, directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{label} {directory} cannot be created: {exc.strerror}") from None
    if not directory.is_dir():
        raise ConfigError(f"{label} {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{label} {directory} is not writable")


def check_storage(config: Config) -> None:
    """Directories exist and are writable, snapshots can be renamed into, the DB opens."""
    _writable_dir("FLASHPODS_UPLOADS_PATH", config.uploads_path)
    _writable_dir("FLASHPODS_SNAPSHOTS_PATH", config.snapshots_path)
    _writable_dir("FLASHPODS_ARTIFACTS_PATH", config.artifacts_path)
    _writable_dir("FLASHPODS_LOGS_PATH", config.logs_path)
    _writable_dir("FLASHPODS_DB_PATH directory", config.db_path.parent)
    if config.uploads_path.stat().st_dev != config.snapshots_path.stat().st_dev:
        raise ConfigError(
            "FLASHPODS_SNAPSHOTS_PATH must be on the same filesystem as FLASHPODS_UPLOADS_PATH"
        )
    if config.db_path.exists():
        try:
            conn = sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ConfigError(
                f"FLASHPODS_DB_PATH {config.db_path} is not readable: {exc}"
            ) from None
        if not os.access(config.db_path, os.R_OK | os.W_OK):
            raise ConfigError(f"FLASHPODS_DB_PATH {config.db_path} is not writable")
