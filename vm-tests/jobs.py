# Test script of vm-tests/jobs.nix (run by the NixOS test driver; `host`, `laptop`,
# `internet`, `start_all`, `subtest` and `retry` are the driver's globals).
import json
import shlex

start_all()

data = json.loads(host.succeed("cat /etc/flashpods-test/deployment.json"))
secrets = json.loads(host.succeed("cat /etc/flashpods-test/secrets.json"))
spire = data["spire"]
tunnel_ip = data["wireguard"]["hostAddress"]
api_url = f"http://{tunnel_ip}:{data['api']['port']}"
module = data["rsync"]["module"]
uid = int(host.succeed(f"id -u {data['user']}"))
spire_dir = data["apiEnvironment"]["FLASHPODS_SPIRE_SOCKET_DIR"]
token_sock = data["apiEnvironment"]["FLASHPODS_TOKEN_SOCKET"]
image = "localhost/flashpods-job:latest"
token = laptop.succeed("cat /etc/flashpods-test/api-token").strip()


SMALL = {"cpus": 1, "memory_gb": 1}


def api(method: str, path: str, body: dict | None = None) -> dict:
    """One API call from the laptop over WireGuard; the JSON answer."""
    cmd = f"curl -sS --fail-with-body --max-time 30 -X {method} "
    cmd += f"-H 'Authorization: Bearer {token}' "
    if body is not None:
        cmd += f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))} "
    return json.loads(laptop.succeed(cmd + shlex.quote(api_url + path)))


def wait_for_job(job_id: str, states: set[str], timeout: int = 300) -> dict:
    job: dict = {}

    def reached(_last_try: bool) -> bool:
        job.update(api("GET", f"/jobs/{job_id}"))
        return job["status"] in states

    retry(reached, timeout=timeout)
    return job


def api_setting(name: str) -> str:
    """A variable of flashpods-api.service's environment, as systemd runs the unit."""
    env = host.succeed("systemctl show -p Environment --value flashpods-api.service").split()
    return next(v.split("=", 1)[1] for v in env if v.startswith(f"{name}="))


def tools_dir() -> str:
    return api_setting("FLASHPODS_TOOLS_DIR")


def job_like(role: str) -> str:
    """`podman run` options of a container labelled like a job of `role`, mounted as the
    API mounts (the image and command follow)."""
    return (
        f"--userns=keep-id --label {spire['roleLabel']}={role} "
        f"-v {spire_dir}:/run/spire/sockets:ro "
        f"-v {token_sock}:/run/flashpods/token.sock:ro "
        f"-v {tools_dir()}:/opt/flashpods:ro"
    )


def container_command(role: str, script: str) -> str:
    """`script` in a fresh container labelled like a job of `role`."""
    return f"{podman} run --rm {job_like(role)} {image} sh -c {shlex.quote(script)}"


def host_cgroup(container: str) -> tuple[str, str]:
    """(full ID, cgroup of its first process) of a running container as the host sees
    them: inside, podman's private cgroup namespace (cgroup v2) shows only `0::/`."""
    fmt = "'{{.Id}} {{.State.Pid}}'"
    container_id, pid = host.succeed(f"{podman} inspect --format {fmt} {container}").split()
    line = host.succeed(f"cat /proc/{pid}/cgroup").strip()
    assert line.startswith("0::/"), f"not cgroup v2: {line}"
    return container_id, line.removeprefix("0::")


def scope_of(container_id: str, cgroup: str) -> str:
    """The container's libpod-<id>.scope (its processes may sit in a subgroup of it)."""
    scope = f"/libpod-{container_id}.scope"
    assert scope in cgroup, f"{cgroup} is not in {scope}"
    return cgroup[: cgroup.index(scope) + len(scope)]


def in_container(role: str, script: str) -> str:
    return host.succeed(container_command(role, script))


fetch_x509 = (
    "/opt/flashpods/bin/spire-agent api fetch x509 "
    "-socketPath /run/spire/sockets/agent.sock -output json"
)
fetch_jwt = (
    "/opt/flashpods/bin/spire-agent api fetch jwt "
    f"-audience {spire['tokenServiceAudience']} "
    "-socketPath /run/spire/sockets/agent.sock -output json | jq -r '.[0].svids[0].svid'"
)

host.wait_for_unit("spire-agent.service")
host.wait_for_unit("flashpods-token-service.service")
host.wait_for_unit("flashpods-image-load.service")
host.wait_for_unit("flashpods-api.service")
laptop.wait_for_unit("wireguard-wg0.service")
laptop.wait_until_succeeds(f"curl -sf --max-time 5 {api_url}/health", timeout=180)
# The podman the API drives (the flashpods user's own API socket).
podman = f"podman --url unix://{api_setting('FLASHPODS_PODMAN_SOCKET')}"


