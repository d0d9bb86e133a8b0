"""The CLI against a scripted server: run's exit code, log, artifacts, Ctrl-C, --json."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from client_stub import Reply, Stub, error, log_piece, output_replies, query
from flashpods.client.cli import main
from flashpods.client.sdk import Flashpods, RetryEvent

JOB_ID = "job_0123456789abcdef"
JOB = f"/jobs/{JOB_ID}"


def _job(status: str, code: int | None = None) -> Reply:
    return Reply(
        200,
        {
            "id": JOB_ID,
            "type": "worker",
            "status": status,
            "exit_code": code,
            "error": None,
            "command": "x",
        },
    )


def _output(text: str) -> Reply:
    return Reply(
        200,
        {
            "output": text,
            "lines": text.count("\n"),
            "truncated": False,
            "total_bytes": len(text.encode()),
        },
    )


def _cli(
    stub: Stub, argv: list[str], sleep: Callable[[float], None] | None = None
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def make(hook: Callable[[RetryEvent], None]) -> Flashpods:
        client = stub.client()
        client.on_retry = hook
        if sleep is not None:
            client.sleep = sleep
        return client

    code = main(argv, make_client=make, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _script_job(stub: Stub) -> None:
    stub.script.on(
        "POST", "/jobs", Reply(201, {"job_id": JOB_ID, "status": "pending", "created": True})
    )
    stub.script.on("GET", JOB, _job("pending"), _job("failed", 3))
    stub.script.on(
        "GET",
        JOB + "/output",
        output_replies(
            _output("[10:00:00.000] one\n"),
            log_piece(b"[10:00:00.000] one\n"),
            log_piece(b"[10:00:01.000] two\n", complete=True),
        ),
    )
    stub.script.on(
        "GET",
        JOB + "/artifacts",
        Reply(
            200,
            {
                "artifacts": [{"name": "res/out.txt", "size_bytes": 5, "created_at": None}],
                "total_size_bytes": 5,
                "expires_at": None,
                "copy_in_progress": False,
            },
        ),
    )
    stub.script.on("GET", JOB + "/artifacts/res%2Fout.txt", Reply(200, b"hello"))


def test_run_follows_the_log_downloads_artifacts_and_exits_with_the_jobs_code(
    stub: Stub, tmp_path: Path
) -> None:
    _script_job(stub)
    code, out, err = _cli(
        stub,
        [
            "run",
            "--no-upload",
            "--cpus",
            "1",
            "--artifacts-dir",
            str(tmp_path),
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
    )
    assert code == 3
    assert out == "[10:00:00.000] one\n[10:00:01.000] two\n"
    follows = [query(s) for s in stub.script.requests("GET", JOB + "/output")]
    assert [(q["follow"], q["offset"]) for q in follows] == [("true", "0"), ("true", "19")]
    assert (tmp_path / JOB_ID / "res" / "out.txt").read_bytes() == b"hello"
    body = stub.script.requests("POST", "/jobs")[0].body
    assert (body["type"], body["command"], body["cpus"]) == ("worker", "sh -c 'exit 3'", 1)
    assert "files_id" not in body
    assert f"{JOB_ID} failed (exit 3)" in err


def test_ctrl_c_while_following_cancels_the_job(stub: Stub, tmp_path: Path) -> None:
    _script_job(stub)
    stub.script.on("GET", JOB, _job("running"), _job("cancelled", 137))
    # Told to wait before following: Ctrl-C arrives during that wait.
    stub.script.on("GET", JOB + "/output", output_replies(None, error(503, "too_many_followers")))
    stub.script.on(
        "DELETE",
        JOB,
        Reply(200, {"job_id": JOB_ID, "status": "cancelled", "message": "Job cancelled"}),
    )

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    code, _, err = _cli(
        stub,
        ["run", "--no-upload", "--artifacts-dir", str(tmp_path), "--", "sleep 100"],
        sleep=interrupt,
    )
    assert code == 130
    assert len(stub.script.requests("DELETE", JOB)) == 1
    assert f"{JOB_ID} cancelled" in err
    assert not (tmp_path / JOB_ID).exists()


def test_detach_starts_and_returns_without_following(stub: Stub) -> None:
    _script_job(stub)
    code, out, _ = _cli(stub, ["run", "--detach", "--no-upload", "--", "sleep 100"])
    assert (code, out) == (0, f"{JOB_ID}\n")
    assert stub.script.requests("GET", JOB) == []


def test_run_json_reports_job_output_and_artifacts(stub: Stub, tmp_path: Path) -> None:
    _script_job(stub)
    code, out, err = _cli(
        stub, ["run", "--json", "--no-upload", "--artifacts-dir", str(tmp_path), "--", "false"]
    )
    report = json.loads(out)
    assert code == 3 and report["exit_code"] == 3
    assert report["job"]["status"] == "failed"
    assert report["artifacts"] == [str((tmp_path / JOB_ID / "res" / "out.txt").resolve())]
    assert report["output"] == "[10:00:00.000] one\n"  # one read, once it ended
    assert err == ""


def test_status_json_and_errors(stub: Stub) -> None:
    stub.script.on("GET", JOB, _job("running"))
    code, out, _ = _cli(stub, ["status", JOB_ID, "--json"])
    assert code == 0 and json.loads(out)["status"] == "running"
    stub.script.on("GET", "/jobs/job_missing", error(404, "job_not_found"))
    code, out, err = _cli(stub, ["status", "job_missing"])
    assert (code, out) == (1, "")
    assert "404 job_not_found" in err
    code, out, _ = _cli(stub, ["--json", "status", "job_missing"])
    assert code == 1 and json.loads(out)["error"] == "job_not_found"


def test_a_flashpods_failure_in_run_exits_125(stub: Stub) -> None:
    stub.script.on("POST", "/jobs", error(400, "invalid_image"))
    code, _, err = _cli(stub, ["run", "--no-upload", "--image", "BAD IMAGE", "--", "true"])
    assert code == 125
    assert "400 invalid_image" in err


def test_logs_tail_and_follow(stub: Stub) -> None:
    stub.script.on("GET", JOB, _job("running"), _job("completed", 0))
    stub.script.on(
        "GET", JOB + "/output", output_replies(_output("a\n"), log_piece(b"b\n", complete=True))
    )
    code, out, _ = _cli(stub, ["logs", JOB_ID, "-f", "--tail", "5"])
    assert (code, out) == (0, "a\nb\n")
    tail, follow = [query(s) for s in stub.script.requests("GET", JOB + "/output")]
    assert tail == {"tail": "5"}
    assert (follow["follow"], follow["offset"]) == ("true", "2")  # after what was shown


def test_jobs_kill_artifacts_health(stub: Stub, tmp_path: Path) -> None:
    _script_job(stub)
    stub.script.on(
        "GET",
        "/jobs",
        Reply(
            200,
            {
                "jobs": [{"id": JOB_ID, "type": "worker", "status": "running", "command": "make"}],
                "total": 1,
            },
        ),
    )
    code, out, _ = _cli(stub, ["jobs", "--status", "running", "--limit", "5"])
    assert code == 0 and JOB_ID in out and "make" in out
    assert "status=running" in stub.script.requests("GET", "/jobs")[0].path
    stub.script.on("DELETE", JOB, Reply(200, {"job_id": JOB_ID, "status": "cancelled"}))
    assert _cli(stub, ["kill", JOB_ID])[:2] == (0, f"{JOB_ID} cancelled\n")
    code, out, _ = _cli(stub, ["artifacts", JOB_ID, "--download", "--dir", str(tmp_path)])
    assert code == 0 and out.strip().endswith("res/out.txt")
    stub.script.on(
        "GET", "/health", Reply(200, {"status": "healthy", "version": "0.1.0", "uptime_seconds": 5})
    )
    assert _cli(stub, ["health"])[:2] == (0, "healthy (version 0.1.0, up 5s)\n")


def test_agent_sends_task_branch_and_context_from_a_file(stub: Stub, tmp_path: Path) -> None:
    stub.script.on(
        "POST", "/jobs", Reply(201, {"job_id": JOB_ID, "status": "pending", "created": True})
    )
    context = tmp_path / "context.md"
    context.write_text("The tests live in tests/.\n")
    code, out, _ = _cli(
        stub,
        [
            "agent",
            "--no-upload",
            "--task",
            "Fix the flaky test",
            "--branch",
            "fix/flaky",
            "--context-file",
            str(context),
        ],
    )
    assert (code, out) == (0, f"{JOB_ID}\n")
    body = stub.script.requests("POST", "/jobs")[0].body
    assert (body["type"], body["task"], body["git_branch"], body["context"]) == (
        "agent",
        "Fix the flaky test",
        "fix/flaky",
        "The tests live in tests/.\n",
    )
    code, _, err = _cli(stub, ["agent", "--no-upload", "--branch", "b"])
    assert code == 125 and "missing_task" in err
    assert len(stub.script.requests("POST", "/jobs")) == 1


def test_logs_follow_waits_for_a_job_that_has_not_started(stub: Stub) -> None:
    stub.script.on("GET", JOB, _job("pending"), _job("completed", 0))
    stub.script.on(
        "GET",
        JOB + "/output",
        output_replies(error(404, "logs_not_available"), log_piece(b"x\n", complete=True)),
    )
    code, out, _ = _cli(stub, ["logs", JOB_ID, "-f"])
    assert (code, out) == (0, "x\n")
    follow = query(stub.script.requests("GET", JOB + "/output")[1])
    assert follow["offset"] == "0"  # all of it: it had not started
    stub.script.on("GET", "/jobs/job_missing/output", error(404, "job_not_found"))
    code, _, err = _cli(stub, ["logs", "job_missing", "-f"])
    assert code == 1 and "404 job_not_found" in err
