"""SPIRE settings and the rendering of the server/agent configs.

The configs are rendered from `modules/data/spire-{server,agent}.conf`, the same templates
the NixOS SPIRE module fills, with values from `modules/data/flashpods.nix` (`spire`).
The lab uses the real paths; tests re-root every path under a temporary directory and
pick their own port and podman socket (`SpireSettings.under`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods import deployment


@dataclass(frozen=True)
class SpireSettings:
    version: str
    trust_domain: str
    server_bind_address: str
    server_bind_port: int
    server_socket_path: Path
    server_data_dir: Path
    agent_socket_path: Path
    agent_data_dir: Path
    trust_bundle_path: Path
    join_token_file: Path
    podman_socket_url: str
    node_spiffe_id: str
    worker_spiffe_id: str
    agent_spiffe_id: str
    token_service_spiffe_id: str
    audience: str
    role_label: str
    jwt_svid_ttl: str
    log_level: str
    server_conf_path: Path
    agent_conf_path: Path
    # uid the job containers' processes run as (the flashpods user): added as a
    # `unix:uid:` selector to the worker/agent entries; None leaves the label alone.
    workload_uid: int | None = None
    # uid the token service runs as (its entry's selector; root on the host).
    token_service_uid: int = 0

    @classmethod
    def from_deployment(cls, data: dict[str, Any] | None = None) -> SpireSettings:
        """The real host's settings (system.md paths), from flashpods.nix."""
        spire = (data or deployment.values())["spire"]
        return cls(
            version=spire["version"],
            trust_domain=spire["trustDomain"],
            server_bind_address=spire["serverBindAddress"],
            server_bind_port=int(spire["serverBindPort"]),
            server_socket_path=Path(spire["serverSocketPath"]),
            server_data_dir=Path(spire["serverDataDir"]),
            agent_socket_path=Path(spire["agentSocketPath"]),
            agent_data_dir=Path(spire["agentDataDir"]),
            trust_bundle_path=Path(spire["agentTrustBundlePath"]),
            join_token_file=Path(spire["agentJoinTokenFile"]),
            podman_socket_url=spire["podmanSocketUrl"],
            node_spiffe_id=spire["nodeSpiffeId"],
            worker_spiffe_id=spire["workerSpiffeId"],
            agent_spiffe_id=spire["agentSpiffeId"],
            token_service_spiffe_id=spire["tokenServiceSpiffeId"],
            audience=spire["tokenServiceAudience"],
            role_label=spire["roleLabel"],
            jwt_svid_ttl=spire["jwtSvidTtl"],
            log_level=spire["logLevel"],
            server_conf_path=Path("/etc/spire/server.conf"),
            agent_conf_path=Path("/etc/spire/agent.conf"),
        )

    def under(
        self, base: Path, *, port: int, podman_socket: Path, workload_uid: int | None = None
    ) -> SpireSettings:
        """The same deployment with every path inside `base` (tests, benchmarks).

        Both sockets get short paths: unix socket paths are limited to 107 bytes.
        """
        return dataclasses.replace(
            self,
            server_bind_port=port,
            server_socket_path=base / "server" / "api.sock",
            server_data_dir=base / "server" / "data",
            agent_socket_path=base / "sockets" / "agent.sock",
            agent_data_dir=base / "agent" / "data",
            trust_bundle_path=base / "agent" / "data" / "bootstrap-bundle.pem",
            join_token_file=base / "agent" / "data" / "join-token",
            podman_socket_url=f"unix://{podman_socket}",
            server_conf_path=base / "conf" / "server.conf",
            agent_conf_path=base / "conf" / "agent.conf",
            workload_uid=workload_uid,
        )

    @property
    def server_address(self) -> str:
        return f"{self.server_bind_address}:{self.server_bind_port}"

    def placeholders(self) -> dict[str, str]:
        return {
            "@TRUST_DOMAIN@": self.trust_domain,
            "@SERVER_BIND_ADDRESS@": self.server_bind_address,
            "@SERVER_BIND_PORT@": str(self.server_bind_port),
            "@SERVER_SOCKET_PATH@": str(self.server_socket_path),
            "@SERVER_DATA_DIR@": str(self.server_data_dir),
            "@JWT_SVID_TTL@": self.jwt_svid_ttl,
            "@LOG_LEVEL@": self.log_level,
            "@AGENT_SOCKET_PATH@": str(self.agent_socket_path),
            "@AGENT_DATA_DIR@": str(self.agent_data_dir),
            "@TRUST_BUNDLE_PATH@": str(self.trust_bundle_path),
            "@JOIN_TOKEN_FILE@": str(self.join_token_file),
            "@PODMAN_SOCKET_URL@": self.podman_socket_url,
        }


class TemplateError(ValueError):
    pass


def render_template(text: str, placeholders: dict[str, str]) -> str:
    """Fill @NAME@ placeholders; any left over (outside comments) is an error."""
    for name, value in placeholders.items():
        text = text.replace(name, value)
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if "@" in code:
            raise TemplateError(f"unfilled placeholder in SPIRE config line: {line.strip()}")
    return text


def render_server_conf(settings: SpireSettings) -> str:
    template = (deployment.data_dir() / "spire-server.conf").read_text()
    return render_template(template, settings.placeholders())


def render_agent_conf(settings: SpireSettings) -> str:
    template = (deployment.data_dir() / "spire-agent.conf").read_text()
    return render_template(template, settings.placeholders())


def write_configs(settings: SpireSettings) -> None:
    """Write both configs and create the directories SPIRE expects to exist."""
    for conf, text in (
        (settings.server_conf_path, render_server_conf(settings)),
        (settings.agent_conf_path, render_agent_conf(settings)),
    ):
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
    for data_dir in (settings.server_data_dir, settings.agent_data_dir):
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
    # The admin socket's directory is private (0700); the Workload API's is not (jobs
    # mount it read-only and the socket itself is 0777).
    settings.server_socket_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.server_socket_path.parent, 0o700)
    settings.agent_socket_path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.agent_socket_path.parent, 0o755)
