"""The final state of a job from what podman and the supervisor saw (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from flashpods.api.runtime import ContainerInfo
from flashpods.api.runtime.oomwatch import memory_counter_file, near_limit, oom_kill_count
from flashpods.api.runtime.supervisor import TIMEOUT_ERROR, decide_outcome

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def info(exit_code: int | None, oom: bool = False) -> ContainerInfo:
    return ContainerInfo("c1", "job_1", "exited", exit_code, oom, NOW, NOW)


@pytest.mark.parametrize(
    ("exit_code", "oom", "stop", "copy_error", "expected"),
    [
        (0, False, None, None, ("completed", 0, None)),
        (3, False, None, None, ("failed", 3, None)),
        (137, True, None, None, ("failed", 137, "oom_killed")),
        (0, True, None, None, ("completed", 0, None)),  # a child was killed, the job coped
        (137, False, "timed_out", None, ("timed_out", 137, TIMEOUT_ERROR)),
        (143, False, "cancelled", None, ("cancelled", 143, None)),
        (137, False, "cancelled", None, ("cancelled", 137, None)),
        (0, False, "cancelled", None, ("cancelled", 137, None)),  # never completed
        (0, False, None, "artifact_copy_disk_full", ("failed", 0, "artifact_copy_disk_full")),
    ],
)
def test_outcome_table(exit_code, oom, stop, copy_error, expected) -> None:
    outcome = decide_outcome(
        info=info(exit_code),
        oom_killed=oom,
        stop_reason=stop,
        copy_error=copy_error,
        artifacts=(),
        ended_at=NOW,
    )
    assert (outcome.status, outcome.exit_code, outcome.error) == expected


@pytest.mark.parametrize(
    ("exit_code", "oom", "stop", "expected"),
    [
        (1, False, None, ("failed", 1, "disk_full")),  # the job's code, the likely cause
        (0, False, None, ("completed", 0, None)),  # it coped: a warning in its log only
        (137, True, None, ("failed", 137, "oom_killed")),
        (137, False, "timed_out", ("timed_out", 137, TIMEOUT_ERROR)),
    ],
)
def test_a_full_scratch_disk_in_the_outcome(exit_code, oom, stop, expected) -> None:
    outcome = decide_outcome(
        info=info(exit_code),
        oom_killed=oom,
        stop_reason=stop,
        disk_full=True,
        copy_error=None,
        artifacts=(),
        ended_at=NOW,
    )
    assert (outcome.status, outcome.exit_code, outcome.error) == expected


def test_vanished_container_is_lost() -> None:
    outcome = decide_outcome(
        info=None, oom_killed=False, stop_reason=None, copy_error=None, artifacts=(), ended_at=NOW
    )
    assert (outcome.status, outcome.error) == ("failed", "container_lost")


def test_memory_cgroup_lookup_v1_and_v2() -> None:
    v1 = "4:memory:/libpod_parent/libpod-abc\n0::/libpod_parent/libpod-abc\n"
    assert memory_counter_file(v1, Path("/cg")) == Path(
        "/cg/memory/libpod_parent/libpod-abc/memory.oom_control"
    )
    v2 = "0::/user.slice/libpod-abc.scope/container\n"
    assert memory_counter_file(v2, Path("/cg")) == Path(
        "/cg/user.slice/libpod-abc.scope/container/memory.events"
    )
    assert memory_counter_file("1:cpu:/x\n", Path("/cg")) is None


def test_oom_kill_counter() -> None:
    assert oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n") == 2
    assert oom_kill_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n") == 1
    assert oom_kill_count("") == 0


def test_near_limit() -> None:
    assert near_limit(str(1 << 30), str(1 << 30))
    assert near_limit(str((1 << 30) - (1 << 20)), str(1 << 30))
    assert not near_limit(str(1 << 29), str(1 << 30))
    assert not near_limit("5", "max")
    assert not near_limit("5", "9223372036854771712")  # v1's "no limit"
