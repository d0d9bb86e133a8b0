"""The real agent end to end: `spawn_sub_agent` through the MCP server (stdio, in the
laptop namespace) on an uploaded git repository; SPIRE attests the container, the token
exchange gives both secrets, the real Claude Code CLI (in the job image) talks to the
lab's scripted model service and edits /work with its own tools; the entrypoint commits
and pushes the branch to the repository's origin on the lab's git server.

And the agent failing for real: a key the model service refuses, the model service down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from flashpods.client.bases import UploadBases
from flashpods.client.upload import AGENT_EXCLUDES
from flashpods.lab import lab
from flashpods.lab.demo import AGENT_BRANCH, git, sample_repository
from flashpods.lab.model_endpoint import NOTES_NAME, NOTES_TEXT, SUMMARY
from flashpods.lab.proc import in_netns
from flashpods.lab.topology import LOG_DIR, Topology
from flashpods_testing.trees import tree_record
from lab_helpers import Laptop, run_demo, secrets_file
from mcp import ClientSession, StdioServerParameters, stdio_client

BRANCH = "agent/notes"


def mcp_session(topo: Topology, downloads: Path, calls: list[tuple[str, dict[str, Any]]]) -> Any:
    """Run `flashpods-mcp` in the laptop namespace and make the calls in order; a call
    named "wait" follows the spawned job's log until it has ended, then gets its status."""
    mcp = shutil.which("flashpods-mcp", path=str(Path(sys.executable).parent))
    assert mcp is not None
    argv = in_netns(topo.laptop_ns, [mcp])
    params = StdioServerParameters(
        command=argv[0],
        args=argv[1:],
        env={**os.environ, **lab.laptop_env(), "FLASHPODS_DOWNLOAD_DIR": str(downloads)},
        cwd=str(downloads),
    )

    async def session_run() -> list[Any]:
        answers: list[Any] = []
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()

            async def call(name: str, args: dict[str, Any]) -> Any:
                result = await session.call_tool(name, args)
                body = json.loads(result.content[0].text)
                assert not result.is_error, (name, body)
                return body

            job_id = ""
            for name, args in calls:
                if name == "wait":
                    # Pushed: each call returns once the job has ended and its whole log
                    # is read (or 1 MiB later); no output for 240 s is a hung job.
                    piece = {"next_offset": 0, "complete": False}
                    while not piece["complete"]:
                        where = {"job_id": job_id, "offset": piece["next_offset"]}
                        piece = await call("follow_job_output", {**where, "wait_seconds": 240})
                        assert piece["complete"] or piece["output"], piece
                    answers.append(await call("get_job_status", {"job_id": job_id}))
                    continue
                answer = await call(name, {"job_id": job_id, **args} if job_id else args)
                job_id = job_id or answer.get("job_id", "")
                answers.append(answer)
        return answers

    return anyio.run(session_run)


def agent_grants() -> int:
    """Exchanges the token service's audit log shows granting an agent both secrets."""
    log = (LOG_DIR / "flashpods-token-service.log").read_text(errors="replace")
    granted = re.compile(
        r"exchange granted spiffe_id=spiffe://flashpods\.local/agent "
        r"secrets=(ANTHROPIC_API_KEY,GITHUB_TOKEN|GITHUB_TOKEN,ANTHROPIC_API_KEY) "
    )
    return len(granted.findall(log))


def test_sub_agent_edits_work_with_the_real_cli_and_pushes_its_branch(
    lab_up: lab.UpReport, topo: Topology, values: dict[str, Any], tmp_path: Path
) -> None:
    project, bare = sample_repository(tmp_path, topo)
    base = git("rev-parse", "HEAD", cwd=project).strip()
    grants_before = agent_grants()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    _, status, output, artifacts, summary, patch = mcp_session(
        topo,
        downloads,
        [
            (
                "spawn_sub_agent",
                {
                    "task": "Write down notes about this project and count their lines.",
                    "git_branch": BRANCH,
                    "files": str(project),
                    "timeout_minutes": 5,
                },
            ),
            ("wait", {}),
            ("get_job_output", {"tail": 500}),
            ("get_job_artifacts", {}),
            ("download_artifact", {"artifact_name": "summary.md"}),
            ("download_artifact", {"artifact_name": "changes.patch"}),
        ],
    )
    log = output["output"]
    assert (status["status"], status["exit_code"]) == ("completed", 0), log
    assert sorted(a["name"] for a in artifacts["artifacts"]) == ["changes.patch", "summary.md"]

    # The real CLI ran: its JSON result (three model turns) is in the job's log.
    result = next(
        json.loads(line.split("] ", 1)[1]) for line in log.splitlines() if '"type":"result"' in line
    )
    assert (result["is_error"], result["num_turns"], result["result"]) == (False, 3, SUMMARY)
    assert result["permission_denials"] == []
    # SPIRE attested the container as the agent, and the token service gave it both secrets.
    assert agent_grants() > grants_before

    # The branch was pushed to the repository's origin, on top of the uploaded history,
    # with what the CLI's Write and Bash tools did in /work.
    assert git("--git-dir", str(bare), "rev-parse", f"{BRANCH}^").strip() == base
    assert git("--git-dir", str(bare), "show", f"{BRANCH}:{NOTES_NAME}") == NOTES_TEXT
    lines = git("--git-dir", str(bare), "show", f"{BRANCH}:AGENT_NOTES.lines")
    assert lines.strip() == str(NOTES_TEXT.count("\n"))
    subject = git("--git-dir", str(bare), "log", "-1", "--format=%s", BRANCH)
    assert subject.startswith("flashpods: Write down notes")

    summary_text = Path(summary["path"]).read_text()
    patch_text = Path(patch["path"]).read_text()
    assert f"pushed to origin/{BRANCH}" in summary_text and SUMMARY in summary_text
    assert f"+{NOTES_TEXT.splitlines()[-1]}" in patch_text
    assert f"b/{NOTES_NAME}" in patch_text and "b/AGENT_NOTES.lines" in patch_text

    # The model service answered only the key the token service handed out (it refuses
    # any other), and no secret leaked.
    secrets = secrets_file(values)
    for text in (log, summary_text, patch_text):
        assert secrets["anthropic_api_key"] not in text and secrets["github_token"] not in text


