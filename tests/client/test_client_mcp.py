"""The MCP server's tools, in-process (mcp.Client) against the scripted server: schemas
and limits, results, errors carrying the API's code, save_to confinement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from client_stub import Reply, Stub, error, log_piece, output_replies, query
from flashpods.api import http, logs, validation
from flashpods.api.http import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from flashpods.client.mcp_server import FlashpodsTools, build_server
from flashpods.common.limits import MAX_FOLLOW_SECONDS
from mcp import Client

JOB_ID = "job_0123456789abcdef"
JOB = f"/jobs/{JOB_ID}"
TOOLS = {
    "spawn_worker",
    "spawn_sub_agent",
    "get_job_status",
    "get_job_output",
    "follow_job_output",
    "get_job_artifacts",
    "download_artifact",
    "list_jobs",
    "kill_job",
}


def _calls(stub: Stub, root: Path, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    server = build_server(FlashpodsTools(stub.client, root))

    async def go() -> list[Any]:
        async with Client(server) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return anyio.run(go)


def test_the_nine_tools_with_their_limits(stub: Stub, tmp_path: Path) -> None:
    server = build_server(FlashpodsTools(stub.client, tmp_path))

    async def go() -> dict[str, Any]:
        async with Client(server) as client:
            return {t.name: t.input_schema for t in (await client.list_tools()).tools}

    schemas = anyio.run(go)
    assert set(schemas) == TOOLS
    assert schemas["spawn_worker"]["required"] == ["command"]
    assert sorted(schemas["spawn_sub_agent"]["required"]) == ["git_branch", "task"]
    # The tools advertise what the API validates: its own limits, not copies.
    for tool, job_type, text in (
        ("spawn_worker", "worker", "command"),
        ("spawn_sub_agent", "agent", "task"),
    ):
        props = schemas[tool]["properties"]
        limits = validation.LIMITS[job_type]
        assert props[text]["minLength"] == 1
        assert props["cpus"]["anyOf"][0]["maximum"] == limits.max_cpus
        assert props["memory_gb"]["anyOf"][0]["maximum"] == limits.max_memory_gb
        assert props["timeout_minutes"]["anyOf"][0]["maximum"] == limits.max_timeout
    worker, agent = schemas["spawn_worker"]["properties"], schemas["spawn_sub_agent"]["properties"]
    assert worker["command"]["maxLength"] == validation.MAX_COMMAND
    assert worker["image"]["anyOf"][0]["maxLength"] == validation.MAX_IMAGE
    assert agent["task"]["maxLength"] == validation.MAX_TASK
    assert agent["context"]["anyOf"][0]["maxLength"] == validation.MAX_CONTEXT
    assert agent["git_branch"]["maxLength"] == validation.MAX_BRANCH
    assert schemas["get_job_output"]["properties"]["tail"]["maximum"] == logs.MAX_TAIL
    list_limit = schemas["list_jobs"]["properties"]["limit"]
    assert (list_limit["maximum"], list_limit["default"]) == (MAX_LIST_LIMIT, DEFAULT_LIST_LIMIT)
    follow = schemas["follow_job_output"]["properties"]
    assert (follow["offset"]["minimum"], follow["wait_seconds"]["maximum"]) == (
        0,
        MAX_FOLLOW_SECONDS,
    )
    # The API's own state names: GET /jobs?status= accepts exactly these.
    assert tuple(schemas["list_jobs"]["properties"]["status"]["enum"]) == http.STATUS_FILTERS
    assert schemas["download_artifact"]["required"] == ["job_id", "artifact_name"]


def test_results_are_the_apis_json(stub: Stub, tmp_path: Path) -> None:
    stub.script.on(
        "POST", "/jobs", Reply(201, {"job_id": JOB_ID, "status": "pending", "created": True})
    )
    stub.script.on("GET", JOB, Reply(200, {"id": JOB_ID, "type": "worker", "status": "running"}))
    spawned, status = _calls(
        stub,
        tmp_path,
        ("spawn_worker", {"command": "make", "cpus": 2}),
        ("get_job_status", {"job_id": JOB_ID}),
    )
    assert not spawned.is_error
    assert spawned.structured_content == {
        "job_id": JOB_ID,
        "status": "pending",
        "created": True,
        "files_id": None,
    }
    assert json.loads(spawned.content[0].text) == spawned.structured_content
    assert status.structured_content["status"] == "running"
    assert stub.script.requests("POST", "/jobs")[0].body["cpus"] == 2


def test_errors_carry_the_apis_code_after_retrying_throttled_answers(
    stub: Stub, tmp_path: Path
) -> None:
    stub.script.on("POST", "/jobs", error(429, "insufficient_resources"))
    stub.script.on("DELETE", JOB, error(409, "job_already_terminal"))
    spawned, killed = _calls(
        stub, tmp_path, ("spawn_worker", {"command": "make"}), ("kill_job", {"job_id": JOB_ID})
    )
    assert spawned.is_error
    assert spawned.structured_content["error"] == "insufficient_resources"
    assert spawned.structured_content["status"] == 429
    assert len(stub.script.requests("POST", "/jobs")) == 5  # retried before reporting
    assert killed.is_error and killed.structured_content["error"] == "job_already_terminal"
    assert len(stub.script.requests("DELETE", JOB)) == 1


def test_arguments_outside_the_limits_never_reach_the_api(stub: Stub, tmp_path: Path) -> None:
    results = _calls(
        stub,
        tmp_path,
        ("spawn_worker", {"command": ""}),
        ("spawn_worker", {"command": "x", "timeout_minutes": 121}),
        ("get_job_output", {"job_id": JOB_ID, "tail": 0}),
        ("follow_job_output", {"job_id": JOB_ID, "offset": -1}),
        ("follow_job_output", {"job_id": JOB_ID, "wait_seconds": 301}),
        ("get_job_status", {"job_id": "../../etc"}),
    )
    assert all(r.is_error for r in results)
    assert stub.script.seen == []


def test_follow_job_output_returns_what_arrived_and_where_to_go_on(
    stub: Stub, tmp_path: Path
) -> None:
    stub.script.on(
        "GET",
        JOB + "/output",
        output_replies(None, log_piece(b"[10:00:00.000] hi\n", complete=True)),
    )
    (result,) = _calls(
        stub, tmp_path, ("follow_job_output", {"job_id": JOB_ID, "offset": 7, "wait_seconds": 5})
    )
    assert result.structured_content == {
        "output": "[10:00:00.000] hi\n",
        "offset": 7,
        "next_offset": 7 + 18,
        "complete": True,
    }
    sent = query(stub.script.requests("GET", JOB + "/output")[0])
    assert (sent["follow"], sent["offset"], sent["timeout"]) == ("true", "7", "5")


@pytest.mark.parametrize(
    "save_to", ["../escape.txt", "/etc/flashpods-test", "a/../../x", "sub/./x"]
)
def test_save_to_outside_the_download_directory_is_refused(
    stub: Stub, tmp_path: Path, save_to: str
) -> None:
    stub.script.on("GET", JOB + "/artifacts/out.txt", Reply(200, b"data"))
    root = tmp_path / "dl"
    (result,) = _calls(
        stub,
        root,
        ("download_artifact", {"job_id": JOB_ID, "artifact_name": "out.txt", "save_to": save_to}),
    )
    assert result.is_error and result.structured_content["error"] == "invalid_artifact_path"
    assert stub.script.seen == []
    assert not Path("/etc/flashpods-test").exists() and not (tmp_path / "escape.txt").exists()


def test_download_artifact_saves_under_the_download_directory(stub: Stub, tmp_path: Path) -> None:
    stub.script.on("GET", JOB + "/artifacts/out.txt", Reply(200, b"data"))
    root = tmp_path / "dl"
    default, chosen, absolute = _calls(
        stub,
        root,
        ("download_artifact", {"job_id": JOB_ID, "artifact_name": "out.txt"}),
        ("download_artifact", {"job_id": JOB_ID, "artifact_name": "out.txt", "save_to": "k/o.txt"}),
        (
            "download_artifact",
            {"job_id": JOB_ID, "artifact_name": "out.txt", "save_to": str(root / "abs.txt")},
        ),
    )
    assert default.structured_content["path"] == str(root.resolve() / JOB_ID / "out.txt")
    assert chosen.structured_content["path"] == str(root.resolve() / "k" / "o.txt")
    assert absolute.structured_content["path"] == str(root.resolve() / "abs.txt")
    assert (root / "k" / "o.txt").read_bytes() == b"data"
    assert default.structured_content["size_bytes"] == 4


def test_a_sub_agents_upload_keeps_its_repository_a_workers_does_not(tmp_path: Path) -> None:
    uploads: list[tuple[Path, tuple[str, ...]]] = []

    class Recorder:
        def upload(self, source: Path, *, excludes: tuple[str, ...]) -> Any:
            uploads.append((source, tuple(excludes)))
            return type("U", (), {"upload_id": "upload_x"})()

        def create_agent(self, *args: Any, **kwargs: Any) -> Any:
            return type("C", (), {"raw": {"job_id": JOB_ID}})()

        create_worker = create_agent

    tools = FlashpodsTools(Recorder, tmp_path)  # type: ignore[arg-type]
    tools.spawn_sub_agent("task", "branch", files=str(tmp_path))
    tools.spawn_worker("true", files=str(tmp_path))
    (_, agent), (_, worker) = uploads
    assert ".git" not in agent and "node_modules" in agent
    assert ".git" in worker and "node_modules" in worker
