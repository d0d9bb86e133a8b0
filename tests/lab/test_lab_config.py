"""The lab's configuration comes from the deployment data: rsyncd, units, order."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashpods import deployment
from flashpods.lab import pyenv, rsyncd, services
from flashpods.lab.topology import Topology, from_deployment
from flashpods.lab.units import Readiness, Unit, load, save, start_order


def test_rsyncd_renders_the_modules_settings_global_first() -> None:
    text = rsyncd.render(deployment.values()["rsyncd"])
    sections = [line for line in text.splitlines() if line.startswith("[")]
    assert sections == ["[global]", "[uploads]"]
    assert "hosts allow = 10.0.0.2" in text
    assert "hosts deny = *" in text
    assert "use chroot = true" in text
    assert "read only = false" in text
    assert "path = /tmp/flashpods/uploads" in text
    assert "uid = flashpods" in text


def _unit(name: str, *after: str) -> Unit:
    return Unit(name=name, argv=("true",), env={}, after=after, ready=Readiness("exit"))


def test_start_order_follows_after_and_keeps_given_order_for_ties() -> None:
    units = [
        _unit("api", "agent", "podman"),
        _unit("agent", "server", "podman"),
        _unit("server", "network.target"),
        _unit("podman", "network.target"),
    ]
    assert [u.name for u in start_order(units)] == ["server", "podman", "agent", "api"]


def test_start_order_rejects_unknown_dependencies_and_cycles() -> None:
    with pytest.raises(ValueError, match="unknown unit typo"):
        start_order([_unit("a", "typo")])
    with pytest.raises(ValueError, match="cycle"):
        start_order([_unit("a", "b"), _unit("b", "a")])


def _lab_units() -> list[Unit]:
    inputs = services.default_inputs(Path("/venv/bin"), Path("/spire/bin"))
    values = deployment.values()
    return services.build(values, from_deployment(values), inputs)


def test_units_round_trip_through_json(tmp_path: Path) -> None:
    units = _lab_units()
    save(units, tmp_path / "units.json")
    assert load(tmp_path / "units.json") == units


def test_units_carry_the_modules_environments_users_and_order() -> None:
    values = deployment.values()
    units = {u.name: u for u in _lab_units()}
    api, tokens = units["flashpods-api"], units["flashpods-token-service"]
    for key, value in values["apiEnvironment"].items():
        assert api.env[key] == value
    for key, value in values["tokenServiceEnvironment"].items():
        assert tokens.env[key] == value
    assert api.env["FLASHPODS_INSTANCE"] == "lab"
    assert api.env["FLASHPODS_PULL_POLICY"] == "never"
    assert api.user == "flashpods" and "--reuid=flashpods" in api.argv
    assert "--no-new-privs" in api.argv
    assert tokens.user == "root" and tokens.socket is not None
    assert (tokens.socket.path, tokens.socket.mode) == ("/run/flashpods/token.sock", "0660")
    for name, after in values["serviceOrder"].items():
        assert units[name].after == tuple(after)
    # every unit runs in the host netns except the lab's stand-ins for the internet
    for unit in units.values():
        ns = "internet" if unit.name.startswith("internet-") else "host"
        assert unit.argv[:2] == ("nsenter", f"--net=/var/run/netns/{ns}")


def test_agents_reach_the_scripted_model_service_through_deployment_settings() -> None:
    units = {u.name: u for u in _lab_units()}
    api, model = units["flashpods-api"], units["internet-model"]
    topo = from_deployment(deployment.values())
    assert api.env["FLASHPODS_MODEL_BASE_URL"] == f"http://198.51.100.2:{topo.model_port}"
    assert model.ready.port == topo.model_port and model.ready.netns == "internet"
    # The endpoint checks keys against the file the token service hands them out from.
    secrets = units["flashpods-token-service"].env["FLASHPODS_SECRETS_FILE"]
    assert model.argv[model.argv.index("--secrets-file") + 1] == secrets


def test_topology_takes_wireguard_from_the_deployment() -> None:
    topo = from_deployment(deployment.values())
    assert (topo.host_addr, topo.laptop_addr, topo.host_wg, topo.wg_port) == (
        "10.0.0.1",
        "10.0.0.2",
        "wg0",
        51820,
    )
    assert topo.host_wg != topo.laptop_wg  # wireguard-go shares /var/run/wireguard
    assert Topology().namespaces == ("laptop", "host", "internet")


def test_service_venv_is_rebuilt_for_another_checkout(tmp_path: Path) -> None:
    first, second = tmp_path / "clone-a", tmp_path / "clone-b"
    for checkout in (first, second):
        checkout.mkdir()
        (checkout / "pyproject.toml").write_text('[project]\nname = "flashpods"\n')
    assert pyenv.venv_stamp(first) != pyenv.venv_stamp(second)
    before = pyenv.venv_stamp(first)
    assert pyenv.venv_stamp(first) == before
    (first / "pyproject.toml").write_text('[project]\nname = "flashpods"\nversion = "2"\n')
    assert pyenv.venv_stamp(first) != before
