"""WireGuard, the firewall and rsyncd's allow-list, from every side of the lab.

"dropped" means no answer at all within the timeout (the firewall's drop), as opposed
to "refused" (nothing listening) or "open".
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flashpods.client.upload import new_upload_id
from flashpods.lab.proc import in_netns, run
from flashpods.lab.topology import Topology
from lab_helpers import CONTAINER_PROBE, JOB_NETWORK, Podman, ns_sh, parse_probe, tcp_probe

PORTS = (8080, 873)


def _probe_all(probes: list[tuple[str, str, int]]) -> dict[tuple[str, str, int], str]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(probes)) as pool:
        results = pool.map(lambda p: tcp_probe(*p), probes)
        return dict(zip(probes, results, strict=True))


def test_wireguard_handshake_both_ends(topo: Topology) -> None:
    for ns, ifname in ((topo.laptop_ns, topo.laptop_wg), (topo.host_ns, topo.host_wg)):
        out = run(in_netns(ns, ["wg", "show", ifname, "latest-handshakes"])).stdout.split()
        assert len(out) == 2 and int(out[1]) > 0, f"{ifname}: no handshake ({out})"
    # the host's listen port is the deployment's
    port = run(in_netns(topo.host_ns, ["wg", "show", topo.host_wg, "listen-port"])).stdout
    assert int(port) == topo.wg_port


def test_status_shows_the_handshake_as_an_age(topo: Topology) -> None:
    status = [sys.executable, "-m", "flashpods.lab.cli", "status"]
    assert json.loads(run([*status, "--json"]).stdout)["wireguard_last_handshake"] > 0
    lines = run(status).stdout.splitlines()
    [shown] = [line for line in lines if line.startswith("wireguard last handshake: ")]
    # The lab came up minutes ago: seconds, or minutes and seconds; never an epoch.
    assert re.fullmatch(r"wireguard last handshake: (\d+ min )?\d{1,2} s ago", shown), shown


def test_api_and_rsync_reachable_from_the_laptop_over_wireguard_only(topo: Topology) -> None:
    allowed = [(topo.laptop_ns, topo.host_addr, port) for port in PORTS]
    denied = [
        # the same host over the "internet" veth (not the tunnel)
        *[(topo.laptop_ns, topo.wan_host_addr, port) for port in PORTS],
        # from the internet namespace, to the host's address there
        *[(topo.internet_ns, topo.up_host_addr, port) for port in PORTS],
        # from the host itself, to the tunnel address and to loopback
        *[(topo.host_ns, topo.host_addr, port) for port in PORTS],
        *[(topo.host_ns, "127.0.0.1", port) for port in PORTS],
    ]
    results = _probe_all(allowed + denied)
    assert {p: results[p] for p in allowed} == dict.fromkeys(allowed, "open")
    assert {p: results[p] for p in denied} == dict.fromkeys(denied, "dropped")


# The lab's job network (every API job's), podman's default bridge and slirp4netns: the
# host firewall holds whatever network a container is on.
@pytest.mark.parametrize("network", [JOB_NETWORK, "bridge", "slirp4netns"])
def test_containers_cannot_reach_api_or_rsync_but_reach_the_internet(
    podman: Podman, topo: Topology, network: str
) -> None:
    targets = [
        f"{addr}:{port}"
        for addr in (topo.host_addr, topo.up_host_addr, topo.wan_host_addr)
        for port in PORTS
    ]
    proc = podman.job_container("worker", network, ["sh", "-c", CONTAINER_PROBE, "probe", *targets])
    assert proc.returncode == 0, proc.stderr
    result = parse_probe(proc.stdout)
    assert result.pop("internet") == "hello from the internet"
    assert result == dict.fromkeys(targets, "dropped")


def test_rsync_lists_and_accepts_uploads_from_the_laptop(
    topo: Topology, tmp_path: Path, values: dict[str, Any]
) -> None:
    listing = ns_sh(topo.laptop_ns, f"rsync rsync://{topo.host_addr}/")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[0] == "uploads"
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "sub" / "hello.txt").write_text("hello from the laptop\n")
    upload_id = new_upload_id()
    landed = Path(values["apiEnvironment"]["FLASHPODS_UPLOADS_PATH"]) / upload_id
    try:
        sent = run(
            in_netns(
                topo.laptop_ns,
                ["rsync", "-r", f"{project}/", f"rsync://{topo.host_addr}/uploads/{upload_id}/"],
            ),
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert (landed / "sub" / "hello.txt").read_text() == "hello from the laptop\n"
    finally:
        shutil.rmtree(landed, ignore_errors=True)


@pytest.mark.parametrize("where", ["veth", "internet", "host"])
def test_rsync_refused_from_anywhere_but_the_laptop(topo: Topology, where: str) -> None:
    ns, addr = {
        "veth": (topo.laptop_ns, topo.wan_host_addr),
        "internet": (topo.internet_ns, topo.up_host_addr),
        "host": (topo.host_ns, topo.host_addr),
    }[where]
    proc = ns_sh(ns, f"rsync --contimeout=3 rsync://{addr}/uploads/", timeout=30)
    assert proc.returncode != 0
    assert "uploads" not in proc.stdout


@pytest.fixture
def firewall_open_on_lo(topo: Topology) -> Iterator[None]:
    """Temporarily accept rsync on lo, to test rsyncd's own allow-list behind the firewall."""
    out = run(
        in_netns(
            topo.host_ns,
            [
                "nft",
                "--echo",
                "--handle",
                "insert",
                "rule",
                "inet",
                "flashpods",
                "input",
                "iifname",
                "lo",
                "tcp",
                "dport",
                "873",
                "accept",
            ],
        )
    ).stdout
    handle = out.strip().split("# handle ")[-1]
    try:
        yield
    finally:
        run(
            in_netns(
                topo.host_ns,
                ["nft", "delete", "rule", "inet", "flashpods", "input", "handle", handle],
            )
        )


