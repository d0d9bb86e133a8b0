"""`up`, `down` and `status` of the lab (the I/O; the pieces live in their own modules)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flashpods import deployment
from flashpods.api.runtime import artifactpin
from flashpods.common.polling import poll
from flashpods.deployment import JOB_IMAGE
from flashpods.lab import host, jobnet, network, preflight, pyenv, rsyncd, services, units
from flashpods.lab.proc import LabError, alive, in_netns, run
from flashpods.lab.topology import GIT_DIR, INSTANCE, LOG_DIR, STATE_DIR, Topology
from flashpods.lab.topology import from_deployment as topology_from_deployment

UP_TIMEOUT = 240.0


def topology() -> Topology:
    return topology_from_deployment(deployment.values())


def _setup_script() -> Path:
    return deployment.repo_root() / "scripts" / "setup.sh"


def ensure_prerequisites() -> Path:
    """Debian packages, SPIRE and the job image: found, or built by scripts/setup.sh.

    Returns the SPIRE bin directory."""
    from flashpods.spire.binaries import SpireBinariesMissing, spire_bin_dir

    version = deployment.values()["spire"]["version"]
    missing = [c for c in preflight.program_checks() if not c.ok]
    try:
        spire_bin = spire_bin_dir(version)
    except SpireBinariesMissing:
        missing.append(preflight.Check("SPIRE binaries", False))
    image = (
        run(["podman", "image", "exists", JOB_IMAGE], check=False).returncode == 0
        if shutil.which("podman")
        else False
    )
    if missing or not image:
        what = ", ".join(c.what for c in missing) + ("" if image else f" image {JOB_IMAGE}")
        print(
            f"flashpods-lab: installing what is missing ({what.strip(', ')}) with scripts/setup.sh",
            file=sys.stderr,
        )
        if subprocess.run(["bash", str(_setup_script())], check=False).returncode != 0:
            raise LabError("scripts/setup.sh failed (see its output above)")
        preflight.require(preflight.program_checks())
        spire_bin = spire_bin_dir(version)
    return spire_bin


def _supervisor_pid() -> int | None:
    try:
        pid = int((STATE_DIR / "supervisor.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def read_status() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((STATE_DIR / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


def control(request: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """One request to the supervisor's control socket."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(STATE_DIR / "supervisor.sock"))
        except OSError as exc:
            raise LabError("the lab is not up (no supervisor); run flashpods-lab up") from exc
        s.sendall((json.dumps(request) + "\n").encode())
        with s.makefile("rb") as f:
            reply: dict[str, Any] = json.loads(f.readline())
    if "error" in reply:
        raise LabError(reply["error"])
    return reply