def test_an_agent_changes_nothing_of_its_snapshot_which_the_next_upload_starts_from(
    laptop: Laptop, topo: Topology, values: dict[str, Any], tmp_path: Path
) -> None:
    """The agent commits and pushes in its /work, a copy: its snapshot, kept after the job
    as the folder's next base, is unchanged to the byte and the inode, and the next
    upload of the same folder starts from it and sends no file data."""
    project, bare = sample_repository(tmp_path, topo)
    snapshots = Path(values["apiEnvironment"]["FLASHPODS_UPLOADS_PATH"]).parent / "snapshots"
    bases = UploadBases(tmp_path / "cache")

    def upload() -> Any:
        with laptop.client(upload_bases=bases) as fp:
            return fp.upload(project, excludes=AGENT_EXCLUDES)

    first = laptop.call(upload)
    before = tree_record(snapshots / first.upload_id, atimes=False)

    def run_agent() -> Any:
        with laptop.client() as fp:
            created = fp.create_agent("Write notes.", BRANCH, files_id=first.upload_id)
            return fp.wait(created.job_id, timeout=240)

    job = laptop.call(run_agent)
    assert job.status == "completed", job
    assert git("--git-dir", str(bare), "rev-parse", "--verify", BRANCH)  # it did push
    assert tree_record(snapshots / first.upload_id, atimes=False) == before
    second = laptop.call(upload)
    assert second.base_upload_id == first.upload_id
    assert second.transfer is not None and second.transfer.literal_bytes == 0, second.transfer


@pytest.fixture
def rotated_api_key(values: dict[str, Any]) -> Iterator[None]:
    """The token service hands out an Anthropic key the model service does not know."""
    path = Path(values["tokenServiceEnvironment"]["FLASHPODS_SECRETS_FILE"])
    original = path.read_text()
    data = json.loads(original)
    data["anthropic_api_key"] = "sk-ant-lab-rotated-" + "x" * 40
    path.write_text(json.dumps(data))
    try:
        yield
    finally:
        path.write_text(original)


@pytest.fixture
def model_service_down() -> Iterator[None]:
    lab.control({"cmd": "stop", "unit": "internet-model"})
    try:
        yield
    finally:
        lab.control({"cmd": "start", "unit": "internet-model"})


def _failed_agent(laptop: Laptop, tmp_path: Path, topo: Topology) -> tuple[Any, str]:
    project, _ = sample_repository(tmp_path, topo)

    def flow() -> tuple[Any, str]:
        with laptop.client() as fp:
            upload = fp.upload(project)
            created = fp.create_agent(
                "Write notes.", BRANCH, files_id=upload.upload_id, timeout_minutes=3
            )
            job = fp.wait(created.job_id, timeout=240)
            return job, fp.get_output(created.job_id, tail=500).output

    return laptop.call(flow)


@pytest.mark.usefixtures("rotated_api_key")
def test_a_key_the_model_service_refuses_fails_the_job_with_the_agents_code(
    laptop: Laptop, topo: Topology, tmp_path: Path
) -> None:
    job, log = _failed_agent(laptop, tmp_path, topo)
    assert (job.status, job.exit_code) == ("failed", 1), log
    assert "flashpods-agent: the agent failed (exit 1): Invalid API key" in log
    assert "flashpods-failure: agent_failed" in log
    assert "refused a request" in (LOG_DIR / "internet-model.log").read_text()


@pytest.mark.usefixtures("model_service_down")
def test_the_model_service_down_fails_the_job_before_its_timeout(
    laptop: Laptop, topo: Topology, tmp_path: Path
) -> None:
    job, log = _failed_agent(laptop, tmp_path, topo)
    # failed (the agent's own exit code), not timed_out: nothing hung.
    assert (job.status, job.exit_code) == ("failed", 1), log
    assert "flashpods-agent: the agent failed (exit 1): API Error: Unable to connect" in log
    assert "flashpods-failure: agent_failed" in log


def test_demo_agent_prints_the_pushed_commit(lab_up: lab.UpReport, tmp_path: Path) -> None:
    out = run_demo(tmp_path, "--agent").stdout
    pushed = out.split("\npushed commit: ", 1)[1]
    assert pushed.startswith(f"{AGENT_BRANCH} of demo-")
    assert "commit " in pushed and f"{NOTES_NAME} " in pushed  # git log -1 --stat
    assert SUMMARY in out  # summary.md, printed
    (summary,) = (tmp_path / "flashpods-artifacts").glob("job_*/summary.md")
    assert f"pushed to origin/{AGENT_BRANCH}" in summary.read_text()
