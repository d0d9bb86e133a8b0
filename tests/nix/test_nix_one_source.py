"""One source of truth: what the NixOS modules deploy equals what the lab and the tests use.

The modules derive everything from modules/data through modules/lib/render.nix; the lab
derives it from the same files through flashpods.deployment and flashpods.spire.config.
Both sides are evaluated here and compared, and the modules are checked for literals that
would bypass the data file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flashpods import deployment
from flashpods.spire import config as spire_config
from nix_support import MODULES, REPO, module_files, strip_nix_comments


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return deployment.values()


def test_firewall_table_is_the_labs(render: dict[str, Any]) -> None:
    assert render["firewallTable"] == deployment.firewall_table_body()
    assert re.search(r"@[A-Z0-9_]+@", render["firewallTable"]) is None  # nft sets are @name


def test_firewall_table_with_the_laptops_other_addresses_is_the_labs(
    nix_eval: Callable[[str], Any],
) -> None:
    """The lab passes the laptop's other addresses (v4 and v6); both renderers agree."""
    others = ("192.0.2.2", "fd42:f1a5:b0d5:1::2")
    table = nix_eval(
        "(import ./modules/lib/render.nix).firewallTable"
        f' {{ laptopOtherAddresses = [ "{others[0]}" "{others[1]}" ]; }}'
    )
    assert table == deployment.firewall_table_body(laptop_other_addresses=others)
    assert "elements = { 10.0.0.2, 192.0.2.2 }" in table
    assert "elements = { fd42:f1a5:b0d5:1::2 }" in table


def test_spire_configs_are_the_labs(render: dict[str, Any]) -> None:
    settings = spire_config.SpireSettings.from_deployment()
    assert render["spirePlaceholders"] == settings.placeholders()
    assert render["spireServer"] == spire_config.render_server_conf(settings)
    assert render["spireAgent"] == spire_config.render_agent_conf(settings)


def test_tmpfiles_rules_are_the_datas_paths(render: dict[str, Any], data: dict[str, Any]) -> None:
    expected = [
        f"{e['kind']} {e['path']} {e['mode']} {e['user']} {e['group']} -"
        for e in data["paths"]
        if e["kind"] in ("d", "f")
    ]
    assert render["tmpfilesRules"] == expected
    # Every directory the lab creates is created by the modules, with the same mode.
    assert {e["path"] for e in data["paths"] if e["kind"] == "d"} <= {
        line.split()[1] for line in render["tmpfilesRules"]
    }


def test_service_environments_are_the_datas(render: dict[str, Any], data: dict[str, Any]) -> None:
    assert render["apiEnvironment"] == data["apiEnvironment"]
    assert render["tokenServiceEnvironment"] == data["tokenServiceEnvironment"]
    assert render["rsyncdSettings"] == data["rsyncd"]


def test_data_agrees_with_itself(data: dict[str, Any]) -> None:
    """Values the modules compute from one key must equal the copies kept in another."""
    wg, api, spire = data["wireguard"], data["api"], data["spire"]
    env, tokens = data["apiEnvironment"], data["tokenServiceEnvironment"]
    # modules/common.nix: api.listenAddress defaults to hostAddress:port.
    assert env["FLASHPODS_LISTEN_ADDR"] == f"{wg['hostAddress']}:{api['port']}"
    assert api["listenAddress"] == env["FLASHPODS_LISTEN_ADDR"]
    assert spire["podmanSocketUrl"] == "unix://" + env["FLASHPODS_PODMAN_SOCKET"]
    assert tokens["FLASHPODS_SOCKET_PATH"] == env["FLASHPODS_TOKEN_SOCKET"]
    assert tokens["FLASHPODS_SPIRE_SOCKET"] == spire["agentSocketPath"]
    assert str(Path(spire["agentSocketPath"]).parent) == env["FLASHPODS_SPIRE_SOCKET_DIR"]
    assert data["rsyncd"]["global"]["hosts allow"] == wg["laptopAddress"]
    assert data["rsyncd"]["global"]["address"] == wg["hostAddress"]
    assert data["rsyncd"][data["rsync"]["module"]]["path"] == env["FLASHPODS_UPLOADS_PATH"]
    # The watcher's limits (pre-xfer exec) are the API's finalize limits.
    assert str(data["rsync"]["maxFileBytes"]) == env["FLASHPODS_UPLOAD_MAX_BYTES"]
    assert str(data["rsync"]["maxUploadEntries"]) == env["FLASHPODS_UPLOAD_MAX_ENTRIES"]
    # The admin socket must not sit in the directory job containers mount.
    assert Path(spire["serverSocketPath"]).parent != Path(env["FLASHPODS_SPIRE_SOCKET_DIR"])


