"""Names and addresses of the lab, in one place (pure data).

The WireGuard addresses come from the deployment data; the rest is the lab's own
stand-in for the world around the host: a veth "internet" between laptop and host
(TEST-NET-1, 192.0.2.0/24) and an "internet" namespace behind the host's default route
(TEST-NET-2, 198.51.100.0/24) with an HTTP server (to prove containers' egress), the
scripted model service and a git server.

IPv6, to try the firewall's v6 rules: the uplink is "internet" too (the documentation
prefix 2001:db8::/32, RFC 3849) and the laptop's link a LAN (a ULA, RFC 4193): a laptop
reached from a private network. WireGuard stays IPv4 (the deployment's addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/var/run/netns")
STATE_DIR = Path("/run/flashpods-lab")
LOG_DIR = Path("/var/log/flashpods-lab")
# The laptop's WireGuard key is the laptop's own; the host's is the seed's path.
LAPTOP_KEY = Path("/var/lib/flashpods-lab/wireguard/laptop.key")
HOST_KEY = Path("/etc/wireguard/private.key")
INSTANCE = "lab"
# Bare repositories the lab's git server offers (read and push) to laptops and jobs.
GIT_DIR = STATE_DIR / "git"


@dataclass(frozen=True)
class Topology:
    laptop_ns: str = "laptop"
    host_ns: str = "host"
    internet_ns: str = "internet"
    host_wg: str = "wg0"
    laptop_wg: str = "wglap"
    host_addr: str = "10.0.0.1"
    laptop_addr: str = "10.0.0.2"
    wg_prefix: int = 24
    wg_port: int = 51820
    # laptop <-> host "internet" link
    wan_host_if: str = "veth-laptop"
    wan_laptop_if: str = "veth-wan"
    wan_host_addr: str = "192.0.2.1"
    wan_laptop_addr: str = "192.0.2.2"
    wan_host_addr6: str = "fd42:f1a5:b0d5:1::1"
    wan_laptop_addr6: str = "fd42:f1a5:b0d5:1::2"
    # host <-> internet namespace, the host's default route
    up_host_if: str = "veth-inet"
    up_inet_if: str = "veth-up"
    up_host_addr: str = "198.51.100.1"
    up_inet_addr: str = "198.51.100.2"
    up_host_addr6: str = "2001:db8:2::1"
    up_inet_addr6: str = "2001:db8:2::2"
    http_port: int = 80
    # More of the world, also in the internet namespace: the scripted model service
    # (model_endpoint.py) and a git server for agents' pushes (git daemon).
    model_port: int = 8000
    git_port: int = 9418

    @property
    def model_url(self) -> str:
        return f"http://{self.up_inet_addr}:{self.model_port}"

    def git_url(self, repo: str) -> str:
        return f"git://{self.up_inet_addr}:{self.git_port}/{repo}"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.laptop_ns, self.host_ns, self.internet_ns)

    def netns_path(self, name: str) -> Path:
        return NETNS_DIR / name


def from_deployment(values: dict[str, Any]) -> Topology:
    wg = values["wireguard"]
    return Topology(
        host_wg=wg["interface"],
        host_addr=wg["hostAddress"],
        laptop_addr=wg["laptopAddress"],
        wg_prefix=int(wg["prefixLength"]),
        wg_port=int(wg["listenPort"]),
    )
