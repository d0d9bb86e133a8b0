"""The pure-data deployment files evaluate without nixpkgs and render a valid ruleset."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from flashpods import deployment


def test_values_evaluate_with_plain_nix() -> None:
    data = deployment.values()
    assert data["wireguard"]["hostAddress"] == "10.0.0.1"
    assert data["apiEnvironment"]["FLASHPODS_LISTEN_ADDR"] == "10.0.0.1:8080"
    modes = {entry["path"]: entry["mode"] for entry in data["paths"]}
    assert modes["/run/flashpods"] == "0750"
    assert modes["/etc/flashpods/api-token"] == "0600"


def test_firewall_has_no_unfilled_placeholders() -> None:
    ruleset = deployment.firewall_ruleset()
    assert re.search(r"@[A-Z0-9_]+@", ruleset) is None  # placeholders; nft sets are @name
    assert 'iifname "wg0" ip saddr 10.0.0.2 tcp dport 8080 accept' in ruleset


@pytest.mark.parametrize("laptop_other", [(), ("192.0.2.2", "fd42:f1a5:b0d5:1::2")])
def test_firewall_ruleset_passes_nft_check(tmp_path, laptop_other: tuple[str, ...]) -> None:
    rules = tmp_path / "flashpods.nft"
    rules.write_text(deployment.firewall_ruleset(laptop_other_addresses=laptop_other))
    subprocess.run(["nft", "--check", "-f", str(rules)], check=True)


def test_rootless_jobs_meet_the_laptop_before_dns() -> None:
    """The laptop is dropped before port 53 is accepted (issue #11: DNS to the laptop)."""
    rules = [
        line.strip()
        for line in deployment.firewall_ruleset(job_uid=999).splitlines()
        if line.strip().startswith("meta skuid 999")
    ]
    dns = rules.index("meta skuid 999 meta l4proto { tcp, udp } th dport 53 accept")
    for laptop in ('oifname "wg0" drop', "ip daddr @laptop_v4 drop", "ip6 daddr @laptop_v6 drop"):
        assert rules.index(f"meta skuid 999 {laptop}") < dns


def test_values_without_nix_instantiate_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FLASHPODS_DEPLOYMENT_JSON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nix-instantiate
    with pytest.raises(deployment.DeploymentError, match="nix-instantiate is missing"):
        deployment.values.__wrapped__()
