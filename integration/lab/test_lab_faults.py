"""Faults in the middle of a flow: kill -9 the API, the token service, the SPIRE agent,
rsyncd; the supervisor restarts each as its unit would (Restart=always) and the flow
completes with nothing lost. WireGuard down: a clear client error, then recovery."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from flashpods.client.errors import FlashpodsError
from flashpods.client.retry import RetryPolicy
from flashpods.common.polling import wait_until
from flashpods.lab.proc import in_netns, run
from flashpods.lab.topology import Topology
from lab_helpers import Laptop, kill9_and_wait_restart, unit_status, wait_for

# The fault lands during the sleep; the token exchange and the artifact come after it.
TOKEN_THEN_ARTIFACT = (
    "echo before; sleep 4; "
    "/opt/flashpods/bin/flashpods-token-helper sh -c "
    "'echo got-token ${#GITHUB_TOKEN}' && echo done > /artifacts/result.txt && echo after"
)


def _start_job(laptop: Laptop, command: str) -> str:
    def go() -> str:
        with laptop.client() as fp:
            job_id: str = fp.create_worker(command).job_id
            wait_until(
                lambda: fp.get_job(job_id).status not in ("pending", "starting"),
                60,
                f"{job_id} to start",
                interval=0.2,
            )
            return job_id

    return laptop.call(go)


def _finish(laptop: Laptop, job_id: str) -> tuple[Any, str, Path | None]:
    def go() -> tuple[Any, str, Path | None]:
        with laptop.client() as fp:
            job = fp.wait(job_id, timeout=120)
            log = fp.get_output(job_id).output
            names = [a.name for a in fp.list_artifacts(job_id).artifacts]
            path = None
            if "result.txt" in names:
                path = fp.download_artifact(job_id, "result.txt", Path(f"/tmp/{job_id}-dl"))
            return job, log, path

    return laptop.call(go)


def _jobs_total(laptop: Laptop) -> int:
    def go() -> int:
        with laptop.client() as fp:
            total: int = fp.list_jobs(limit=100).total
            return total

    return laptop.call(go)


@pytest.mark.parametrize("unit", ["flashpods-api", "flashpods-token-service", "spire-agent"])
def test_kill_9_mid_job_the_job_completes(laptop: Laptop, unit: str, tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("an upload finalized before the fault\n")

    def uploaded() -> Any:
        with laptop.client() as fp:
            return fp.upload(tmp_path)

    upload = laptop.call(uploaded)
    before_total = _jobs_total(laptop)
    token_inode = os.stat("/run/flashpods/token.sock").st_ino
    job_id = _start_job(laptop, TOKEN_THEN_ARTIFACT)
    kill9_and_wait_restart(unit)
    job, log, artifact = _finish(laptop, job_id)

    def upload_now() -> Any:
        with laptop.client() as fp:
            return fp.get_upload(upload.upload_id)

    after = laptop.call(upload_now)
    assert (after.state, after.size_bytes, after.file_count) == ("finalized", 37, 1)
    assert job.status == "completed", (job.raw, log)
    lines = [line.split("] ", 1)[1] for line in log.splitlines() if "] " in line]
    assert lines[0] == "before" and "after" in lines
    assert any(line.startswith("got-token ") and line != "got-token 0" for line in lines)
    assert artifact is not None and artifact.read_text() == "done\n"
    assert _jobs_total(laptop) == before_total + 1  # nothing lost, nothing duplicated
    assert os.stat("/run/flashpods/token.sock").st_ino == token_inode


def test_kill_9_rsyncd_mid_upload_the_upload_completes(
    laptop: Laptop, tmp_path: Path, topo: Topology, values: dict[str, Any]
) -> None:
    project = tmp_path / "big"
    project.mkdir()
    payload = os.urandom(8 << 20)
    (project / "blob.bin").write_bytes(payload)
    (project / "small.txt").write_text("small\n")
    upload_id = f"upload_fault_{os.getpid()}"
    # A slow first transfer, so rsyncd dies in the middle of it.
    slow = subprocess.Popen(
        in_netns(
            topo.laptop_ns,
            [
                "rsync",
                "-a",
                "--bwlimit=1024",
                f"{project}/",
                f"rsync://{topo.host_addr}/uploads/{upload_id}/",
            ],
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    landing = Path(values["apiEnvironment"]["FLASHPODS_UPLOADS_PATH"]) / upload_id

    def under_way() -> bool:
        assert slow.poll() is None, "the slow upload ended before the fault"
        return landing.is_dir() and any(landing.iterdir())  # rsync's temporary file

    wait_until(under_way, 30, "the slow upload to be under way", interval=0.1)
    kill9_and_wait_restart("rsyncd")
    assert slow.wait(timeout=60) != 0

    def finish() -> tuple[Any, Any, str]:
        with laptop.client() as fp:
            upload = fp.upload(project, upload_id=upload_id)
            created = fp.create_worker(
                "cd /work && sha256sum blob.bin && ls -A", files_id=upload.upload_id
            )
            job = fp.wait(created.job_id, timeout=120)
            return upload, job, fp.get_output(created.job_id).output

    upload, job, log = laptop.call(finish)
    assert upload.file_count == 2  # rsync --delete removed the dead transfer's temp file
    assert upload.size_bytes == len(payload) + len("small\n")
    import hashlib

    assert hashlib.sha256(payload).hexdigest() in log
    assert job.status == "completed"


def test_wireguard_down_gives_a_clear_error_then_recovers(laptop: Laptop, topo: Topology) -> None:
    fast = {"retry": RetryPolicy(base_seconds=0.2, network_tries=2), "timeout": (2.0, 5.0)}

    def health() -> Any:
        with laptop.client(**fast) as fp:
            return fp.health()

    run(in_netns(topo.host_ns, ["ip", "link", "set", topo.host_wg, "down"]))
    try:
        with pytest.raises(FlashpodsError) as err:
            laptop.call(health)
        assert err.value.code == "network_error"
        assert "10.0.0.1:8080" in str(err.value)
    finally:
        run(in_netns(topo.host_ns, ["ip", "link", "set", topo.host_wg, "up"]))
    wait_for(lambda: _healthy(laptop, health), 30, "the API over WireGuard again")
    assert all(u["state"] == "active" for u in unit_status().values())


def _healthy(laptop: Laptop, health: Any) -> bool:
    try:
        return bool(laptop.call(health).status == "healthy")
    except FlashpodsError:
        return False
