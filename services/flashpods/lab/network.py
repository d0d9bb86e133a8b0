"""Namespaces, links, WireGuard and the host firewall of the lab (idempotent).

laptop ──veth 192.0.2.0/24 ("internet")──► host ──veth 198.51.100.0/24──► internet
        fd42:f1a5:b0d5:1::/64 (a LAN)           2001:db8:2::/64 ("internet")
  wglap 10.0.0.2 ═══════ WireGuard (wireguard-go) ═══════ wg0 10.0.0.1

wireguard-go keeps its control sockets in the shared /var/run/wireguard/, so the two
ends have different interface names. Its pids are recorded so `down` ends exactly them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from pathlib import Path

from flashpods import deployment
from flashpods.common.polling import poll
from flashpods.lab.proc import LabError, in_netns, ns_run, run
from flashpods.lab.topology import HOST_KEY, LAPTOP_KEY, LOG_DIR, STATE_DIR, Topology

WG_SOCKET_DIR = Path("/var/run/wireguard")


def _netns_exists(topo: Topology, ns: str) -> bool:
    return topo.netns_path(ns).exists()


def _link_exists(ns: str, ifname: str) -> bool:
    return ns_run(ns, ["ip", "link", "show", "dev", ifname], check=False).returncode == 0


def ensure_namespaces(topo: Topology) -> None:
    for ns in topo.namespaces:
        if not _netns_exists(topo, ns):
            run(["ip", "netns", "add", ns])
        ns_run(ns, ["ip", "link", "set", "lo", "up"])


def _ensure_veth(a: tuple[str, str, str, str], b: tuple[str, str, str, str]) -> None:
    """Each end (netns, interface, IPv4 address, IPv6 address)."""
    (a_ns, a_if, _, _), (b_ns, b_if, _, _) = a, b
    if not _link_exists(a_ns, a_if):
        # Created in a_ns, the peer moved into b_ns in the same command.
        ns_run(
            a_ns, ["ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b_ns]
        )
    for ns, ifname, addr, addr6 in (a, b):
        ns_run(ns, ["ip", "addr", "replace", f"{addr}/24", "dev", ifname])
        # nodad: usable at once (duplicate address detection would hold it "tentative"
        # for a second or two; nothing else is on the link).
        ns_run(ns, ["ip", "-6", "addr", "replace", f"{addr6}/64", "dev", ifname, "nodad"])
        ns_run(ns, ["ip", "link", "set", ifname, "up"])


def ensure_links(topo: Topology) -> None:
    _ensure_veth(
        (topo.host_ns, topo.wan_host_if, topo.wan_host_addr, topo.wan_host_addr6),
        (topo.laptop_ns, topo.wan_laptop_if, topo.wan_laptop_addr, topo.wan_laptop_addr6),
    )
    _ensure_veth(
        (topo.host_ns, topo.up_host_if, topo.up_host_addr, topo.up_host_addr6),
        (topo.internet_ns, topo.up_inet_if, topo.up_inet_addr, topo.up_inet_addr6),
    )
    # The internet namespace is the host's way out (job containers' egress), both families.
    ns_run(topo.host_ns, ["ip", "route", "replace", "default", "via", topo.up_inet_addr])
    ns_run(topo.host_ns, ["ip", "-6", "route", "replace", "default", "via", topo.up_inet_addr6])
    ns_run(topo.host_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])


def _keypair(path: Path) -> tuple[str, str]:
    """(private, public); the private key is generated once, 0600 root."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = run(["wg", "genkey"]).stdout.strip()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private + "\n")
    os.chmod(path, 0o600)
    private = path.read_text().strip()
    public = run(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return private, public


def _pidfile(ifname: str) -> Path:
    return STATE_DIR / f"wireguard-go.{ifname}.pid"


def _start_wireguard_go(ns: str, ifname: str) -> None:
    if _link_exists(ns, ifname):
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / f"wireguard-go.{ifname}.log", "ab")  # noqa: SIM115 - owned by the child
    env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
    proc = subprocess.Popen(
        in_netns(ns, ["wireguard-go", "-f", ifname]),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    log.close()
    _pidfile(ifname).write_text(f"{proc.pid}\n")

    def link_up() -> bool:
        if _link_exists(ns, ifname):
            return True
        if proc.poll() is not None:
            raise LabError(
                f"wireguard-go {ifname} exited ({proc.returncode}); "
                f"see {LOG_DIR}/wireguard-go.{ifname}.log"
            )
        return False

    if not poll(link_up, 10):
        raise LabError(f"wireguard-go did not create {ifname} within 10 s")


def ensure_wireguard(topo: Topology) -> dict[str, str]:
    """Both ends up and peered; returns the public keys."""
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    _, host_pub = _keypair(HOST_KEY)
    _, laptop_pub = _keypair(LAPTOP_KEY)
    _start_wireguard_go(topo.host_ns, topo.host_wg)
    _start_wireguard_go(topo.laptop_ns, topo.laptop_wg)
    ns_run(
        topo.host_ns,
        [
            "wg",
            "set",
            topo.host_wg,
            "listen-port",
            str(topo.wg_port),
            "private-key",
            str(HOST_KEY),
            "peer",
            laptop_pub,
            "allowed-ips",
            f"{topo.laptop_addr}/32",
        ],
    )
    ns_run(
        topo.laptop_ns,
        [
            "wg",
            "set",
            topo.laptop_wg,
            "private-key",
            str(LAPTOP_KEY),
            "peer",
            host_pub,
            "allowed-ips",
            f"{topo.host_addr}/32",
            "endpoint",
            f"{topo.wan_host_addr}:{topo.wg_port}",
            "persistent-keepalive",
            "25",
        ],
    )
    for ns, ifname, addr in (
        (topo.host_ns, topo.host_wg, topo.host_addr),
        (topo.laptop_ns, topo.laptop_wg, topo.laptop_addr),
    ):
        ns_run(ns, ["ip", "addr", "replace", f"{addr}/{topo.wg_prefix}", "dev", ifname])
        ns_run(ns, ["ip", "link", "set", ifname, "up"])
    return {"host": host_pub, "laptop": laptop_pub}


def ensure_firewall(topo: Topology) -> None:
    """The deployment's `table inet flashpods`, replaced atomically inside the host netns.

    Lab differences: the service user's uid is the one useradd gave it, and the laptop's
    other addresses (its end of the lab's veth, v4 and v6) are the laptop's as well —
    never reachable by jobs, port 53 included. On a real network the laptop reaches the
    host from a private network (denied by the data but for DNS) or from the internet
    (where it is just another internet address)."""
    values = deployment.values()
    ruleset = deployment.firewall_ruleset(
        job_uid=pwd.getpwnam(values["user"]).pw_uid,
        laptop_other_addresses=(topo.wan_laptop_addr, topo.wan_laptop_addr6),
    )
    script = "table inet flashpods\ndelete table inet flashpods\n" + ruleset
    ns_run(topo.host_ns, ["nft", "-f", "-"], input=script)


def wait_handshake(topo: Topology, timeout: float = 15) -> None:
    """Send one packet through the tunnel and wait for the WireGuard handshake."""

    def handshake() -> bool:
        # The ping (up to 1 s) paces the loop.
        ns_run(topo.laptop_ns, ["ping", "-c1", "-W1", topo.host_addr], check=False)
        out = ns_run(topo.laptop_ns, ["wg", "show", topo.laptop_wg, "latest-handshakes"]).stdout
        return any(line.split()[-1] != "0" for line in out.splitlines() if line.strip())

    if poll(handshake, timeout, interval=0):
        return
    raise LabError(
        f"no WireGuard handshake between {topo.laptop_wg} and {topo.host_wg} within {timeout:.0f} s"
    )


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    pidfile.unlink(missing_ok=True)


def teardown(topo: Topology) -> None:
    """Remove the interfaces, wireguard-go processes and namespaces (each only if there)."""
    for ns, ifname in ((topo.host_ns, topo.host_wg), (topo.laptop_ns, topo.laptop_wg)):
        if _netns_exists(topo, ns) and _link_exists(ns, ifname):
            ns_run(ns, ["ip", "link", "del", ifname], check=False)
        _kill_pidfile(_pidfile(ifname))
        (WG_SOCKET_DIR / f"{ifname}.sock").unlink(missing_ok=True)
    for ns in topo.namespaces:
        if _netns_exists(topo, ns):
            run(["ip", "netns", "del", ns])
