"""The job side of test_runtime_rootless.py, run AS the throwaway rootless user.

Usage: rootless_job.py SOCKET ROOT INSTANCE. Builds a PodmanRuntime against that user's
own `podman system service` (as the API does on NixOS), runs three worker jobs under
ROOT and prints what happened as one JSON object; the test asserts on it. Only the
standard library and the runtime's own modules are imported: this runs on Debian's
/usr/bin/python3, not on the development venv (whose interpreter the user cannot exec).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from flashpods.api.runtime import ContainerError, JobOutcome, JobSpec
from flashpods.api.runtime.podman import PodmanConfig, PodmanRuntime
from flashpods.common.polling import poll, wait_until
from flashpods.deployment import JOB_IMAGE

WAIT_SECONDS = 60


class Hooks:
    """JobHooks that keep each job's outcome for wait()."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._outcomes: dict[str, JobOutcome] = {}

    def on_running(self, job_id: str, started_at: datetime) -> None:
        pass

    def on_output(self, job_id: str) -> None:
        pass

    def on_copying_artifacts(self, job_id: str) -> None:
        pass

    def on_finished(self, job_id: str, outcome: JobOutcome) -> None:
        with self._cond:
            self._outcomes[job_id] = outcome
            self._cond.notify_all()

    def wait(self, job_id: str) -> JobOutcome:
        with self._cond:
            if not self._cond.wait_for(lambda: job_id in self._outcomes, WAIT_SECONDS):
                raise TimeoutError(f"{job_id} did not finish within {WAIT_SECONDS} s")
            return self._outcomes[job_id]


def worker(root: Path, command: str, upload_dir: Path | None = None) -> JobSpec:
    job_id = f"job_{uuid.uuid4().hex[:16]}"
    return JobSpec(
        job_id=job_id,
        job_type="worker",
        image=JOB_IMAGE,
        cpus=1,
        memory_gb=1,
        timeout_minutes=5,
        artifacts_dir=root / "artifacts" / job_id,
        log_path=root / "logs" / f"{job_id}.log",
        upload_dir=upload_dir,
        command=command,
    )


def summary(spec: JobSpec, outcome: JobOutcome) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "exit_code": outcome.exit_code,
        "error": outcome.error,
        "artifacts": sorted(record.name for record in outcome.artifacts),
        "artifacts_dir": str(spec.artifacts_dir),
        "log": spec.log_path.read_text(errors="replace").splitlines(),
    }


def wait_for_line(path: Path, line: str) -> None:
    wait_until(
        lambda: any(text.endswith(f"] {line}") for text in path.read_text().splitlines()),
        WAIT_SECONDS,
        f"{line!r} in {path}",
    )


def container_facts(socket: str, name: str) -> dict[str, Any]:
    """What podman itself says about the running container, and how its ids map to the
    host's (keep-id: the user's own uid inside is the user's own uid outside)."""
    raw = subprocess.run(
        ["podman", "--url", f"unix://{socket}", "container", "inspect", name],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(raw.stdout)[0]
    pid = int(found["State"]["Pid"])
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid_line = next(line for line in status if line.startswith("Uid:"))
    return {
        # podman 4.3 shows keep-id as a "private" userns with these mappings (container
        # id:id in podman's namespace:count; the user is id 0 there).
        "id_mappings": found["HostConfig"]["IDMappings"],
        # Seen from the host's user namespace: container id, host id, count.
        "uid_map": [line.split() for line in Path(f"/proc/{pid}/uid_map").read_text().splitlines()],
        "pid1_host_uid": int(uid_line.split()[1]),
    }


def containers_after_finalize(runtime: PodmanRuntime) -> list[str]:
    """The instance's containers once the runtime had its moment to remove them (it does
    so right after on_finished, so the first look may still see them)."""
    left = runtime.list_job_containers()

    def gone() -> bool:
        nonlocal left
        left = runtime.list_job_containers()
        return not left

    poll(gone, 15, interval=0.1)
    return [info.job_id for info in left]


def main(socket: str, root: Path, instance: str) -> dict[str, Any]:
    runtime = PodmanRuntime(
        PodmanConfig(
            socket_path=Path(socket),
            instance=instance,
            pull_policy="never",
            spire_socket_dir=root / "no-spire",
            token_socket=root / "no-token.sock",
        )
    )
    hooks = Hooks()
    upload = root / "snapshots" / "upload"
    upload.mkdir(parents=True)
    (upload / "input.txt").write_text("from the snapshot\n")
    failing = worker(root, "echo to-stdout; echo to-stderr >&2; exit 3")
    files = worker(
        root,
        'echo "ids=$(id -u):$(id -g)"; cat /work/input.txt;'
        " if touch /work/new 2>/dev/null; then echo work=writable; else echo work=read-only; fi;"
        " echo payload > /artifacts/result.txt; mkdir /artifacts/sub; echo n > /artifacts/sub/n",
        upload_dir=upload,
    )
    cancelled = worker(root, "echo running; sleep 300")
    try:
        user = runtime.container_user()
        for spec in (failing, files, cancelled):
            runtime.start(spec, hooks)
        wait_for_line(cancelled.log_path, "running")
        facts = container_facts(socket, f"job_{cancelled.job_id}")
        runtime.cancel(cancelled.job_id)
        results = {
            "failing": summary(failing, hooks.wait(failing.job_id)),
            "files": summary(files, hooks.wait(files.job_id)),
            "cancelled": summary(cancelled, hooks.wait(cancelled.job_id)),
        }
        return {
            "uid": os.getuid(),
            "gid": os.getgid(),
            "rootless": user.rootless,
            "user_body": user.body(),
            "running_container": facts,
            "upload_entries": sorted(os.listdir(upload)),
            "jobs": results,
            "left_containers": containers_after_finalize(runtime),
        }
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])))
    except ContainerError as exc:  # the test's failure then shows podman's full words
        raise SystemExit(f"{exc}\npodman said: {exc.cause}") from exc
