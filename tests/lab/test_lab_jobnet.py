"""The lab's job network: a definition real podman reads as the network we meant, an nft
masquerade nft accepts, set up idempotently in a namespace and removed without a trace.
(Needs root: podman and a throwaway network namespace.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flashpods.lab import jobnet
from flashpods.lab.jobnet import JobNetwork
from flashpods.lab.proc import ns_run, run

NET = JobNetwork(
    name="fp-unit-jobs", bridge="cni-fpunit0", subnet="10.97.0.0/24", gateway="10.97.0.1"
)


@pytest.fixture
def cni_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(jobnet, "CNI_CONFIG_DIR", tmp_path / "net.d")
    monkeypatch.setattr(jobnet, "CNI_LEASE_DIR", tmp_path / "networks")
    return tmp_path


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fp-jobnet-{uuid.uuid4().hex[:8]}"
    run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        run(["ip", "netns", "del", name])


def test_podman_reads_the_definition_as_a_bridge_on_the_subnet(cni_dirs: Path) -> None:
    NET.write_conflist()
    assert NET.conflist_path.stat().st_mode & 0o777 == 0o644
    inspected = run(
        ["podman", "--network-config-dir", str(cni_dirs / "net.d"), "network", "inspect", NET.name]
    )
    (network,) = json.loads(inspected.stdout)
    assert network["driver"] == "bridge"
    assert network["network_interface"] == NET.bridge
    assert network["subnets"] == [{"subnet": NET.subnet, "gateway": NET.gateway}]
    assert network["ipam_options"] == {"driver": "host-local"}
    # One plugin: no portmap, firewall or tuning chains made per container.
    assert [p["type"] for p in NET.conflist()["plugins"]] == ["bridge"]
    assert NET.conflist()["plugins"][0]["ipMasq"] is False


def test_ensure_is_idempotent_and_masquerades_only_what_leaves_the_bridge(
    cni_dirs: Path, netns: str
) -> None:
    NET.ensure(netns)
    NET.ensure(netns)  # replaced, not doubled
    listed = ns_run(netns, ["nft", "-j", "list", "table", "ip", NET.nft_table]).stdout
    rules = [item["rule"] for item in json.loads(listed)["nftables"] if "rule" in item]
    assert len(rules) == 1
    (rule,) = rules
    assert {"masquerade": None} in rule["expr"]
    matches = {
        json.dumps(e["match"]["left"], sort_keys=True): e["match"]
        for e in rule["expr"]
        if "match" in e
    }
    saddr = matches[json.dumps({"payload": {"field": "saddr", "protocol": "ip"}}, sort_keys=True)]
    assert saddr["right"] == {"prefix": {"addr": "10.97.0.0", "len": 24}}
    oif = matches[json.dumps({"meta": {"key": "oifname"}}, sort_keys=True)]
    assert (oif["op"], oif["right"]) == ("!=", NET.bridge)
    bridged = ns_run(netns, ["nft", "-j", "list", "table", "bridge", NET.nft_table]).stdout
    assert len([item for item in json.loads(bridged)["nftables"] if "rule" in item]) == 1
    assert json.loads(NET.conflist_path.read_text()) == NET.conflist()


def _reaches(netns: str, address: str) -> bool:
    family = "-6" if ":" in address else "-4"
    ping = ns_run(netns, ["ping", family, "-c1", "-W1", address], check=False)
    return ping.returncode == 0


def test_containers_on_the_bridge_reach_its_gateway_and_not_each_other(
    cni_dirs: Path, netns: str
) -> None:
    """Two network namespaces on a bridge as the CNI plugin wires them (veth ports),
    v4 and IPv6 link-local; before the ruleset they reach each other, after it only the
    gateway."""
    ns_run(netns, ["ip", "link", "add", NET.bridge, "type", "bridge"])
    ns_run(netns, ["ip", "addr", "add", f"{NET.gateway}/24", "dev", NET.bridge])
    ns_run(netns, ["ip", "link", "set", NET.bridge, "up"])
    jobs = [f"{netns}-j{i}" for i in (1, 2)]
    try:
        for i, job in enumerate(jobs, start=1):
            run(["ip", "netns", "add", job])
            port = f"vethfpunit{i}"
            ns_run(netns, ["ip", "link", "add", port, "type", "veth", "peer", "eth0", "netns", job])
            ns_run(netns, ["ip", "link", "set", port, "master", NET.bridge, "up"])
            ns_run(job, ["ip", "addr", "add", f"10.97.0.1{i}/24", "dev", "eth0"])
            ns_run(job, ["ip", "addr", "add", f"fe80::{i}/64", "dev", "eth0", "nodad"])
            ns_run(job, ["ip", "link", "set", "eth0", "up"])
        first, second = jobs
        other_v4, other_v6 = "10.97.0.12", "fe80::2%eth0"
        assert _reaches(first, other_v4) and _reaches(first, other_v6)  # the bridge works
        NET.ensure(netns)
        assert _reaches(first, NET.gateway) and _reaches(second, NET.gateway)
        assert not _reaches(first, other_v4)
        assert not _reaches(first, other_v6)
    finally:
        for job in jobs:
            run(["ip", "netns", "del", job], check=False)


def test_remove_leaves_no_definition_leases_masquerade_or_bridge(
    cni_dirs: Path, netns: str
) -> None:
    NET.ensure(netns)
    ns_run(netns, ["ip", "link", "add", NET.bridge, "type", "bridge"])  # as the plugin makes it
    leases = cni_dirs / "networks" / NET.name
    leases.mkdir(parents=True)
    (leases / "10.97.0.2").write_text("container-id")
    assert NET.files() == [NET.conflist_path, leases]
    NET.remove()
    NET.remove_from_namespace(netns)
    assert NET.files() == []
    assert ns_run(netns, ["nft", "list", "tables"]).stdout == ""
    assert ns_run(netns, ["ip", "link", "show", NET.bridge], check=False).returncode != 0
    NET.remove()  # again: nothing to do, no error


def test_the_lab_network_is_apart_from_podmans_default() -> None:
    lab = jobnet.LAB_JOB_NETWORK
    assert lab.name != "podman" and lab.bridge != "cni-podman0"
    assert lab.subnet == "10.89.0.0/24" and lab.gateway == "10.89.0.1"
