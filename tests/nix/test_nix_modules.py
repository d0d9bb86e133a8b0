"""The modules' own output equals the lab's values (tests/nix/eval-modules.nix).

The flake's module lists are evaluated without nixpkgs, by a stand-in of nixpkgs' lib,
module system and option declarations (tests/nix/standin): option types, unique and
conflicting definitions, priorities and undeclared options fail as they would in
`nixos-rebuild`. What is compared here is what the modules hand to NixOS: units, sockets,
firewall, nftables table, SPIRE configs, rsyncd settings, tmpfiles, WireGuard.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from flashpods import deployment
from flashpods.spire import config as spire_config

FAKE_STORE = "/nix/store/00000000000000000000000000000000-"
# The flashpods user's own podman.socket (modules/podman.nix); the lab's rootful podman
# listens at the data's FLASHPODS_PODMAN_SOCKET instead.
USER_PODMAN_SOCKET = "/run/user/2000/podman/podman.sock"
USER_MANAGER = "user@2000.service"
FLASHPODS = f"{FAKE_STORE}flashpods-0.1.0"
# A stand-in derivation (lib.isDerivation) for settings of package options.
FAKE_DRV = '{{ type = "derivation"; name = "{0}"; outPath = "{1}{0}"; version = "{2}"; }}'


def fake_drv(name: str, version: str = "0") -> str:
    return FAKE_DRV.format(name, FAKE_STORE, version)


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return deployment.values()


def test_the_configuration_evaluates_without_failed_assertions(deployed: dict[str, Any]) -> None:
    assert deployed["failedAssertions"] == []
    # configuration.nix warns while no laptop.pub is committed (docs/deploy.md, step 2).
    assert len(deployed["warnings"]) == 1 and "laptop.pub" in deployed["warnings"][0]


def test_firewall_table_is_the_labs(deployed: dict[str, Any]) -> None:
    table = deployed["config"]["networking"]["nftables"]["tables"]["flashpods"]
    assert table["family"] == "inet"
    assert table["content"] == deployment.firewall_table_body()
    assert deployed["config"]["networking"]["nftables"]["enable"] is True


def test_nixos_firewall_opens_api_and_rsync_on_wg0_only(
    deployed: dict[str, Any], data: dict[str, Any]
) -> None:
    firewall = deployed["config"]["networking"]["firewall"]
    wg = data["wireguard"]
    assert firewall["enable"] is True
    # networking.firewall sorts the port lists (firewall.nix: canonicalizePortList).
    assert firewall["interfaces"] == {
        wg["interface"]: {
            "allowedTCPPorts": sorted([data["api"]["port"], data["rsync"]["port"]]),
            "allowedUDPPorts": [],
        }
    }
    assert firewall["allowedTCPPorts"] == []
    assert firewall["allowedUDPPorts"] == [wg["listenPort"]]


def test_spire_configs_are_the_labs(deployed: dict[str, Any]) -> None:
    etc = deployed["config"]["environment"]["etc"]
    settings = dataclasses.replace(
        spire_config.SpireSettings.from_deployment(),
        podman_socket_url=f"unix://{USER_PODMAN_SOCKET}",
    )
    assert etc["spire/server.conf"]["text"] == spire_config.render_server_conf(settings)
    assert etc["spire/agent.conf"]["text"] == spire_config.render_agent_conf(settings)
    units = deployed["config"]["systemd"]["services"]
    assert units["spire-server"]["serviceConfig"]["ExecStart"].endswith(
        f"/bin/spire-server run -config {settings.server_conf_path}"
    )
    assert units["spire-agent"]["serviceConfig"]["ExecStart"].endswith(
        f"/bin/spire-agent run -config {settings.agent_conf_path}"
    )


def test_service_environments_are_the_datas(units: dict[str, Any], data: dict[str, Any]) -> None:
    api_env = units["flashpods-api"]["environment"]
    assert {k: api_env[k] for k in data["apiEnvironment"]} == data["apiEnvironment"] | {
        "FLASHPODS_PODMAN_SOCKET": USER_PODMAN_SOCKET
    }
    # The rest are the API's own defaults (api.md) and the tools directory.
    assert set(api_env) - set(data["apiEnvironment"]) == {
        "FLASHPODS_DEFAULT_IMAGE",
        "FLASHPODS_PULL_POLICY",
        "FLASHPODS_AGENT_COMMAND",
        "FLASHPODS_TOOLS_DIR",
    }
    assert units["flashpods-token-service"]["environment"] == data["tokenServiceEnvironment"]


def test_rsyncd_is_the_datas(deployed: dict[str, Any], data: dict[str, Any]) -> None:
    rsyncd = deployed["config"]["services"]["rsyncd"]
    # nixpkgs' rsyncd.nix writes the port into [global] itself.
    settings = data["rsyncd"] | {
        "global": data["rsyncd"]["global"] | {"port": str(data["rsync"]["port"])}
    }
    assert rsyncd == {
        "enable": True,
        "port": data["rsync"]["port"],
        "settings": settings,
        "socketActivated": False,
    }
    # The module's pre-xfer exec is the package's console script, on the unit's PATH.
    module = data["rsyncd"][data["rsync"]["module"]]
    program = module["pre-xfer exec"].split()[0]
    unit = deployed["config"]["systemd"]["services"]["rsync"]
    assert unit["path"] == [deployed["config"]["services"]["flashpods"]["package"]]
    scripts = tomllib.loads((deployment.repo_root() / "pyproject.toml").read_text())
    assert scripts["project"]["scripts"][program] == "flashpods.rsyncwatch:main"
    limits = f"{data['rsync']['maxFileBytes']} {data['rsync']['maxUploadEntries']}"
    assert module["pre-xfer exec"] == f"{program} {limits}"


def test_tmpfiles_create_the_datas_paths(deployed: dict[str, Any], data: dict[str, Any]) -> None:
    rules = deployed["config"]["systemd"]["tmpfiles"]["rules"]
    expected = [
        f"{e['kind']} {e['path']} {e['mode']} {e['user']} {e['group']} -"
        for e in data["paths"]
        if e["kind"] in ("d", "f")
    ]
    # ... and the seed's podman socket path, as a link to the user's socket.
    link = f"L+ {data['apiEnvironment']['FLASHPODS_PODMAN_SOCKET']} - - - - {USER_PODMAN_SOCKET}"
    assert sorted(rules) == sorted([*expected, link])


def test_sockets_have_the_datas_paths_and_modes(
    deployed: dict[str, Any], data: dict[str, Any]
) -> None:
    sockets = deployed["config"]["systemd"]["sockets"]
    wanted = {e["path"]: e for e in data["paths"] if e["kind"] == "socket"}
    assert set(sockets) == {"flashpods-token-service"}
    (path,) = sockets["flashpods-token-service"]["listenStreams"]
    assert path == data["tokenServiceEnvironment"]["FLASHPODS_SOCKET_PATH"]
    config = sockets["flashpods-token-service"]["socketConfig"]
    entry = wanted[path]
    assert (config["SocketMode"], config["SocketUser"], config["SocketGroup"]) == (
        entry["mode"],
        entry["user"],
        entry["group"],
    )


def test_podman_is_the_flashpods_users_own_socket(
    deployed: dict[str, Any], units: dict[str, Any]
) -> None:
    """No podman unit of ours: nixpkgs enables the podman.socket user unit (podman.nix)."""
    assert "podman-socket-flashpods" not in units
    user_sockets = deployed["config"]["systemd"]["user"]["sockets"]
    assert user_sockets["podman"]["wantedBy"] == ["sockets.target"]
    for name in ("flashpods-api", "spire-agent", "flashpods-image-prepull"):
        assert USER_MANAGER in units[name]["after"], name
        assert USER_MANAGER in units[name]["requires"], name
    api = units["flashpods-api"]
    assert api["environment"]["FLASHPODS_PODMAN_SOCKET"] == USER_PODMAN_SOCKET
    prepull = units["flashpods-image-prepull"]["script"]
    assert f"/bin/podman --url unix://{USER_PODMAN_SOCKET} pull" in prepull


def test_units_start_in_the_datas_order(units: dict[str, Any], data: dict[str, Any]) -> None:
    # On NixOS the podman API is the user manager's (the lab runs a unit of that name).
    nixos_unit = {"podman-socket-flashpods": USER_MANAGER}
    for unit, deps in data["serviceOrder"].items():
        if unit in nixos_unit:
            continue
        after = units[unit]["after"]
        for dep in deps:
            dep = nixos_unit.get(dep, dep)
            assert (dep if "." in dep else f"{dep}.service") in after, (unit, dep)


def test_hardening_paths_exist_before_the_units_start(
    units: dict[str, Any], data: dict[str, Any]
) -> None:
    created = {e["path"] for e in data["paths"] if e["kind"] == "d"}
    for name, unit in units.items():
        service = unit.get("serviceConfig", {})
        paths = service.get("ReadWritePaths", []) + service.get("ReadOnlyPaths", [])
        for path in paths:
            assert path in created, f"{name}: {path} is not created by flashpods-paths"
        if paths:
            assert "flashpods-paths.service" in unit["requires"], name
            assert "flashpods-paths.service" in unit["after"], name
        for path in service.get("InaccessiblePaths", []):
            assert path.startswith("-"), f"{name}: {path} must be optional"


def test_units_run_packaged_programs(units: dict[str, Any]) -> None:
    for name, unit in units.items():
        service = unit.get("serviceConfig", {})
        if "ExecStart" in service:
            assert service["ExecStart"].startswith("/nix/store/"), name
    assert units["flashpods-api"]["serviceConfig"]["ExecStart"] == (
        f"{FLASHPODS}/bin/flashpods-api"
    )
    assert units["flashpods-token-service"]["serviceConfig"]["ExecStart"] == (
        f"{FLASHPODS}/bin/flashpods-token-service"
    )


def test_service_users(units: dict[str, Any], data: dict[str, Any]) -> None:
    assert units["flashpods-api"]["serviceConfig"]["User"] == data["user"]
    assert units["flashpods-image-prepull"]["serviceConfig"]["User"] == data["user"]
    for root_unit in ("flashpods-token-service", "spire-server", "spire-agent", "spire-bootstrap"):
        assert "User" not in units[root_unit]["serviceConfig"], root_unit


def test_api_token_is_a_credential(units: dict[str, Any], data: dict[str, Any]) -> None:
    api = units["flashpods-api"]["serviceConfig"]
    token_file = data["apiEnvironment"]["FLASHPODS_TOKEN_FILE"]
    assert api["LoadCredential"] == [f"api-token:{token_file}"]
    assert api["InaccessiblePaths"] == [f"-{PurePosixPath(token_file).parent}"]


def test_bootstrap_gets_the_data_and_the_spire_binaries(units: dict[str, Any]) -> None:
    bootstrap = units["spire-bootstrap"]
    assert bootstrap["serviceConfig"]["Type"] == "oneshot"
    assert bootstrap["environment"]["FLASHPODS_SPIRE_BIN_DIR"] == f"{FAKE_STORE}spire-1.13.3/bin"
    assert bootstrap["environment"]["FLASHPODS_DEPLOYMENT_JSON"].startswith(FAKE_STORE)
    assert bootstrap["serviceConfig"]["ExecStart"] == (
        f"{FLASHPODS}/bin/flashpods-spire bootstrap --workload-uid 2000"
    )
    assert "spire-agent.service" in bootstrap["before"]


def test_rootless_podman_user(deployed: dict[str, Any], data: dict[str, Any]) -> None:
    user = deployed["config"]["users"]["users"][data["user"]]
    assert user["isNormalUser"] is True and user["linger"] is True and user["uid"] == 2000


def test_wireguard_interface(deployed: dict[str, Any], data: dict[str, Any]) -> None:
    wg = data["wireguard"]
    iface = deployed["config"]["networking"]["wireguard"]["interfaces"][wg["interface"]]
    assert iface["ips"] == [f"{wg['hostAddress']}/{wg['prefixLength']}"]
    assert iface["listenPort"] == wg["listenPort"]
    (peer,) = iface["peers"]
    assert peer["allowedIPs"] == [f"{wg['laptopAddress']}/32"]
    assert peer["endpoint"] is None


def test_image_prepull_is_a_best_effort_unit_after_the_network(units: dict[str, Any]) -> None:
    prepull = units["flashpods-image-prepull"]
    assert "network-online.target" in prepull["after"]
    assert "network-online.target" in prepull["wants"]
    assert prepull["script"].count("|| echo") == 9


# --- settings ------------------------------------------------------------------------


def test_settings_reach_the_api(eval_modules: Callable[[str], dict[str, Any]]) -> None:
    image = fake_drv("image.tar.gz")
    result = eval_modules(
        "{ services.flashpods = {"
        " hostCapacity = { cpus = 4; memoryGb = 16; };"
        ' api.pullPolicy = "never";'
        ' api.extraEnvironment.FLASHPODS_ARTIFACTS_TTL_SECONDS = "7200";'
        " podman.prePullImages = [ ];"
        f" podman.preloadImages = [ {image} ];"
        " }; }"
    )
    units = result["config"]["systemd"]["services"]
    env = units["flashpods-api"]["environment"]
    assert env["FLASHPODS_HOST_CPUS"] == "4" and env["FLASHPODS_HOST_MEMORY_GB"] == "16"
    assert env["FLASHPODS_PULL_POLICY"] == "never"
    assert env["FLASHPODS_ARTIFACTS_TTL_SECONDS"] == "7200"
    assert "flashpods-image-prepull" not in units
    assert f"load --input {FAKE_STORE}image.tar.gz" in units["flashpods-image-load"]["script"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            '{ services.flashpods.secretsFile = "/nix/store/x-secrets.json"; }',
            "secretsFile must not be in the Nix store",
        ),
        (
            '{ services.flashpods.api.tokenFile = "/nix/store/x-token"; }',
            "tokenFile must not be in the Nix store",
        ),
        (
            '{ services.flashpods.wireguard.privateKeyFile = "/nix/store/x-wg.key"; }',
            "privateKeyFile must not be in the Nix store",
        ),
        (
            # nixos-24.05's own spire.
            "{ pkgs, ... }: { services.flashpods.spire.package = pkgs.spire; }",
            "must be SPIRE >= 1.13, got 1.9.6",
        ),
    ],
)
def test_bad_settings_fail_an_assertion(
    eval_modules: Callable[[str], dict[str, Any]], settings: str, message: str
) -> None:
    failed = eval_modules(settings)["failedAssertions"]
    assert len(failed) == 1 and message in failed[0], failed


def test_disabled_means_nothing_deployed(eval_modules: Callable[[str], dict[str, Any]]) -> None:
    config = eval_modules("{ lib, ... }: { services.flashpods.enable = lib.mkForce false; }")[
        "config"
    ]
    assert config["services"]["flashpods"]["enable"] is False
    assert config["systemd"]["services"] == {} and config["systemd"]["sockets"] == {}
    assert config["systemd"]["user"] == {"services": {}, "sockets": {}}
    assert config["systemd"]["tmpfiles"]["rules"] == []
    assert config["users"] == {"users": {}, "groups": {}}
    assert config["environment"] == {"etc": {}, "systemPackages": []}
    networking = config["networking"]
    assert networking["nftables"] == {"enable": False, "tables": {}}
    assert networking["firewall"]["interfaces"] == {}
    assert networking["wireguard"]["interfaces"] == {}
    assert config["services"]["rsyncd"]["enable"] is False
    assert config["virtualisation"]["podman"]["enable"] is False


# Where a unit deliberately departs from modules/lib/hardening.nix, and why (see the modules).
HARDENING_EXCEPTIONS: dict[str, dict[str, Any]] = {
    # the podman client reads its user config; the uploads live in /tmp/flashpods;
    # job artifacts and logs must be readable by the flashpods group.
    "flashpods-api": {"ProtectHome": "read-only", "PrivateTmp": False},
    "flashpods-token-service": {},
    "spire-server": {},
    "spire-bootstrap": {},
    # the Workload API socket is 0777 by design (system.md); the podman socket is in
    # /run/user, which ProtectHome=true hides
    "spire-agent": {"UMask": "0022", "ProtectHome": "read-only"},
}


@pytest.mark.parametrize("unit", sorted(HARDENING_EXCEPTIONS))
def test_every_service_unit_keeps_the_hardening_baseline(
    units: dict[str, Any], nix_eval: Callable[[str], Any], unit: str
) -> None:
    baseline = nix_eval(f"import {REPO / 'modules/lib/hardening.nix'}")
    expected = baseline | HARDENING_EXCEPTIONS[unit]
    service_config = units[unit]["serviceConfig"]
    assert {key: service_config.get(key) for key in expected} == expected