def test_nixos_units_see_the_same_values(
    nix_eval: Callable[[str], Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spire.nix hands the bootstrap `builtins.toJSON data` (FLASHPODS_DEPLOYMENT_JSON)."""
    rendered = nix_eval("builtins.toJSON (import ./modules/data/flashpods.nix)")
    path = tmp_path / "deployment.json"
    path.write_text(rendered)
    monkeypatch.setenv("FLASHPODS_DEPLOYMENT_JSON", str(path))
    deployment.values.cache_clear()
    try:
        from_json = deployment.values()
    finally:
        monkeypatch.delenv("FLASHPODS_DEPLOYMENT_JSON")
        deployment.values.cache_clear()
    assert from_json == deployment.values()
    assert json.loads(rendered) == from_json


# --- no literal copies of the data in the modules -------------------------------------


def data_literals(data: dict[str, Any]) -> set[str]:
    """Values a module must take from the data file, never spell out."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and (
            value.startswith(("/", "unix://", "spiffe://"))
            or re.fullmatch(r"\d+\.\d+\.\d+\.\d+.*", value)
        ):
            found.add(value)

    walk(data)
    return found


def data_ports(data: dict[str, Any]) -> set[int]:
    return {
        data["api"]["port"],
        data["rsync"]["port"],
        data["wireguard"]["listenPort"],
        data["spire"]["serverBindPort"],
    }


def literal_copies(text: str, literals: set[str], ports: set[int]) -> list[str]:
    code = strip_nix_comments(text)
    # A data value as a whole string literal, or as the start of a longer path literal.
    hits = [v for v in sorted(literals) if re.search(rf'"{re.escape(v)}(/[^"]*)?"', code)]
    hits += [str(port) for port in sorted(ports) if re.search(rf"(?<![\w.]){port}(?![\w.])", code)]
    return hits


def test_modules_take_values_from_the_data_file(data: dict[str, Any]) -> None:
    literals, ports = data_literals(data), data_ports(data)
    copies = {
        path.name: hits
        for path in module_files()
        if (hits := literal_copies(path.read_text(), literals, ports))
    }
    assert copies == {}, f"values duplicated from modules/data/flashpods.nix: {copies}"


def test_the_literal_check_catches_a_copy(data: dict[str, Any]) -> None:
    literals, ports = data_literals(data), data_ports(data)
    sneaky = 'ExecStart = "x"; ReadWritePaths = [ "/var/lib/flashpods/artifacts" ]; port = 8080;\n'
    assert literal_copies(sneaky, literals, ports) == [
        "/var/lib/flashpods",
        "/var/lib/flashpods/artifacts",
        "8080",
    ]
    # Comments may name values; only code counts.
    assert literal_copies("# binds 10.0.0.1:8080\n", literals, ports) == []


def test_modules_read_the_data_through_one_door() -> None:
    """Modules import the data only via lib/render.nix, which reads data/ itself."""
    for path in module_files():
        code = strip_nix_comments(path.read_text())
        assert "./data/" not in code and "./data +" not in code, path.name
        assert "import ./lib/render.nix" in code, path.name
    render_nix = (MODULES / "lib" / "render.nix").read_text()
    assert "../data/flashpods.nix" in render_nix and "../data/firewall.nft" in render_nix
    assert (REPO / "modules" / "data" / "spire-agent.conf").exists()