def test_rsyncd_allow_list_refuses_other_addresses_even_past_the_firewall(
    topo: Topology, firewall_open_on_lo: None
) -> None:
    proc = ns_sh(topo.host_ns, f"rsync --contimeout=3 rsync://{topo.host_addr}/uploads/")
    assert proc.returncode == 5, (proc.returncode, proc.stderr)
    assert "access denied to uploads" in proc.stderr


ROGUE_NS = "flashpods-rogue"


@pytest.fixture
def rogue_laptop(topo: Topology, tmp_path) -> Iterator[str]:
    """A second machine on the internet side claiming 10.0.0.2 with a key the host does not
    know: its own netns, veth to the host, wireguard-go peered with the host's public key."""
    host_pub = run(in_netns(topo.host_ns, ["wg", "show", topo.host_wg, "public-key"])).stdout
    key = tmp_path / "rogue.key"
    key.write_text(run(["wg", "genkey"]).stdout)
    key.chmod(0o600)
    run(["ip", "netns", "add", ROGUE_NS])
    wg = None
    try:
        run(in_netns(ROGUE_NS, ["ip", "link", "set", "lo", "up"]))
        run(
            in_netns(
                topo.host_ns,
                [
                    "ip",
                    "link",
                    "add",
                    "veth-rogue",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ROGUE_NS,
                ],
            )
        )
        run(in_netns(topo.host_ns, ["ip", "addr", "add", "203.0.113.1/24", "dev", "veth-rogue"]))
        run(in_netns(topo.host_ns, ["ip", "link", "set", "veth-rogue", "up"]))
        run(in_netns(ROGUE_NS, ["ip", "addr", "add", "203.0.113.2/24", "dev", "eth0"]))
        run(in_netns(ROGUE_NS, ["ip", "link", "set", "eth0", "up"]))
        wg = subprocess.Popen(
            in_netns(ROGUE_NS, ["wireguard-go", "-f", "wgrogue"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if (
                run(in_netns(ROGUE_NS, ["ip", "link", "show", "wgrogue"]), check=False).returncode
                == 0
            ):
                break
            subprocess.run(["sleep", "0.05"], check=True)
        run(
            in_netns(
                ROGUE_NS,
                [
                    "wg",
                    "set",
                    "wgrogue",
                    "private-key",
                    str(key),
                    "peer",
                    host_pub.strip(),
                    "allowed-ips",
                    f"{topo.host_addr}/32",
                    "endpoint",
                    f"203.0.113.1:{topo.wg_port}",
                ],
            )
        )
        run(in_netns(ROGUE_NS, ["ip", "addr", "add", f"{topo.laptop_addr}/24", "dev", "wgrogue"]))
        run(in_netns(ROGUE_NS, ["ip", "link", "set", "wgrogue", "up"]))
        yield ROGUE_NS
    finally:
        if wg is not None:
            wg.terminate()
            wg.wait(timeout=10)
        run(in_netns(topo.host_ns, ["ip", "link", "del", "veth-rogue"]), check=False)
        run(["ip", "netns", "del", ROGUE_NS])


def test_a_laptop_with_a_wrong_key_reaches_nothing(topo: Topology, rogue_laptop: str) -> None:
    results = _probe_all([(rogue_laptop, topo.host_addr, port) for port in PORTS])
    assert set(results.values()) == {"dropped"}
    ping = run(in_netns(rogue_laptop, ["ping", "-c2", "-W1", topo.host_addr]), check=False)
    assert ping.returncode != 0
    handshakes = run(in_netns(rogue_laptop, ["wg", "show", "wgrogue", "latest-handshakes"]))
    assert handshakes.stdout.split()[1] == "0"


def test_firewall_table_is_the_deployments(topo: Topology) -> None:
    """The seed's rules, rendered from modules/data/firewall.nft, in the host netns."""
    listed = run(in_netns(topo.host_ns, ["nft", "list", "table", "inet", "flashpods"])).stdout
    for rule in (
        'iifname "wg0" ip saddr 10.0.0.2 tcp dport 8080 accept',
        'iifname "wg0" ip saddr 10.0.0.2 tcp dport 873 accept',
        'iifname "podman*" tcp dport { 873, 8080 } drop',
        'iifname "cni-*" tcp dport { 873, 8080 } drop',
        "tcp dport { 873, 8080 } drop",
    ):
        assert rule in listed
