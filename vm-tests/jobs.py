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
podman = f"podman --url unix://{data['apiEnvironment']['FLASHPODS_PODMAN_SOCKET']}"
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


def tools_dir() -> str:
    env = host.succeed("systemctl show -p Environment --value flashpods-api.service").split()
    return next(v.split("=", 1)[1] for v in env if v.startswith("FLASHPODS_TOOLS_DIR="))


def container_command(role: str, script: str) -> str:
    """`script` in a container labelled like a job of `role`, mounted as the API mounts."""
    mounts = (
        f"-v {spire_dir}:/run/spire/sockets:ro "
        f"-v {token_sock}:/run/flashpods/token.sock:ro "
        f"-v {tools_dir()}:/opt/flashpods:ro"
    )
    return (
        f"{podman} run --rm --userns=keep-id --label {spire['roleLabel']}={role} "
        f"{mounts} {image} sh -c {shlex.quote(script)}"
    )


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
        # New entries take a few seconds to reach the agent: retry until attested.
        text = host.wait_until_succeeds(
            container_command(role, f"cat /proc/self/cgroup; {fetch_x509}"), timeout=120
        )
        cgroup, _, svid_json = text.partition("{")
        assert "libpod-" in cgroup and ".scope" in cgroup, cgroup
        svids = json.loads("{" + svid_json)["svids"]
        assert [s["spiffe_id"] for s in svids] == [spiffe_id], svids

    # A container without the role label gets no identity.
    host.fail(
        f"{podman} run --rm -v {spire_dir}:/run/spire/sockets:ro "
        f"-v {tools_dir()}:/opt/flashpods:ro {image} {fetch_x509}"
    )

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
    host.succeed("systemctl restart flashpods-api.service")
    laptop.wait_until_succeeds(f"curl -sf --max-time 5 {api_url}/health", timeout=60)
    job = wait_for_job(created["job_id"], {"completed", "failed", "timed_out", "cancelled"})
    assert job["status"] == "completed" and job["exit_code"] == 0, job
    names = [a["name"] for a in api("GET", f"/jobs/{job['id']}/artifacts")["artifacts"]]
    assert names == ["after-restart.txt"], names
    assert api("GET", "/jobs?status=all&limit=100")["total"] == before + 1
