"""SPIRE attestation of real podman containers and the token exchange, end to end.

The tests share one stack (see conftest.py) and run in file order: the restart and
re-attestation tests come after the plain ones, the log audit last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from flashpods.api.runtime.podman_spec import Mount, upload_mount
from flashpods.common.polling import wait_until
from flashpods.tokens.client import exchange
from flashpods_testing.identity_jobs import (
    AUDIENCE,
    FETCH_JWT,
    JOB_IMAGE,
    Containers,
    wait_until_issued,
)
from flashpods_testing.job_containers import SAME_ROLE, Ran, job_spec

pytestmark = [pytest.mark.spire, pytest.mark.podman, pytest.mark.slow]

HELPER = "/opt/flashpods/bin/flashpods-token-helper"
# Inside the container: what the helper exported, as hashes (the test output stays clean).
REPORT = (
    'printf "anthropic=%s\\n" "$(printf %s "${ANTHROPIC_API_KEY-UNSET}" | sha256sum | cut -c1-16)";'
    'printf "github=%s\\n" "$(printf %s "${GITHUB_TOKEN-UNSET}" | sha256sum | cut -c1-16)"'
)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def report(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def svid_id(identity: Containers, role: str | None, image: str = JOB_IMAGE) -> Ran:
    cmd = [
        "/opt/flashpods/bin/spire-agent",
        "api",
        "fetch",
        "x509",
        "-output",
        "json",
        "-socketPath",
        "/run/spire/sockets/agent.sock",
        "-timeout",
        "3s",
    ]
    return identity.run(cmd, role=role, image=image)


def test_worker_gets_worker_id_and_only_github_token(identity: Containers) -> None:
    x509 = svid_id(identity, "worker")
    assert x509.returncode == 0, x509.stderr
    assert [s["spiffe_id"] for s in json.loads(x509.stdout)["svids"]] == [
        "spiffe://flashpods.local/worker"
    ]
    proc = identity.run([HELPER, "sh", "-c", REPORT], role="worker")
    assert proc.returncode == 0, proc.stderr
    secrets = identity.stack.secrets
    assert report(proc.stdout) == {
        "anthropic": digest("UNSET"),
        "github": digest(secrets["github_token"]),
    }

    answer = exchange(identity.stack.token_socket, identity.jwt(role="worker"))
    assert answer.status == 200
    assert answer.body == {"ANTHROPIC_API_KEY": None, "GITHUB_TOKEN": secrets["github_token"]}


def test_agent_gets_agent_id_and_both_secrets(identity: Containers) -> None:
    x509 = svid_id(identity, "agent")
    assert x509.returncode == 0, x509.stderr
    assert [s["spiffe_id"] for s in json.loads(x509.stdout)["svids"]] == [
        "spiffe://flashpods.local/agent"
    ]
    proc = identity.run(
        [HELPER, "--require", "ANTHROPIC_API_KEY,GITHUB_TOKEN", "sh", "-c", REPORT], role="agent"
    )
    assert proc.returncode == 0, proc.stderr
    secrets = identity.stack.secrets
    assert report(proc.stdout) == {
        "anthropic": digest(secrets["anthropic_api_key"]),
        "github": digest(secrets["github_token"]),
    }


def test_unlabelled_container_gets_no_svid_and_no_secret(identity: Containers) -> None:
    # The container says it ran, then the fetch's own exit status: a container that never
    # ran, or a fetch that was never made, cannot pass.
    fetch = shlex.join([*FETCH_JWT, AUDIENCE])
    fetched = identity.run(["sh", "-c", f'echo container-ran; {fetch}; echo "fetch=$?"'], role=None)
    assert "flashpods-job-type" not in fetched.labels
    assert fetched.labels["flashpods-instance"] == identity.instance
    assert fetched.returncode == 0, fetched.stderr
    said = fetched.stdout.splitlines()
    assert said[:1] == ["container-ran"] and said[-1] not in ("fetch=", "fetch=0"), said
    assert said[-1].startswith("fetch="), said
    assert "no identity issued" in fetched.stderr
    assert "svid" not in fetched.stdout
    proc = identity.run([HELPER, "sh", "-c", REPORT], role=None)
    assert "flashpods-job-type" not in proc.labels
    assert proc.returncode == 70
    assert proc.stderr.strip().splitlines()[-1] == "flashpods-failure: spire_attestation_timeout"
    assert "anthropic=" not in proc.stdout and "github=" not in proc.stdout


def test_worker_label_with_another_uid_gets_no_svid(identity: Containers) -> None:
    """The entries also pin the uid the API runs containers as (unix:uid selector)."""
    fetched = identity.fetch_jwt(role="worker", uid=4242)
    assert fetched.labels["flashpods-job-type"] == "worker"
    assert fetched.returncode != 0
    assert "no identity issued" in fetched.stderr


def test_worker_helper_refuses_when_agent_secret_required(identity: Containers) -> None:
    proc = identity.run(
        [HELPER, "--require", "ANTHROPIC_API_KEY,GITHUB_TOKEN", "sh", "-c", REPORT], role="worker"
    )
    assert proc.returncode == 71
    assert proc.stderr.strip().splitlines()[-1] == "flashpods-failure: token_exchange_failed"
    assert "github=" not in proc.stdout


def test_image_label_agent_started_as_worker_stays_worker(
    identity: Containers, tmp_path: Path
) -> None:
    image = f"localhost/flashpods-identity-test:{identity.instance}"
    (tmp_path / "Containerfile").write_text(f"FROM {JOB_IMAGE}\nLABEL flashpods-job-type=agent\n")
    identity.podman("build", "--pull=never", "-t", image, str(tmp_path), timeout=180)
    try:
        labels = json.loads(identity.podman("image", "inspect", image).stdout)[0]["Labels"]
        assert labels["flashpods-job-type"] == "agent"
        x509 = svid_id(identity, "worker", image=image)
        assert x509.labels["flashpods-job-type"] == "worker"  # the container's label wins
        assert x509.returncode == 0, x509.stderr
        assert [s["spiffe_id"] for s in json.loads(x509.stdout)["svids"]] == [
            "spiffe://flashpods.local/worker"
        ]
        proc = identity.run([HELPER, "sh", "-c", REPORT], role="worker", image=image)
        assert proc.returncode == 0, proc.stderr
        assert report(proc.stdout)["anthropic"] == digest("UNSET")
    finally:
        identity.podman("rmi", "-f", image, check=False)


def test_token_for_another_audience_is_refused(identity: Containers) -> None:
    token = identity.jwt(role="agent", audience="some-other-service")
    answer = exchange(identity.stack.token_socket, token)
    assert answer.status == 401
    assert answer.body["error"] == "invalid_audience"


def test_token_socket_mode_and_owner(identity: Containers) -> None:
    st = os.stat(identity.stack.token_socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (identity.uid, identity.gid)


def test_bootstrap_is_idempotent_and_agent_resumes(identity: Containers) -> None:
    again = identity.stack.bootstrap()
    assert not again.join_token_issued
    assert again.resumed_agent_id is not None
    assert again.entries_created == () and again.entries_updated == ()


def test_rotated_secrets_file_is_served_on_next_exchange(identity: Containers) -> None:
    stack = identity.stack
    token = identity.jwt(role="agent")
    rotated = {
        "anthropic_api_key": "sk-ant-rotated-" + os.urandom(8).hex(),
        "github_token": "ghp_rotated" + os.urandom(8).hex(),
    }
    stack.write_secrets(rotated)
    try:
        answer = exchange(stack.token_socket, token)
        assert answer.status == 200
        assert answer.body == {
            "ANTHROPIC_API_KEY": rotated["anthropic_api_key"],
            "GITHUB_TOKEN": rotated["github_token"],
        }
    finally:
        stack.write_secrets(stack.secrets)
    assert exchange(stack.token_socket, token).body["GITHUB_TOKEN"] == stack.secrets["github_token"]


ENTRYPOINT = "/opt/flashpods/bin/flashpods-agent-entrypoint"
# Stand-in for the Claude CLI: leaves the secrets it got (as hashes) in /artifacts, edits
# /work (its copy of the upload, committed and pushed by the entrypoint).
STAND_IN = """#!/bin/sh
printf '%s' "$ANTHROPIC_API_KEY" | sha256sum | cut -c1-16 > /artifacts/saw-anthropic
printf '%s' "$GITHUB_TOKEN" | sha256sum | cut -c1-16 > /artifacts/saw-github
[ "$1" = -p ] && printf '%s\\n' "$2" > /work/prompt.txt
echo "stand-in agent ran"
"""


def git_show(repository: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repository), "show", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def agent_job(
    identity: Containers, tmp_path: Path, role: str | None
) -> tuple[Ran, Path, Path, Path]:
    """An agent job (the entrypoint, task, context and branch from the API's environment,
    its upload mounted as the runtime mounts it) in a container whose role label is
    `role`; the upload in `work`, its origin beside."""
    work, remote = tmp_path / "work", tmp_path / "remote.git"
    work.mkdir()
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    (work / "README").write_text("upload\n")
    (work / "stand-in-agent").write_text(STAND_IN)
    os.chmod(work / "stand-in-agent", 0o755)
    subprocess.run(["git", "-C", str(work), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(work), "remote", "add", "origin", "/remote.git"], check=True)
    spec = job_spec(
        identity.scratch,
        "agent",
        upload_dir=work,
        task="write the prompt down",
        context="it is a test",
        git_branch="flashpods/test-branch",
    )
    for path in (work, remote):
        subprocess.run(["chown", "-R", f"{identity.uid}:{identity.gid}", str(path)], check=True)
    upload = upload_mount(spec)
    assert upload is not None
    mounts = [upload, Mount(remote, "/remote.git", read_only=False)]
    jobs = replace(identity.jobs, agent_command="/work/stand-in-agent")
    ran = jobs.run(spec, role=SAME_ROLE if role == "agent" else role, mounts=mounts)
    return ran, work, spec.artifacts_dir, remote


def test_agent_entrypoint_runs_the_agent_with_both_secrets(
    identity: Containers, tmp_path: Path
) -> None:
    proc, work, artifacts, remote = agent_job(identity, tmp_path, "agent")
    assert proc.returncode == 0, proc.stderr
    secrets = identity.stack.secrets
    assert (artifacts / "saw-anthropic").read_text().strip() == digest(secrets["anthropic_api_key"])
    assert (artifacts / "saw-github").read_text().strip() == digest(secrets["github_token"])
    prompt = git_show(remote, "flashpods/test-branch:prompt.txt")
    assert prompt == "write the prompt down\n\nContext:\nit is a test\n"
    assert sorted(p.name for p in work.iterdir()) == [".git", "README", "stand-in-agent"]
    patch = (artifacts / "changes.patch").read_text()
    assert "+write the prompt down" in patch
    summary = (artifacts / "summary.md").read_text()
    assert (
        "flashpods/test-branch" in summary and "pushed to origin/flashpods/test-branch" in summary
    )
    pushed = git_show(remote, "--format=%s", "-s", "flashpods/test-branch")
    assert "flashpods: write the prompt down" in pushed
    for text in (proc.stdout, proc.stderr, patch, summary):
        assert secrets["anthropic_api_key"] not in text and secrets["github_token"] not in text


@pytest.mark.parametrize(
    ("role", "code", "failure"),
    [
        ("worker", 71, "token_exchange_failed"),
        (None, 70, "spire_attestation_timeout"),
    ],
)
def test_agent_entrypoint_fails_without_agent_identity(
    identity: Containers, tmp_path: Path, role: str | None, code: int, failure: str
) -> None:
    proc, _work, artifacts, _remote = agent_job(identity, tmp_path, role)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"flashpods-failure: {failure}"
    assert list(artifacts.iterdir()) == []  # the agent, which leaves its marks there, never ran


# A container that exchanges once, waits for /work/go, then exchanges again.
TWICE = (
    f'{HELPER} sh -c "echo first=\\${{GITHUB_TOKEN:+granted}}";'
    "while [ ! -e /work/go ]; do sleep 0.2; done;"
    f'{HELPER} sh -c "echo second=\\${{GITHUB_TOKEN:+granted}}"'
)


def test_restarts_of_token_service_and_spire_agent(identity: Containers, tmp_path: Path) -> None:
    stack = identity.stack
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o755)
    inode = os.stat(stack.token_socket).st_ino
    spec = job_spec(identity.scratch, "worker", command=["sh", "-c", TWICE], upload_dir=work)
    upload = upload_mount(spec)  # the worker's /work, read-only
    assert upload is not None
    started = identity.jobs.create(spec, mounts=[upload])
    try:
        identity.jobs.start(spec, started)
        wait_until(
            lambda: "first=granted" in identity.podman("logs", started).stdout,
            30,
            "the first exchange",
            interval=0.3,
        )

        stack.restart_token_service()
        resumed = stack.restart_agent()
        assert not resumed.join_token_issued, "a healthy agent must resume without a new token"
        assert os.stat(stack.token_socket).st_ino == inode

        (work / "go").touch()
        waited = identity.podman("wait", started, timeout=60).stdout.strip()
        logs = identity.podman("logs", started)
    finally:
        identity.jobs.remove(spec, started)
    assert waited == "0", logs.stderr
    assert "second=granted" in logs.stdout

    after = identity.run([HELPER, "sh", "-c", "echo after=${GITHUB_TOKEN:+granted}"], role="worker")
    assert after.returncode == 0, after.stderr
    assert "after=granted" in after.stdout


def test_evicted_agent_reattests_with_a_new_token(identity: Containers) -> None:
    stack = identity.stack
    agent_id = stack.bootstrap().resumed_agent_id
    assert agent_id
    server = [str(stack.bin_dir / "spire-server")]
    sock = ["-socketPath", str(stack.settings.server_socket_path)]
    subprocess.run(
        [*server, "agent", "evict", "-spiffeID", agent_id, *sock], check=True, capture_output=True
    )
    result = stack.restart_agent()
    assert result.join_token_issued
    assert result.resumed_agent_id is None
    assert result.aliases_pruned >= 1  # the evicted agent's node alias
    # The new agent receives the entries again (parent: the node alias) within seconds.
    wait_until_issued(identity)
    assert exchange(stack.token_socket, identity.jwt(role="worker")).status == 200


def test_no_secret_in_any_service_log(identity: Containers) -> None:
    stack = identity.stack
    logs = sorted(stack.logs.glob("*.log"))
    assert {p.name for p in logs} >= {
        "spire-server.log",
        "spire-agent.log",
        "token-service.log",
        "podman.log",
    }
    audit = (stack.logs / "token-service.log").read_text()
    assert "exchange granted spiffe_id=spiffe://flashpods.local/agent" in audit
    assert "exchange denied status=401 reason=invalid_audience" in audit
    for path in logs:
        text = path.read_text(errors="replace")
        for value in stack.secrets.values():
            assert value not in text, f"a secret leaked into {path.name}"
        assert "sk-ant-rotated-" not in text and "ghp_rotated" not in text, path.name
        # No full JWT either: a JWT-SVID is three base64url parts starting with eyJ.
        assert not any(
            part.startswith("eyJ") and part.count(".") == 2 and len(part) > 100
            for part in text.split()
        ), f"a JWT appeared in {path.name}"
