"""The trust boundary tried from inside (issue #11): a job that hogs the token service, a
job that calls the laptop, a local user reading the service's data, an oversized upload.
Each test is the attack that once got through; docs/trust.md's table points here."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flashpods.client.upload import CUT_MARKER, classify_failure
from flashpods.deployment import JOB_IMAGE
from flashpods.lab.jobnet import LAB_JOB_NETWORK
from flashpods.lab.proc import in_netns, run
from flashpods.lab.topology import Topology
from flashpods.spire.binaries import spire_bin_dir
from flashpods.spire.config import SpireSettings
from flashpods_testing.job_containers import job_spec
from flashpods_testing.localhost import HostError, require_podman
from flashpods_testing.rootless import RootlessUser
from flashpods_testing.trees import LargestSize, tree_size
from lab_helpers import (
    CONTAINER_PROBE,
    EXCHANGE,
    JOB_NETWORK,
    Laptop,
    Podman,
    ns_sh,
    parse_probe,
    secrets_file,
    sha,
    tcp_probe,
    wait_for,
)

# --- W2: egress ------------------------------------------------------------------------

LAPTOP_WG_PORT = 9999
LAPTOP_WAN_PORT = 9998
LAPTOP_V6_PORT = 9996
HOST_SERVICE_PORT = 9997
DNS_PORT = 53
# A resolver on the host's loopback, where systemd-resolved listens.
HOST_RESOLVER = "127.0.0.53"
INTERNET_V6 = "http://[2001:db8:2::2]/"


@contextlib.contextmanager
def listener(ns: str, address: str, port: int) -> Iterator[None]:
    """An HTTP server in netns `ns` (something the developer or the host runs); on `::`
    it is http.server's dual-stack server (every v4 and v6 address)."""
    proc = subprocess.Popen(
        in_netns(ns, ["python3", "-m", "http.server", "--bind", address, str(port)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/var/empty" if Path("/var/empty").is_dir() else "/",
    )
    probe = "::1" if address == "::" else address
    try:
        wait_for(lambda: tcp_probe(ns, probe, port, 1) == "open", 20, f"{address}:{port}")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Targets:
    """What a job must not reach, as HOST:PORT ([v6]:PORT)."""

    laptop: list[str]  # the laptop's services, on each of its addresses (v4)
    host: list[str]  # a host service on every host address (v4)
    laptop_dns: list[str]  # the laptop's port 53 on each of its addresses, v4 and v6
    laptop_v6: list[str]
    host_v6: list[str]  # every global v6 address of the host (not ::1, not link-local)

    @property
    def v4(self) -> list[str]:
        return [*self.laptop, *self.host]


@pytest.fixture(scope="module")
def laptop_and_host_services(topo: Topology) -> Iterator[Targets]:
    """Listeners on the laptop (tunnel, "internet" and v6 addresses, and port 53 on all
    of them), a host service on every host address and a resolver on the host's
    loopback."""
    listeners = [
        (topo.laptop_ns, topo.laptop_addr, LAPTOP_WG_PORT),
        (topo.laptop_ns, topo.wan_laptop_addr, LAPTOP_WAN_PORT),
        (topo.laptop_ns, topo.wan_laptop_addr6, LAPTOP_V6_PORT),
        (topo.laptop_ns, "::", DNS_PORT),
        (topo.host_ns, "::", HOST_SERVICE_PORT),
        (topo.host_ns, HOST_RESOLVER, DNS_PORT),
    ]
    with contextlib.ExitStack() as stack:
        for ns, address, port in listeners:
            stack.enter_context(listener(ns, address, port))
        yield Targets(
            laptop=[
                hostport(topo.laptop_addr, LAPTOP_WG_PORT),
                hostport(topo.wan_laptop_addr, LAPTOP_WAN_PORT),
            ],
            host=[
                hostport(addr, HOST_SERVICE_PORT)
                for addr in (topo.host_addr, topo.wan_host_addr, topo.up_host_addr)
            ],
            laptop_dns=[
                hostport(addr, DNS_PORT)
                for addr in (topo.laptop_addr, topo.wan_laptop_addr, topo.wan_laptop_addr6)
            ],
            laptop_v6=[hostport(topo.wan_laptop_addr6, LAPTOP_V6_PORT)],
            host_v6=[
                hostport(addr, HOST_SERVICE_PORT)
                for addr in (topo.wan_host_addr6, topo.up_host_addr6)
            ],
        )


# The bridge's IPv6, after the probe: how many global v6 addresses the container has
# (/proc/net/if_inet6, scope 00) and whether the v6 internet answers.
BRIDGE_V6 = r"""
echo "v6-global-addresses $(awk '$4 == "00"' /proc/net/if_inet6 | wc -l)"
curl -s -m 5 -g "$INTERNET_V6" >/dev/null; echo "internet6 curl-exit-$?"
"""


@pytest.mark.parametrize("network", [JOB_NETWORK, "bridge"])
def test_bridge_jobs_reach_the_internet_and_not_the_laptop_or_host_services(
    podman: Podman, topo: Topology, laptop_and_host_services: Targets, network: str
) -> None:
    # Reachable from where they should be: the laptop's own services from the laptop.
    assert tcp_probe(topo.laptop_ns, topo.laptop_addr, LAPTOP_WG_PORT) == "open"
    targets = [*laptop_and_host_services.v4, *laptop_and_host_services.laptop_dns[:2]]
    script = f"INTERNET_V6='{INTERNET_V6}'\n{CONTAINER_PROBE}\n{BRIDGE_V6}"
    proc = podman.job_container("worker", network, ["sh", "-c", script, "p", *targets])
    assert proc.returncode == 0, proc.stderr
    result = parse_probe(proc.stdout)
    assert result.pop("internet") == "hello from the internet"
    # Neither CNI bridge (the lab's job network, 10.89.0.0/24; podman 4.3's default
    # `podman`, 10.88.0.0/16) has IPv6 configured: no global address, so no v6 at all
    # (curl 7: couldn't connect).
    assert result.pop("v6-global-addresses") == "0"
    assert result.pop("internet6") == "curl-exit-7"
    assert result == dict.fromkeys(targets, "dropped")


# A job that listens on every address (v4 and v6, port 7777) after printing its v4
# address and its IPv6 link-local one ("none" if its eth0 has none).
LISTENER = r"""
import socket
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect(("10.89.0.1", 9))  # no packet: only picks the source address
v6 = [f.split() for f in open("/proc/net/if_inet6")]
local = [f[0] for f in v6 if f[5] == "eth0" and f[3] == "20"]
text = "none"
if local:
    packed = bytes.fromhex(local[0])
    text = socket.inet_ntop(socket.AF_INET6, packed)
server = socket.create_server(("::", 7777), family=socket.AF_INET6, dualstack_ipv6=True)
print("v4", probe.getsockname()[0])
print("v6", text, flush=True)
while True:
    server.accept()[0].close()
"""


BRIDGE_NF = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


def test_jobs_on_the_job_network_do_not_reach_each_other(podman: Podman, topo: Topology) -> None:
    spec = job_spec(podman.scratch, "worker", command=["python3", "-c", LISTENER])
    listener = podman.jobs.create(spec, network=JOB_NETWORK)
    try:
        podman.jobs.start(spec, listener)
        said: dict[str, str] = {}

        def listening() -> bool:
            said.update(parse_probe(podman.run(["logs", listener]).stdout))
            return "v6" in said

        wait_for(listening, 60, "the listener's addresses")
        assert said["v6"] != "none", said  # podman gives eth0 a link-local address
        targets = [f"{said['v4']}:7777", f"[{said['v6']}%25eth0]:7777"]
        probe = ["sh", "-c", CONTAINER_PROBE, "p", *targets]

        def probed() -> dict[str, str]:
            proc = podman.job_container("worker", JOB_NETWORK, probe)
            assert proc.returncode == 0, proc.stderr
            result = parse_probe(proc.stdout)
            assert result.pop("internet") == "hello from the internet"
            return result

        dropped, reached = dict.fromkeys(targets, "dropped"), dict.fromkeys(targets, "open")
        assert probed() == dropped, said

        # Two layers hold it. This kernel passes bridged frames through the inet hooks
        # too (br_netfilter), where `table inet flashpods` drops traffic from a bridge to
        # private and link-local networks; a host without br_netfilter skips that, and
        # the job network's bridge table holds alone. Without either, the second job
        # reaches the listener on both addresses: the probe can succeed.
        def sysctl(name: str, value: str | None = None) -> str:
            argv = ["sysctl", "-n", name] if value is None else ["sysctl", "-qw", f"{name}={value}"]
            return run(in_netns(topo.host_ns, argv)).stdout.strip()

        bridge_nf = {name: sysctl(name) for name in BRIDGE_NF}
        try:
            for name in BRIDGE_NF:
                sysctl(name, "0")
            assert probed() == dropped, said
            table = LAB_JOB_NETWORK.nft_table
            run(in_netns(topo.host_ns, ["nft", "delete", "table", "bridge", table]))
            try:
                assert probed() == reached, said
            finally:
                LAB_JOB_NETWORK.ensure(topo.host_ns)
        finally:
            for name, value in bridge_nf.items():
                sysctl(name, value)
    finally:
        podman.jobs.remove(spec, listener)


PROBE_AS_USER = r"""
import socket, sys, urllib.request
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=2); print(target, "open")
    except ConnectionRefusedError:
        print(target, "refused")
    except OSError:
        print(target, "dropped")
for name, url in (("internet", "http://198.51.100.2/"), ("internet6", "INTERNET_V6")):
    body = urllib.request.urlopen(url, timeout=5).read().decode().strip()
    print(name, body)
""".replace("INTERNET_V6", INTERNET_V6)


def link_local(topo: Topology, ifname: str) -> str:
    out = run(in_netns(topo.host_ns, ["ip", "-6", "-j", "addr", "show", "dev", ifname]))
    addresses = [
        a["local"]
        for link in json.loads(out.stdout)
        for a in link["addr_info"]
        if a.get("scope") == "link"
    ]
    assert addresses, out.stdout
    return f"{addresses[0]}%{ifname}"


def test_rootless_job_traffic_by_the_service_uid_reaches_only_the_internet(
    topo: Topology, values: dict[str, Any], laptop_and_host_services: Targets
) -> None:
    """Rootless podman (NixOS) runs slirp4netns/pasta as the service user: a job's
    connection is the host's own, opened by that uid. The output chain sees exactly that
    here: a process of the service user in the host namespace. Both families: the
    laptop (port 53 too), every host address, loopback and link-local are dropped; DNS
    to the host's resolver and the internet pass."""
    user = pwd.getpwnam(values["user"])
    t = laptop_and_host_services
    dropped = [
        *t.v4,
        *t.laptop_dns,
        *t.laptop_v6,
        *t.host_v6,
        hostport("127.0.0.1", HOST_SERVICE_PORT),
        hostport("::1", HOST_SERVICE_PORT),
        hostport(link_local(topo, topo.up_host_if), HOST_SERVICE_PORT),
    ]
    resolver = hostport(HOST_RESOLVER, DNS_PORT)
    argv = in_netns(
        topo.host_ns,
        [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            "python3",
            "-c",
            PROBE_AS_USER,
            *dropped,
            resolver,
        ],
    )
    out = run(argv, timeout=120).stdout
    result = parse_probe(out)
    assert result.pop("internet") == "hello from the internet"
    assert result.pop("internet6") == "hello from the internet"
    assert result.pop(resolver) == "open"  # DNS to the host's own resolver stays allowed
    assert result == dict.fromkeys(dropped, "dropped"), out
    # Other host users are not jobs: root still reaches the laptop's service.
    assert tcp_probe(topo.host_ns, topo.laptop_addr, LAPTOP_WG_PORT) == "open"


@pytest.fixture(scope="module")
def rootless_service_user(values: dict[str, Any]) -> Iterator[RootlessUser]:
    """The lab's service user (the uid chain output matches) with rootless podman of its
    own: subids, a scratch HOME with its storage and configuration, the job image.
    Everything this added is removed afterwards, also on failure; the user, its
    home and the lab's processes of that uid (the API) stay."""
    user = RootlessUser(
        values["user"], Path("/var/tmp") / f"fp-lab-rootless-{uuid.uuid4().hex[:8]}", created=False
    )
    try:
        require_podman()
        user.create()
        user.load_image()
    except BaseException as exc:
        problems = user.remove()
        if isinstance(exc, HostError | TimeoutError | subprocess.TimeoutExpired):
            pytest.fail(f"rootless podman set-up failed: {exc} {problems or ''}", pytrace=False)
        raise
    yield user
    problems = user.remove()
    assert not problems, f"rootless tear-down left: {problems}"


INTERNET6_PROBE = f"""
body=$(curl -s -m 5 -g {INTERNET_V6}) && echo "internet6 $body" || echo "internet6 error $?"
"""
# slirp4netns with IPv6 (containers.conf(5): enable_ipv6) and the host's loopback
# reachable at 10.0.2.2 / fd00::2 (allow_host_loopback, off by default): so the firewall,
# not slirp's default, is what keeps the job off the host's loopback.
SLIRP = "slirp4netns:enable_ipv6=true,allow_host_loopback=true"


def test_a_rootless_slirp4netns_container_of_the_service_user_reaches_only_the_internet(
    topo: Topology, laptop_and_host_services: Targets, rootless_service_user: RootlessUser
) -> None:
    """A real rootless container (podman 4.3 from Debian, slirp4netns: this podman has
    no pasta) run by the service user in the host namespace, as NixOS runs jobs. Its
    traffic leaves through slirp4netns, a process of that uid: only the internet
    answers, on v4 and v6; the laptop (port 53 too), every host address and the host's
    loopback do not."""
    user = rootless_service_user
    t = laptop_and_host_services
    dropped = [
        *t.v4,
        *t.laptop_dns,
        *t.laptop_v6,
        *t.host_v6,
        hostport("10.0.2.2", HOST_SERVICE_PORT),  # slirp's name for the host's 127.0.0.1
        hostport("fd00::2", HOST_SERVICE_PORT),  # and for its ::1
    ]
    script = CONTAINER_PROBE + INTERNET6_PROBE
    argv = in_netns(
        topo.host_ns,
        user.argv(
            "podman",
            "run",
            "--rm",
            "--pull=never",
            "--network",
            SLIRP,
            JOB_IMAGE,
            "sh",
            "-c",
            script,
            "p",
            *dropped,
        ),
    )
    proc = subprocess.run(
        argv,
        env=user.env(),
        cwd=user.home,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = parse_probe(proc.stdout)
    assert result.pop("internet") == "hello from the internet", proc.stdout
    assert result.pop("internet6") == "hello from the internet", proc.stdout
    assert result == dict.fromkeys(dropped, "dropped"), proc.stdout


# --- W1: one job cannot starve the token service ---------------------------------------

HOG = r"""
import select, socket, time
conns = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/flashpods/token.sock")
    s.sendall(b"GET /tokens HTTP/1.1\r\n")
    conns.append(s)
# Refused connections are answered at once; held ones stay silent (until the deadline).
pending, refused, end = set(conns), 0, time.monotonic() + 3
while pending and time.monotonic() < end:
    readable, _, _ = select.select(list(pending), [], [], 0.2)
    for s in readable:
        pending.discard(s)
        refused += s.recv(64).startswith(b"HTTP/1.1 429")
print(f"holding {len(pending)} refused {refused}", flush=True)
while True:  # a slow client, on purpose: one header line per second per connection
    for s in conns:
        try:
            s.send(b"X-Slow: 1\r\n")
        except OSError:
            pass
    time.sleep(1)
"""


def test_an_agent_exchange_succeeds_while_a_worker_hogs_the_token_service(
    podman: Podman, values: dict[str, Any]
) -> None:
    spec = job_spec(podman.scratch, "worker", command=["python3", "-c", HOG])
    hog = podman.jobs.create(spec, network=JOB_NETWORK)
    try:
        podman.jobs.start(spec, hog)
        said: list[str] = []

        def reported() -> bool:  # once its connections are open
            logs = podman.run(["logs", hog])
            said[:] = logs.stdout.splitlines()
            running = podman.run(["inspect", "--format", "{{.State.Running}}", hog]).stdout
            assert said or running.strip() == "true", f"the hog ended: {logs.stderr}"
            return bool(said)

        wait_for(reported, 60, "the hog's report")
        assert said[0].split() == ["holding", "8", "refused", "292"], said
        agent = podman.job_container("agent", JOB_NETWORK, ["sh", "-c", EXCHANGE])
        assert agent.returncode == 0, agent.stderr
        secrets = secrets_file(values)
        assert agent.stdout.split("\n")[:2] == [
            f"ANTHROPIC_API_KEY {sha(secrets['anthropic_api_key'])}",
            f"GITHUB_TOKEN {sha(secrets['github_token'])}",
        ]
        health = subprocess.run(
            [
                "curl",
                "-sf",
                "--max-time",
                "5",
                "--unix-socket",
                values["tokenServiceEnvironment"]["FLASHPODS_SOCKET_PATH"],
                "http://localhost/health",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert health.returncode == 0 and '"healthy"' in health.stdout
    finally:
        podman.jobs.remove(spec, hog)


# --- W3/W4: a local user reads nothing of the service's ---------------------------------


@pytest.fixture(scope="module")
def local_user() -> Iterator[pwd.struct_passwd]:
    name = f"fp-probe-{uuid.uuid4().hex[:6]}"
    run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
    try:
        yield pwd.getpwnam(name)
    finally:
        run(["userdel", name], check=False)


READ_AS_USER = r"""
import os, sqlite3, sys
db, *paths = sys.argv[1:]
try:
    sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT * FROM jobs").fetchall()
    print("db readable")
except sqlite3.Error as e:
    print("db refused", type(e).__name__)
for path in paths:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        print(path, "readable")
    except OSError as e:
        print(path, "refused", e.errno)
marker = os.environ["MARKER"].encode()
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            if marker in open(f"/proc/{pid}/cmdline", "rb").read():
                seen.append(pid)
        except OSError:
            pass
print("ps", "sees-command" if seen else "clean")
"""


def test_a_local_user_reads_no_database_upload_artifact_or_log(
    laptop: Laptop, tmp_path: Path, values: dict[str, Any], local_user: pwd.struct_passwd
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "source.py").write_text("print('private source')\n")
    (project / "source.py").chmod(0o644)
    marker = f"secret-{uuid.uuid4().hex}"

    def start() -> tuple[str, str, str]:
        with laptop.client() as fp:
            done_upload = fp.upload(project)
            done = fp.create_worker(
                "cat /work/source.py > /artifacts/out.txt; echo to-the-log",
                files_id=done_upload.upload_id,
            )
            fp.wait(done.job_id, timeout=120)
            running_upload = fp.upload(project)
            running = fp.create_worker(
                f"echo started; sleep 120 # {marker}", files_id=running_upload.upload_id
            )
            return done.job_id, running.job_id, running_upload.upload_id

    done_id, running_id, running_upload = laptop.call(start)
    env = values["apiEnvironment"]
    snapshot = Path(env["FLASHPODS_UPLOADS_PATH"]).parent / "snapshots" / running_upload
    log = Path(env["FLASHPODS_LOGS_PATH"]) / f"{done_id}.log"
    try:

        def running() -> bool:
            with laptop.client() as fp:
                return "started" in fp.get_output(running_id).output

        wait_for(lambda: laptop.call(running), 60, "the second job to run")
        db = env["FLASHPODS_DB_PATH"]
        artifact = Path(env["FLASHPODS_ARTIFACTS_PATH"]) / done_id / "out.txt"
        sockets = (
            values["tokenServiceEnvironment"]["FLASHPODS_SOCKET_PATH"],
            env["FLASHPODS_PODMAN_SOCKET"],
        )
        paths = [str(p) for p in (snapshot, snapshot / "source.py", artifact, log, *sockets)]
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={local_user.pw_uid}",
                f"--regid={local_user.pw_gid}",
                "--clear-groups",
                "python3",
                "-c",
                READ_AS_USER,
                db,
                *paths,
            ],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "MARKER": marker},
            timeout=60,
            check=False,
        )
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("db refused"), proc.stdout + proc.stderr
        assert lines[1:-1] == [f"{p} refused 13" for p in paths]
        assert lines[-1] == "ps clean"
        # The modes themselves, set by the services (not only by the directories above).
        for path in (db, f"{db}-wal", str(log), str(artifact), str(snapshot / "source.py")):
            assert os.stat(path).st_mode & 0o077 == 0, path
        assert os.stat(snapshot).st_mode & 0o077 == 0
    finally:

        def cancel() -> None:
            with laptop.client() as fp:
                fp.kill(running_id)

        laptop.call(cancel)


def test_a_local_user_reaches_the_spire_agent_but_gets_no_identity(
    lab_up: Any, values: dict[str, Any], local_user: pwd.struct_passwd
) -> None:
    """The Workload API socket is open to every local process (0777 by design); only a
    caller some registration entry matches gets an SVID: the token service's uid, and job
    containers by their role label. A local user, and the service user outside any
    container, get none."""
    settings = SpireSettings.from_deployment()
    agent = spire_bin_dir(values["spire"]["version"]) / "spire-agent"
    socket = values["spire"]["agentSocketPath"]
    fetch = [str(agent), "api", "fetch", "x509", "-timeout", "5s", "-socketPath", socket]
    fetch += ["-output", "json"]

    def fetch_as(uid: int, gid: int) -> subprocess.CompletedProcess[str]:
        who = [f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        return subprocess.run(
            ["setpriv", *who, *fetch], capture_output=True, text=True, timeout=30, check=False
        )

    token_service = pwd.getpwuid(settings.token_service_uid)
    granted = fetch_as(token_service.pw_uid, token_service.pw_gid)
    assert granted.returncode == 0, granted.stderr
    svids = json.loads(granted.stdout)["svids"]
    assert [svid["spiffe_id"] for svid in svids] == [settings.token_service_spiffe_id]
    service_user = pwd.getpwnam(values["user"])
    for user in (local_user, service_user):
        denied = fetch_as(user.pw_uid, user.pw_gid)
        assert denied.returncode != 0, (user.pw_name, denied.stdout)
        # Answered by the agent (so the socket was reached), with no identity.
        assert "PermissionDenied" in denied.stderr and "no identity issued" in denied.stderr, (
            user.pw_name,
            denied.stderr,
        )


# --- W6: an upload cannot grow past its limit while rsync writes it ----------------------


def test_rsync_cannot_write_a_file_past_the_upload_limit(
    topo: Topology, values: dict[str, Any], tmp_path: Path
) -> None:
    limit = int(values["rsync"]["maxFileBytes"])
    assert str(limit) == values["apiEnvironment"]["FLASHPODS_UPLOAD_MAX_BYTES"]
    upload_id = f"upload_big{uuid.uuid4().hex[:8]}"
    source = tmp_path / "src"
    source.mkdir()
    big = source / "big.bin"
    with open(big, "wb") as f:  # 2500 MiB, sparse but for its last MiB
        f.seek(2500 * 1024 * 1024 - 1024 * 1024)
        f.write(os.urandom(1024 * 1024))
    proc = ns_sh(
        topo.laptop_ns,
        f"rsync -aS --timeout=60 {source}/ rsync://{topo.host_addr}/uploads/{upload_id}/",
        timeout=600,
    )
    assert proc.returncode != 0, proc.stdout
    target = Path(values["apiEnvironment"]["FLASHPODS_UPLOADS_PATH"]) / upload_id
    try:
        sizes = {p.name: p.stat().st_size for p in target.rglob("*") if p.is_file()}
        assert max(sizes.values(), default=0) <= limit, sizes
        assert "File too large" in proc.stderr or "XFSZ" in proc.stderr, proc.stderr
        # The daemon itself lives on: the next (small) upload goes through.
        (source / "big.bin").unlink()
        (source / "small.txt").write_text("fits\n")
        again = ns_sh(
            topo.laptop_ns,
            f"rsync -a {source}/ rsync://{topo.host_addr}/uploads/{upload_id}-ok/",
            timeout=120,
        )
        assert again.returncode == 0, again.stderr
    finally:
        for path in (target, target.with_name(f"{upload_id}-ok")):
            shutil.rmtree(path, ignore_errors=True)


# What rsync writes over the tunnel in one 20 ms poll of the watcher plus scheduling on a
# loaded 2-core host (docs/trust.md W6 gives the measured values).
LAB_OVERSHOOT = 64 << 20


def test_many_files_under_the_limit_are_cut_when_the_upload_passes_it(
    topo: Topology, values: dict[str, Any], tmp_path: Path
) -> None:
    """2.5 GiB in 4 MiB files (each far under RLIMIT_FSIZE) from the laptop: the daemon's
    pre-xfer watcher cuts the transfer once the upload passes the 2 GiB limit; the
    upload's directory, sampled while rsync runs, never holds more than the limit plus
    the overshoot, and the laptop can read why (the marker the client maps to
    upload_too_large). The next upload of the same daemon goes through."""
    limit = int(values["rsync"]["maxFileBytes"])
    module = values["rsync"]["module"]
    entries = values["rsync"]["maxUploadEntries"]
    assert values["rsyncd"][module]["pre-xfer exec"] == f"flashpods-rsync-watch {limit} {entries}"
    upload_id = f"upload_many{uuid.uuid4().hex[:8]}"
    source = tmp_path / "src"
    source.mkdir()
    for n in range(640):  # sparse here; rsync without -S writes every byte on the host
        with open(source / f"part{n:04d}.bin", "wb") as f:
            f.truncate(4 << 20)
    target = Path(values["apiEnvironment"]["FLASHPODS_UPLOADS_PATH"]) / upload_id
    url = f"rsync://{topo.host_addr}/{module}"
    try:
        with LargestSize(target, every=0.02) as sampled:
            proc = ns_sh(topo.laptop_ns, f"rsync -a {source}/ {url}/{upload_id}/", timeout=600)
        print(f"W6: largest sampled {sampled.largest} bytes, limit {limit}")
        assert proc.returncode != 0, proc.stdout
        # The count includes rsync's protocol bytes, so the cut may come up to a file
        # before the tree itself passes the limit; never after the overshoot.
        assert limit - (4 << 20) < sampled.largest <= limit + LAB_OVERSHOOT
        assert tree_size(target) <= limit + LAB_OVERSHOOT
        marker = ns_sh(
            topo.laptop_ns,
            f"rsync -q {url}/{upload_id}/{CUT_MARKER} {tmp_path}/ && cat {tmp_path}/{CUT_MARKER}",
        )
        assert marker.returncode == 0, marker.stderr
        cut = json.loads(marker.stdout)
        print(f"W6: counted at the cut {cut['measured_bytes']} bytes")
        assert cut["limit_bytes"] == limit
        assert limit < cut["measured_bytes"] <= limit + LAB_OVERSHOOT
        error = classify_failure(proc.returncode, proc.stderr, cut)
        assert error.code == "upload_too_large"
        small = tmp_path / "small"
        small.mkdir()
        (small / "fits.txt").write_text("fits\n")
        again = ns_sh(topo.laptop_ns, f"rsync -a {small}/ {url}/{upload_id}-ok/", timeout=120)
        assert again.returncode == 0, again.stderr
    finally:
        for path in (target, target.with_name(f"{upload_id}-ok")):
            shutil.rmtree(path, ignore_errors=True)
