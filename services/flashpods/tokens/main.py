"""flashpods-token-service: configuration from the environment, start-up, signals."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from flashpods.common import envconfig
from flashpods.common.envconfig import ConfigError
from flashpods.common.logsetup import configure_logging
from flashpods.tokens.activation import inherited_socket, listen_unix, socket_owner
from flashpods.tokens.bundles import BundleSource
from flashpods.tokens.policy import Policy, SecretsError
from flashpods.tokens.secrets_file import SecretsFile
from flashpods.tokens.server import TokenServer
from flashpods.tokens.service import Exchange

SERVICE = "flashpods-token-service"


@dataclass(frozen=True)
class Config:
    secrets_file: Path
    socket_path: Path
    spire_socket: Path
    trust_domain: str
    audience: str
    socket_user: str
    spire_wait_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Raises ConfigError (one line) on a bad value."""
        return cls(
            secrets_file=envconfig.path(env, "FLASHPODS_SECRETS_FILE", envconfig.SECRETS_FILE),
            socket_path=envconfig.path(env, "FLASHPODS_SOCKET_PATH", envconfig.TOKEN_SOCKET),
            spire_socket=envconfig.path(
                env, "FLASHPODS_SPIRE_SOCKET", envconfig.SPIRE_AGENT_SOCKET
            ),
            trust_domain=envconfig.text(env, "FLASHPODS_TRUST_DOMAIN", "flashpods.local"),
            audience=envconfig.text(env, "FLASHPODS_TOKEN_AUDIENCE", "flashpods-token-service"),
            socket_user=envconfig.text(env, "FLASHPODS_SOCKET_USER", "flashpods"),
            spire_wait_seconds=envconfig.number(env, "FLASHPODS_SPIRE_WAIT_SECONDS", 30),
        )


def main() -> int:
    log = configure_logging(SERVICE)
    try:
        config = Config.from_env(os.environ)
    except ConfigError as err:
        print(f"{SERVICE}: cannot start: {err}", file=sys.stderr)
        return 2
    secrets = SecretsFile(config.secrets_file)
    try:
        secrets.load()
    except SecretsError as err:
        print(
            f"{SERVICE}: cannot start: secrets file {config.secrets_file}: {err}", file=sys.stderr
        )
        return 2

    sock = inherited_socket()
    if sock is not None:
        log.info("using the listening socket passed by the service manager (LISTEN_FDS)")
    else:
        owner = socket_owner(config.socket_user)
        sock = listen_unix(config.socket_path, 0o660, owner)
        log.info(
            "listening on %s (0660, owner %s)",
            config.socket_path,
            config.socket_user if owner else "root: no such user " + config.socket_user,
        )

    bundles = BundleSource(config.spire_socket, config.trust_domain)
    if bundles.wait_for_socket(config.spire_wait_seconds):
        try:
            bundles.bundle()
        except Exception as err:
            log.warning("no JWT bundle yet: %s", err)

    exchange = Exchange(
        bundles, secrets, Policy.for_trust_domain(config.trust_domain), config.audience
    )
    server = TokenServer(sock, exchange)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    def reload(_signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP: re-reading the secrets file")
        secrets.force_reload()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    log.info("ready (trust domain %s, audience %s)", config.trust_domain, config.audience)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        bundles.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