def _start_supervisor(service_bin: Path) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    # A previous supervisor's status must not count as this one's.
    (STATE_DIR / "status.json").unlink(missing_ok=True)
    (STATE_DIR / "supervisor.sock").unlink(missing_ok=True)
    with open(LOG_DIR / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [str(service_bin / "python"), "-m", "flashpods.lab.supervisor", str(STATE_DIR)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    if not poll((STATE_DIR / "supervisor.sock").exists, 10):
        raise LabError(f"the lab supervisor did not start; see {LOG_DIR}/supervisor.log")


def _wait_units(expected: list[str], timeout: float) -> None:
    states: dict[str, str | None] = {}

    def not_up(name: str) -> LabError:
        return LabError(
            f"unit {name} did not come up ({states[name]}); "
            f"see {LOG_DIR}/{name}.log:\n{_tail(LOG_DIR / f'{name}.log')}"
        )

    def all_up() -> bool:
        nonlocal states
        unit_states = read_status().get("units", {})
        states = {n: unit_states.get(n, {}).get("state") for n in expected}
        failed = [n for n, s in states.items() if s == "failed"]
        if failed:
            raise not_up(failed[0])
        return all(s in ("active", "exited") for s in states.values())

    if not poll(all_up, timeout, interval=0.2):
        raise not_up(next(n for n, s in states.items() if s not in ("active", "exited")))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class UpReport:
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)


def up() -> UpReport:
    preflight.require_root()
    preflight.require(preflight.kernel_checks())
    t0 = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        steps[name] = round(now - since, 2)
        return now

    t = t0
    spire_bin = ensure_prerequisites()
    service_bin = pyenv.ensure_service_venv()
    t = step("prerequisites", t)
    values = deployment.values()
    topo = topology()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(STATE_DIR, 0o711)
    host.ensure_user(values["user"], values["group"])
    host.ensure_paths(values["paths"])
    token_file = Path(values["apiEnvironment"]["FLASHPODS_TOKEN_FILE"])
    inputs = services.default_inputs(service_bin, spire_bin)
    host.ensure_credentials(token_file, values["user"], values["group"], inputs.credentials_dir)
    t = step("host", t)
    network.ensure_namespaces(topo)
    network.ensure_links(topo)
    network.ensure_wireguard(topo)
    network.ensure_firewall(topo)
    jobnet.LAB_JOB_NETWORK.ensure(topo.host_ns)
    network.wait_handshake(topo)
    t = step("network", t)
    _write_service_inputs(values, topo, inputs, spire_bin)
    t = step("configs", t)
    lab_units = services.build(values, topo, inputs)
    units_file = STATE_DIR / "units.json"
    if _supervisor_pid() is not None and units.load(units_file) != lab_units:
        # The unit definitions changed (e.g. a new checkout): restart the services.
        _stop_supervisor()
    units.save(lab_units, units_file)
    if _supervisor_pid() is None:
        _kill_orphaned_units()
        _start_supervisor(service_bin)
    else:
        for unit in units.start_order(lab_units):
            control({"cmd": "start", "unit": unit.name})
    _wait_units([u.name for u in lab_units], UP_TIMEOUT)
    step("services", t)
    return UpReport(seconds=round(time.monotonic() - t0, 2), steps=steps)


def _write_service_inputs(
    values: dict[str, Any], topo: Topology, inputs: services.LabInputs, spire_bin: Path
) -> None:
    from flashpods.spire.config import SpireSettings, write_configs
    from flashpods.spire.tools_dir import assemble_tools_dir

    inputs.rsyncd_conf.write_text(rsyncd.render(values["rsyncd"]))
    inputs.www_dir.mkdir(parents=True, exist_ok=True)
    GIT_DIR.mkdir(exist_ok=True)
    (inputs.www_dir / "index.html").write_text("hello from the internet\n")
    write_configs(SpireSettings.from_deployment())
    try:
        assemble_tools_dir(inputs.tools_dir, spire_bin)
    except FileNotFoundError as exc:
        raise LabError(f"missing: {exc.filename} (the container tools directory)") from exc


def _lab_containers() -> list[str]:
    if shutil.which("podman") is None:
        return []
    out = run(
        ["podman", "ps", "-a", "-q", "--filter", f"label=flashpods-instance={INSTANCE}"],
        check=False,
    ).stdout
    return out.split()


def _unit_pids() -> list[int]:
    pids = []
    for info in read_status().get("units", {}).values():
        if info.get("pid"):
            pids.append(int(info["pid"]))
    return pids


def _stop_supervisor() -> None:
    """Stop every unit (reverse order) and the supervisor itself."""
    pid = _supervisor_pid()
    if pid is None:
        return
    with contextlib.suppress(LabError):
        control({"cmd": "shutdown"}, timeout=10)
    if not poll(lambda: not alive(pid), 90, interval=0.1):
        os.kill(pid, signal.SIGKILL)


def _kill_orphaned_units() -> None:
    """What a crashed supervisor left running: each unit's own process group."""
    for unit_pid in _unit_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(unit_pid, signal.SIGKILL)


def down() -> None:
    preflight.require_root()
    topo = topology()
    _stop_supervisor()
    _kill_orphaned_units()
    containers = _lab_containers()
    if containers:
        argv = ["podman", "rm", "-f", "-t", "0", *containers]
        if topo.netns_path(topo.host_ns).exists():
            argv = in_netns(topo.host_ns, argv)
        run(argv, check=False, timeout=120)
    values = deployment.values()
    # The holders of the removed jobs' pinned /artifacts (they outlive the API by design).
    artifactpin.release(None, uid=pwd.getpwnam(values["user"]).pw_uid)
    network.teardown(topo)
    jobnet.LAB_JOB_NETWORK.remove()
    for sock in (
        values["apiEnvironment"]["FLASHPODS_PODMAN_SOCKET"],
        values["tokenServiceEnvironment"]["FLASHPODS_SOCKET_PATH"],
        values["spire"]["agentSocketPath"],
        values["spire"]["serverSocketPath"],
    ):
        Path(sock).unlink(missing_ok=True)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


@dataclass
class Leftovers:
    namespaces: list[str]
    processes: list[int]
    containers: list[str]
    mounts: list[str]
    interfaces: list[str]
    files: list[str]  # outside the lab's state directory: the job network's definition

    def empty(self) -> bool:
        return not (
            self.namespaces
            or self.processes
            or self.containers
            or self.mounts
            or self.interfaces
            or self.files
        )


def leftovers(known_pids: list[int] | None = None) -> Leftovers:
    """What of the lab still exists (all empty after `down`)."""
    topo = topology()
    namespaces = [ns for ns in topo.namespaces if topo.netns_path(ns).exists()]
    pids = [p for p in (known_pids or []) if alive(p)]
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if any(line.split()[1] == str(topo.netns_path(ns)) for ns in topo.namespaces)
    ]
    links = run(["ip", "-o", "link", "show"], check=False).stdout
    names = (
        topo.host_wg,
        topo.laptop_wg,
        topo.wan_host_if,
        topo.wan_laptop_if,
        topo.up_host_if,
        topo.up_inet_if,
    )
    interfaces = [n for n in names if f": {n}:" in links or f": {n}@" in links]
    interfaces += [
        p.name
        for p in network.WG_SOCKET_DIR.glob("*.sock")
        if p.stem in (topo.host_wg, topo.laptop_wg)
    ]
    files = [str(path) for path in jobnet.LAB_JOB_NETWORK.files()]
    return Leftovers(namespaces, pids, _lab_containers(), mounts, interfaces, files)


