"""The agent entrypoint's handling of Claude Code, on the host (`--with-secrets`: the
token helper's part is integration/identity's), with a stand-in `claude` that records
how it was run and answers like the real CLI does (its JSON result line; real-CLI runs
are in integration/lab/test_lab_agent.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).parents[2] / "container" / "bin" / "flashpods-agent-entrypoint"

# What the real CLI 2.1.197 prints (trimmed) when its tool calls were refused for want of
# a permission flag: it still exits 0.
DENIED = {
    "type": "result",
    "is_error": False,
    "num_turns": 3,
    "result": "A tool call failed: Claude requested permissions to write to /work/x.",
    "permission_denials": [{"tool_name": "Write", "tool_use_id": "t1", "tool_input": {}}],
}
DONE = {**DENIED, "result": "Summary: all done.", "permission_denials": []}

STAND_IN = """#!/bin/sh
# Records argv, stdin and environment; then prints $RESULT and exits $CODE.
printf '%s\\n' "$@" > "$RECORD/argv"
if [ -p /dev/stdin ]; then echo pipe; else echo not-a-pipe; fi > "$RECORD/stdin"
env > "$RECORD/env"
echo "edited by the stand-in" > "$FLASHPODS_WORK_DIR/edited.txt"
printf '%s\\n' "$RESULT"
exit "$CODE"
"""


def run_entrypoint(
    tmp_path: Path, result: dict[str, object], code: int = 0, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    bindir, work, artifacts, record, home = (
        tmp_path / "bin",
        tmp_path / "work",
        tmp_path / "artifacts",
        tmp_path / "record",
        tmp_path / "home",
    )
    for d in (bindir, work, artifacts, record, home):
        d.mkdir()
    claude = bindir / "claude"
    claude.write_text(STAND_IN)
    claude.chmod(0o755)
    (work / "README").write_text("upload\n")
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "FLASHPODS_TASK": "do the thing",
        "FLASHPODS_JOB_ID": "job_test",
        "FLASHPODS_WORK_DIR": str(work),
        "FLASHPODS_ARTIFACTS_DIR": str(artifacts),
        "FLASHPODS_AGENT_COMMAND": str(claude),
        "RECORD": str(record),
        "RESULT": json.dumps(result),
        "CODE": str(code),
        **env,
    }
    proc = subprocess.run(
        ["sh", str(ENTRYPOINT), "--with-secrets"],
        env=full_env,
        stdin=subprocess.PIPE,  # the entrypoint must not hand its own stdin to the CLI
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc, record, artifacts


def test_claude_runs_non_interactively_against_the_deployments_model_service(
    tmp_path: Path,
) -> None:
    proc, record, artifacts = run_entrypoint(
        tmp_path,
        DONE,
        FLASHPODS_MODEL_BASE_URL="http://198.51.100.2:8000",
        FLASHPODS_MODEL_MAX_RETRIES="1",
        FLASHPODS_MODEL_TIMEOUT_MS="30000",
        ANTHROPIC_BASE_URL="http://caller.example",  # whatever else is around is replaced
    )
    assert proc.returncode == 0, proc.stderr
    argv = (record / "argv").read_text().splitlines()
    assert argv[:4] == ["--dangerously-skip-permissions", "--output-format", "json", "-p"]
    assert argv[4] == "do the thing"
    assert (record / "stdin").read_text() == "not-a-pipe\n"
    env = dict(line.split("=", 1) for line in (record / "env").read_text().splitlines())
    assert env["ANTHROPIC_BASE_URL"] == "http://198.51.100.2:8000"
    assert (env["CLAUDE_CODE_MAX_RETRIES"], env["API_TIMEOUT_MS"]) == ("1", "30000")
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    summary = (artifacts / "summary.md").read_text()
    assert "## The agent's summary\n\nSummary: all done." in summary
    assert '"type": "result"' in proc.stdout  # the CLI's result stays in the job's log
    assert "+edited by the stand-in" in (artifacts / "changes.patch").read_text()


def test_refused_tool_calls_fail_the_job_although_the_cli_exits_0(tmp_path: Path) -> None:
    proc, _, artifacts = run_entrypoint(tmp_path, DENIED)
    assert proc.returncode == 74, proc.stderr
    assert "the agent's tool calls were refused permission: Write" in proc.stderr
    assert proc.stderr.rstrip().endswith("flashpods-failure: agent_permission_denied")
    assert (artifacts / "summary.md").exists() and (artifacts / "changes.patch").exists()


@pytest.mark.parametrize("code", [1, 3])
def test_a_failing_cli_fails_the_job_with_its_code_and_its_message(
    tmp_path: Path, code: int
) -> None:
    failed = {**DONE, "is_error": True, "result": "Invalid API key · Fix external API key"}
    proc, _, _ = run_entrypoint(tmp_path, failed, code=code)
    assert proc.returncode == code
    assert (
        f"flashpods-agent: the agent failed (exit {code}): Invalid API key · Fix external API key"
        in proc.stderr
    )
    assert proc.stderr.rstrip().endswith("flashpods-failure: agent_failed")


def test_unset_model_settings_leave_the_clis_defaults(tmp_path: Path) -> None:
    proc, record, _ = run_entrypoint(tmp_path, DONE, FLASHPODS_MODEL_BASE_URL="")
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in (record / "env").read_text().splitlines())
    assert "ANTHROPIC_BASE_URL" not in env and "CLAUDE_CODE_MAX_RETRIES" not in env


def test_git_and_cli_files_stay_out_of_work_even_when_home_is_work(tmp_path: Path) -> None:
    # podman sets HOME to the working directory for a uid without a passwd entry.
    proc, record, artifacts = run_entrypoint(tmp_path, DONE, HOME=str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in (record / "env").read_text().splitlines())
    assert not env["HOME"].startswith(str(tmp_path / "work"))
    assert not (tmp_path / "work" / ".gitconfig").exists()
    assert ".gitconfig" not in (artifacts / "changes.patch").read_text()


def test_the_upload_is_copied_into_work_and_never_changed(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    (upload / "src").mkdir(parents=True)
    (upload / "src" / "main.py").write_text("print(1)\n")
    (upload / "run.sh").write_text("#!/bin/sh\n")
    (upload / "run.sh").chmod(0o755)
    os.symlink("src/main.py", upload / "link")

    def state() -> dict[Path, tuple[int, ...]]:  # all but the access time
        return {
            p: (s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_nlink)
            for p in upload.rglob("*")
            for s in [p.stat(follow_symlinks=False)]
        }

    before = state()
    proc, _, artifacts = run_entrypoint(tmp_path, DONE, FLASHPODS_UPLOAD_DIR=str(upload))
    assert proc.returncode == 0, proc.stderr
    work = tmp_path / "work"
    assert (work / "src" / "main.py").read_text() == "print(1)\n"
    assert (work / "run.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(work / "link") == "src/main.py"
    assert (work / "edited.txt").exists()  # the stand-in agent wrote into /work ...
    assert not (upload / "edited.txt").exists()  # ... and the upload saw none of it
    assert state() == before
    patch = (artifacts / "changes.patch").read_text()
    assert "+edited by the stand-in" in patch and "main.py" not in patch


def test_an_upload_larger_than_work_fails_setup(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "big.bin").write_bytes(b"x" * (256 << 10))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        proc, record, _ = run_entrypoint(
            tmp_path, DONE, FLASHPODS_UPLOAD_DIR=str(upload), FLASHPODS_WORK_DIR=str(small)
        )
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert proc.returncode == 72, proc.stderr
    assert "cannot copy the upload into" in proc.stderr
    assert proc.stderr.rstrip().endswith("flashpods-failure: agent_setup_failed")
    assert not (record / "argv").exists()  # the agent never ran