def bootstrap_runs() -> list[str]:
    journal = host.succeed("journalctl -o cat -u spire-bootstrap.service")
    return [line for line in journal.splitlines() if line.startswith("join_token_issued=")]


with subtest("The bootstrap runs before every agent start, and is idempotent"):
    first = bootstrap_runs()
    assert first and first[0].startswith("join_token_issued=true"), first
    host.succeed("systemctl restart spire-agent.service")
    host.wait_for_unit("spire-agent.service")
    again = bootstrap_runs()
    # The agent resumes with its stored SVID: no new join token, no new entries.
    assert len(again) == len(first) + 1, again
    assert again[-1].startswith("join_token_issued=false resumed=spiffe://"), again[-1]
    assert "created=- updated=-" in again[-1], again[-1]
    for spiffe_id in (spire["workerSpiffeId"], spire["agentSpiffeId"]):
        shown = host.succeed(
            f"spire-server entry show -spiffeID {spiffe_id} -socketPath {spire['serverSocketPath']}"
        )
        assert "Found 1 entry" in shown, shown

with subtest("Worker and agent containers get their SVIDs, in their own cgroup"):
    for role, spiffe_id in (
        ("worker", spire["workerSpiffeId"]),
        ("agent", spire["agentSpiffeId"]),
    ):
        name = f"svid-{role}"
        host.succeed(f"{podman} run -d --name {name} {job_like(role)} {image} sleep 600")
        # SPIRE's docker attestor finds the caller's container by the libpod-<id>.scope in
        # its cgroup; rootless, that scope lives under the flashpods user's manager.
        container_id, cgroup = host_cgroup(name)
        assert cgroup.startswith(f"/user.slice/user-{uid}.slice/user@{uid}.service/"), cgroup
        scope_of(container_id, cgroup)
        # New entries take a few seconds to reach the agent: retry until attested.
        svid_json = host.wait_until_succeeds(f"{podman} exec {name} {fetch_x509}", timeout=120)
        svids = json.loads(svid_json)["svids"]
        assert [s["spiffe_id"] for s in svids] == [spiffe_id], svids
        host.succeed(f"{podman} rm -f -t 0 {name}")

    # A container without the role label gets no identity (SPIRE says so, rather than the
    # command failing for some other reason).
    status, out = host.execute(
        f"{podman} run --rm -v {spire_dir}:/run/spire/sockets:ro "
        f"-v {tools_dir()}:/opt/flashpods:ro {image} {fetch_x509} 2>&1"
    )
    assert status != 0 and "no identity issued" in out, f"{status}: {out}"

with subtest("Token exchange follows the policy"):
    exchange = (
        f"jwt=$({fetch_jwt}) && curl -sf --unix-socket /run/flashpods/token.sock "
        '-H "Authorization: Bearer $jwt" http://localhost/tokens'
    )
    agent_tokens = json.loads(in_container("agent", exchange))
    assert agent_tokens == {
        "ANTHROPIC_API_KEY": secrets["anthropic_api_key"],
        "GITHUB_TOKEN": secrets["github_token"],
    }, "agent tokens differ from the secrets file"
    worker_tokens = json.loads(in_container("worker", exchange))
    assert worker_tokens == {
        "ANTHROPIC_API_KEY": None,
        "GITHUB_TOKEN": secrets["github_token"],
    }, "worker tokens differ from the policy"
    missing = in_container(
        "worker",
        "curl -s --unix-socket /run/flashpods/token.sock http://localhost/tokens",
    )
    assert json.loads(missing)["error"] == "missing_authorization", missing
    forged = in_container(
        "agent",
        "curl -s --unix-socket /run/flashpods/token.sock "
        "-H 'Authorization: Bearer e30.e30.' http://localhost/tokens",
    )
    assert json.loads(forged)["error"] == "invalid_jwt", forged

