"""SPIRE attestation of job containers and the token exchange, in the running lab.

The containers are made by the runtime's own container_spec, as the lab's API makes jobs
(role label, flashpods uid, hardening, the SPIRE socket directory, the token socket, the
tools at /opt/flashpods), only their role label changed where a test says so; the
secrets are compared by hash so they never appear in the test output.
"""

from __future__ import annotations

from typing import Any

import pytest
from lab_helpers import EXCHANGE, JOB_NETWORK, Podman, secrets_file, sha

FETCH_X509 = (
    "/opt/flashpods/bin/spire-agent api fetch x509 -socketPath "
    "/run/spire/sockets/agent.sock -output json | jq -r '.svids[].spiffe_id'"
)


@pytest.mark.parametrize("role", ["worker", "agent"])
def test_container_gets_the_svid_of_its_role(podman: Podman, role: str) -> None:
    # New entries take a few seconds to reach the agent; the lab's entries exist since `up`.
    proc = podman.job_container(role, JOB_NETWORK, ["sh", "-c", FETCH_X509])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"spiffe://flashpods.local/{role}"]


# The fetch's own exit status, then the IDs it got (dash has no pipefail).
FETCH_STATUS = (
    "out=$(/opt/flashpods/bin/spire-agent api fetch x509 -timeout 5s -socketPath "
    '/run/spire/sockets/agent.sock -output json); echo "fetch=$?"; '
    """printf %s "$out" | jq -r '.svids[]?.spiffe_id'"""
)


@pytest.mark.parametrize("role", [None, "nobody"])
def test_a_container_without_a_known_role_gets_no_identity(
    podman: Podman, role: str | None
) -> None:
    denied = podman.job_container(role, JOB_NETWORK, ["sh", "-c", FETCH_STATUS])
    assert denied.labels.get("flashpods-job-type") == role  # None: no role label at all
    # The container ran the fetch (exit 0 is the script's), and the agent refused it.
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout.splitlines()[0] not in ("", "fetch=0"), denied.stdout
    assert denied.stdout.startswith("fetch="), denied.stdout
    assert "spiffe://" not in denied.stdout
    # The same script in a worker's container does get its SVID: the check can fail.
    granted = podman.job_container("worker", JOB_NETWORK, ["sh", "-c", FETCH_STATUS])
    assert granted.labels["flashpods-job-type"] == "worker"
    assert granted.stdout.split() == ["fetch=0", "spiffe://flashpods.local/worker"], granted


def test_token_exchange_gives_an_agent_both_secrets_and_a_worker_only_github(
    podman: Podman, values: dict[str, Any]
) -> None:
    secrets = secrets_file(values)
    agent = podman.job_container("agent", JOB_NETWORK, ["sh", "-c", EXCHANGE])
    worker = podman.job_container("worker", JOB_NETWORK, ["sh", "-c", EXCHANGE])
    assert agent.returncode == 0, agent.stderr
    assert worker.returncode == 0, worker.stderr
    assert agent.stdout.split("\n")[:2] == [
        f"ANTHROPIC_API_KEY {sha(secrets['anthropic_api_key'])}",
        f"GITHUB_TOKEN {sha(secrets['github_token'])}",
    ]
    assert worker.stdout.split("\n")[:2] == [
        "ANTHROPIC_API_KEY none",
        f"GITHUB_TOKEN {sha(secrets['github_token'])}",
    ]
    for out in (agent.stdout + agent.stderr, worker.stdout + worker.stderr):
        assert secrets["github_token"] not in out
        assert secrets["anthropic_api_key"] not in out