def status() -> dict[str, Any]:
    topo = topology()
    data = read_status()
    data["namespaces"] = {ns: topo.netns_path(ns).exists() for ns in topo.namespaces}
    if topo.netns_path(topo.laptop_ns).exists():
        out = run(
            in_netns(topo.laptop_ns, ["wg", "show", topo.laptop_wg, "latest-handshakes"]),
            check=False,
        ).stdout.split()
        data["wireguard_last_handshake"] = int(out[-1]) if len(out) == 2 else None
    data["supervisor_running"] = _supervisor_pid() is not None
    return data


def laptop_env() -> dict[str, str]:
    """What the laptop's client needs: the API over WireGuard and the bearer token."""
    values = deployment.values()
    token = host.api_token(Path(values["apiEnvironment"]["FLASHPODS_TOKEN_FILE"]))
    return {"FLASHPODS_HOST": topology().host_addr, "FLASHPODS_API_TOKEN": token}


def shell_env(netns: str) -> dict[str, str]:
    env = dict(os.environ)
    env["FLASHPODS_LAB_NETNS"] = netns
    if netns == topology().laptop_ns:
        env.update(laptop_env())
    return env


def shell_argv(netns: str, command: list[str]) -> list[str]:
    preflight.require_root()
    topo = topology()
    if not topo.netns_path(netns).exists():
        raise LabError(f"the lab is not up (no {netns} namespace); run flashpods-lab up")
    return in_netns(netns, command or [os.environ.get("SHELL", "/bin/bash")])