with subtest("A folder rsynced from the laptop becomes a job; the laptop gets its artifact"):
    upload_id = "upload_vmtest1"
    laptop.succeed(
        "mkdir -p /tmp/project/src && echo 'hello from the laptop' > /tmp/project/src/input.txt"
    )
    laptop.succeed(f"rsync -r /tmp/project/ rsync://{tunnel_ip}/{module}/{upload_id}/")
    upload = api("POST", f"/uploads/{upload_id}/finalize")
    assert upload["state"] == "finalized" and upload["file_count"] == 1, upload
    created = api(
        "POST",
        "/jobs",
        {
            "type": "worker",
            **SMALL,
            "command": "tr a-z A-Z < /work/src/input.txt > /artifacts/result.txt && echo done",
            "files_id": upload_id,
        },
    )
    job = wait_for_job(created["job_id"], {"completed", "failed", "timed_out"})
    assert job["status"] == "completed" and job["exit_code"] == 0, job
    output = api("GET", f"/jobs/{job['id']}/output")
    assert "done" in output["output"], output
    listing = api("GET", f"/jobs/{job['id']}/artifacts")
    assert [a["name"] for a in listing["artifacts"]] == ["result.txt"], listing
    laptop.succeed(
        f"curl -sf -H 'Authorization: Bearer {token}' -o /tmp/result.txt "
        f"{api_url}/jobs/{job['id']}/artifacts/result.txt"
    )
    assert laptop.succeed("cat /tmp/result.txt").strip() == "HELLO FROM THE LAPTOP"

with subtest("The laptop's packaged CLI uploads, runs, follows and downloads a job"):
    laptop.succeed("mkdir -p /tmp/cli && echo 'from the cli' > /tmp/cli/in.txt")
    laptop.succeed(
        "cd /tmp && FLASHPODS_API_TOKEN_FILE=/etc/flashpods-test/api-token "
        "flashpods run --cpus 1 --memory 1 --dir /tmp/cli -- "
        "'tr a-z A-Z < /work/in.txt > /artifacts/cli.txt'"
    )
    assert laptop.succeed("cat /tmp/flashpods-artifacts/*/cli.txt").strip() == "FROM THE CLI"

with subtest("A job's container reaches the internet but never the API or rsync"):
    internet_ip = internet.succeed("ip -4 -o addr show dev eth1").split()[3].split("/")[0]
    probes = " ; ".join(
        f"if timeout 5 bash -c 'echo > /dev/tcp/{target}' 2>/dev/null; "
        f"then echo 'open {target}'; else echo 'closed {target}'; fi"
        for target in (
            f"{tunnel_ip}/{data['api']['port']}",
            f"{tunnel_ip}/{data['rsync']['port']}",
            f"host.containers.internal/{data['api']['port']}",
            f"host.containers.internal/{data['rsync']['port']}",
        )
    )
    created = api(
        "POST",
        "/jobs",
        {
            "type": "worker",
            **SMALL,
            "command": f"{probes} ; curl -sf --max-time 10 http://{internet_ip}/",
        },
    )
    job = wait_for_job(created["job_id"], {"completed", "failed", "timed_out"})
    job_log = api("GET", f"/jobs/{job['id']}/output?tail=100")["output"]
    print(job_log)
    assert "open " not in job_log, f"a job reached the API or rsync:\n{job_log}"
    assert job_log.count("closed ") == 4 and "internet-ok" in job_log, job_log

with subtest("Restarting the API in the middle of a job loses nothing"):
    before = api("GET", "/jobs?status=all&limit=100")["total"]
    created = api(
        "POST",
        "/jobs",
        {
            "type": "worker",
            **SMALL,
            "command": "sleep 20; echo survived > /artifacts/after-restart.txt",
        },
    )
    wait_for_job(created["job_id"], {"running"})
    # The limits the API asked for hold on the host: the container's own cgroup (cgroup v2,
    # cpu and memory delegated to the flashpods user's manager) has them.
    label = f"label=flashpods-job-id={created['job_id']}"
    (container,) = host.succeed(f"{podman} ps -q --filter {label}").split()
    scope = scope_of(*host_cgroup(container))
    limits = host.succeed(f"cat /sys/fs/cgroup{scope}/memory.max /sys/fs/cgroup{scope}/cpu.max")
    assert limits.split("\n")[:2] == [str(SMALL["memory_gb"] * 2**30), "100000 100000"], limits
    host.succeed("systemctl restart flashpods-api.service")
    laptop.wait_until_succeeds(f"curl -sf --max-time 5 {api_url}/health", timeout=60)
    job = wait_for_job(created["job_id"], {"completed", "failed", "timed_out", "cancelled"})
    assert job["status"] == "completed" and job["exit_code"] == 0, job
    names = [a["name"] for a in api("GET", f"/jobs/{job['id']}/artifacts")["artifacts"]]
    assert names == ["after-restart.txt"], names
    assert api("GET", "/jobs?status=all&limit=100")["total"] == before + 1
