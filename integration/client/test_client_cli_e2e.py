"""`flashpods` (the console script, as a subprocess) against the real API and podman."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import requests
from client_stack import BIN, Api
from flashpods.common.polling import wait_until

PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\.\d\d\d\] ")


def _lines(stdout: str) -> list[str]:
    return [PREFIX.sub("", line) for line in stdout.splitlines()]


def _job_id(stderr: str) -> str:
    match = re.search(r"started (job_[0-9a-f]+)", stderr)
    assert match, stderr
    return match.group(1)


def _get(api: Api, path: str) -> dict:
    response = requests.get(
        api.url + path, headers={"Authorization": f"Bearer {api.token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_run_end_to_end_with_exit_code_and_artifacts(
    api: Api, client_env: dict[str, str], project: Path, tmp_path: Path
) -> None:
    command = (
        "cat /work/src/data.txt; ls -A /work; echo to-stderr >&2; "
        "mkdir -p /artifacts/sub && echo result > /artifacts/sub/out.txt; "
        "printf 'x%.0s' $(seq 1 1000) > /artifacts/big.txt; exit 7"
    )
    arts = tmp_path / "arts"
    proc = subprocess.run(
        [
            str(BIN / "flashpods"),
            "run",
            "--dir",
            str(project),
            "--cpus",
            "1",
            "--memory",
            "1",
            "--artifacts-dir",
            str(arts),
            "--",
            command,
        ],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 7, proc.stderr
    lines = _lines(proc.stdout)
    assert lines[0] == "hello from the laptop"
    assert sorted(lines[1:3]) == ["run.sh", "src"]  # .git and node_modules were left out
    assert "to-stderr" in lines
    job_id = _job_id(proc.stderr)
    assert (arts / job_id / "sub" / "out.txt").read_text() == "result\n"
    assert (arts / job_id / "big.txt").read_text() == "x" * 1000
    assert sorted(p.name for p in (arts / job_id).iterdir()) == ["big.txt", "sub"]  # no .part
    job = _get(api, f"/jobs/{job_id}")
    assert (job["status"], job["exit_code"], job["cpus"], job["memory_gb"]) == ("failed", 7, 1, 1)
    assert job["command"] == command
    upload = _get(api, f"/uploads/{job['files_id']}")
    assert upload["state"] == "consumed"
    assert upload["file_count"] == 2  # src/data.txt and run.sh
    assert api.containers() == []


def test_run_true_json(api: Api, client_env: dict[str, str], project: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(BIN / "flashpods"),
            "run",
            "--json",
            "--dir",
            str(project),
            "--artifacts-dir",
            str(tmp_path / "arts"),
            "--",
            "true",
        ],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["exit_code"] == 0
    assert report["job"]["status"] == "completed"
    assert report["artifacts"] == []
    assert proc.stderr == ""


def test_ctrl_c_cancels_the_job(api: Api, client_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            str(BIN / "flashpods"),
            "run",
            "--no-upload",
            "--",
            "trap 'exit 143' TERM; echo ready; sleep 60 & wait",
        ],
        env=client_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the job's first log line: it is running
    assert line.endswith("ready\n"), line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    job_id = _job_id(err)

    # Cancelled at once; the exit code arrives when the container has stopped.
    def stopped() -> bool:
        job = _get(api, f"/jobs/{job_id}")
        assert job["status"] == "cancelled", job
        return job["exit_code"] is not None

    wait_until(stopped, 30, f"{job_id}'s exit code", interval=0.2)
    job = _get(api, f"/jobs/{job_id}")
    assert (job["status"], job["exit_code"]) == ("cancelled", 143)
    assert "flashpods logs" not in out


def test_status_logs_jobs_artifacts_kill(api: Api, client_env: dict[str, str]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flashpods"), *args],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    started = cli("run", "--detach", "--no-upload", "--", "echo one; echo two")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    waited = cli("status", job_id, "--wait", "--json")
    assert json.loads(waited.stdout)["status"] == "completed"
    assert _lines(cli("logs", job_id, "--tail", "1").stdout) == ["two"]
    assert _lines(cli("logs", job_id, "-f").stdout) == ["one", "two"]
    assert job_id in cli("jobs", "--status", "completed").stdout
    assert json.loads(cli("artifacts", job_id, "--json").stdout)["artifacts"] == []
    killed = cli("kill", job_id)
    assert killed.returncode == 1 and "409 job_already_terminal" in killed.stderr
    missing = cli("status", "job_0000000000000000")
    assert missing.returncode == 1 and "404 job_not_found" in missing.stderr
    assert cli("health").stdout.startswith("healthy")
