"""Host state of the running lab, with pytest-testinfra's `host` (local backend): the
seed's directory structure and socket permissions, users of the services, what
listens where, the start order, and that `up` again changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flashpods import deployment
from flashpods.lab import lab
from flashpods.lab.proc import in_netns, run
from flashpods.lab.services import default_inputs
from flashpods.lab.topology import Topology
from lab_helpers import unit_status


def _paths(values: dict[str, Any]) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = values["paths"]
    return entries


def test_every_path_has_the_modules_owner_group_and_mode(host, values, lab_up) -> None:
    wrong = []
    for entry in _paths(values):
        f = host.file(entry["path"])
        kind_ok = {"d": f.is_directory, "f": f.is_file, "socket": f.is_socket}[entry["kind"]]
        actual = (kind_ok, f.user, f.group, f"{f.mode:04o}")
        want = (True, entry["user"], entry["group"], entry["mode"])
        if actual != want:
            wrong.append((entry["path"], actual, want))
    assert wrong == []


@pytest.mark.parametrize(
    "path",
    [
        "/tmp/flashpods/uploads/",
        "/var/lib/flashpods/artifacts/",
        "/var/lib/flashpods/db/",
        "/var/log/flashpods/",
        "/etc/flashpods/secrets.json",
        "/etc/flashpods/api-token",
        "/run/flashpods/token.sock",
        "/run/flashpods/podman.sock",
        "/run/spire/sockets/agent.sock",
        "/etc/spire/server.conf",
        "/etc/spire/agent.conf",
        "/var/lib/spire/server/",
        "/var/lib/spire/agent/",
    ],
)
def test_the_seeds_directory_structure_exists(host, lab_up, path: str) -> None:
    assert host.file(path.rstrip("/")).exists


def test_secrets_and_api_token_are_root_only(host, values, lab_up) -> None:
    token = host.file("/etc/flashpods/api-token")
    assert (token.user, token.group, token.mode) == ("root", "root", 0o600)
    assert len(token.content_string.strip()) == 64
    int(token.content_string.strip(), 16)
    secrets = host.file("/etc/flashpods/secrets.json")
    assert (secrets.user, secrets.mode) == ("root", 0o600)


def test_api_gets_its_token_as_a_credential_only_it_can_read(host, values, lab_up) -> None:
    creds = default_inputs(Path("/"), Path("/")).credentials_dir
    d, f = host.file(str(creds)), host.file(str(creds / "api-token"))
    assert (d.user, d.mode, f.user, f.mode) == ("flashpods", 0o500, "flashpods", 0o400)
    assert f.content_string == host.file("/etc/flashpods/api-token").content_string
    # and it is not in the API's environment
    api = unit_status()["flashpods-api"]["pid"]
    environ = Path(f"/proc/{api}/environ").read_bytes().split(b"\0")
    token = f.content_string.strip().encode()
    assert not any(token in item for item in environ)
    assert f"CREDENTIALS_DIRECTORY={creds}".encode() in environ


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in lines)}


@pytest.mark.parametrize(
    ("unit", "user", "no_new_privs"),
    [
        ("flashpods-api", "flashpods", "1"),
        ("flashpods-token-service", "root", "0"),
        ("spire-server", "root", "0"),
        ("spire-agent", "root", "0"),
        ("podman-socket-flashpods", "root", "0"),
        ("rsyncd", "root", "0"),
    ],
)
def test_services_run_as_their_units_user(host, lab_up, unit, user, no_new_privs) -> None:
    pid = unit_status()[unit]["pid"]
    status = _proc_status(pid)
    uid = host.user(user).uid
    assert status["Uid"].split()[:2] == [str(uid), str(uid)]
    assert status["NoNewPrivs"] == no_new_privs
    # in the host's network namespace
    assert Path(f"/proc/{pid}/ns/net").stat().st_ino == Path("/var/run/netns/host").stat().st_ino


def test_listeners_are_where_the_deployment_says(topo: Topology, values) -> None:
    out = run(in_netns(topo.host_ns, ["ss", "-Hltn"])).stdout
    listening = {line.split()[3] for line in out.splitlines()}
    assert values["api"]["listenAddress"] in listening
    assert f"{topo.host_addr}:{values['rsync']['port']}" in listening
    spire = values["spire"]
    assert f"{spire['serverBindAddress']}:{spire['serverBindPort']}" in listening
    for port in (values["api"]["port"], values["rsync"]["port"], spire["serverBindPort"]):
        assert f"0.0.0.0:{port}" not in listening and f"*:{port}" not in listening


def test_services_started_in_the_seeds_order(values, lab_up) -> None:
    status = unit_status()
    for unit, after in values["serviceOrder"].items():
        for dep in after:
            if dep == "network.target":
                continue
            # boot_*: the first start, kept across the fault tests' restarts
            assert status[unit]["boot_started_at"] >= status[dep]["boot_ready_at"] > 0, (
                unit,
                dep,
            )


def test_up_again_changes_nothing(lab_up) -> None:
    before = {n: (u["pid"], u["restarts"]) for n, u in unit_status().items()}
    lab.up()
    after = {n: (u["pid"], u["restarts"]) for n, u in unit_status().items()}
    assert after == before


def test_services_run_the_code_of_this_checkout(lab_up) -> None:
    # The API's interpreter (a console script's shebang names it) must import `flashpods`
    # from the checkout under test, not from whichever clone built the service venv first.
    pid = unit_status()["flashpods-api"]["pid"]
    interpreter = Path(f"/proc/{pid}/exe").resolve()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    script = Path(argv[1].decode())
    assert script.name == "flashpods-api"
    python = script.parent / "python"
    assert python.resolve() == interpreter
    imported = run([str(python), "-c", "import flashpods; print(flashpods.__file__)"]).stdout
    assert Path(imported.strip()).is_relative_to(deployment.repo_root() / "services")
