"""`flashpods-mcp` over stdio, driven by the mcp SDK's own client (stdio_client +
ClientSession), against the real API and podman."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from client_stack import BIN, Api
from mcp import ClientSession, StdioServerParameters, stdio_client

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


def test_an_agent_spawns_polls_reads_and_downloads(
    api: Api, client_env: dict[str, str], project: Path, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    params = StdioServerParameters(
        command=str(BIN / "flashpods-mcp"),
        env={**client_env, "FLASHPODS_DOWNLOAD_DIR": str(downloads)},
        cwd=str(tmp_path),
    )

    async def session_run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            seen["tools"] = {t.name for t in (await session.list_tools()).tools}

            async def call(name: str, args: dict[str, Any]) -> Any:
                result = await session.call_tool(name, args)
                body = json.loads(result.content[0].text)
                return (result.is_error, body)

            error, spawned = await call(
                "spawn_worker",
                {
                    "command": "cat /work/src/data.txt; echo done > /artifacts/report.txt; exit 3",
                    "files": str(project),
                    "cpus": 1,
                    "memory_gb": 1,
                    "timeout_minutes": 5,
                },
            )
            assert not error, spawned
            seen["spawned"] = spawned
            job_id = spawned["job_id"]
            # Followed while it runs: the call returns once the job has ended (complete).
            seen["live"] = await call(
                "follow_job_output", {"job_id": job_id, "offset": 0, "wait_seconds": 60}
            )
            error, status = await call("get_job_status", {"job_id": job_id})
            assert not error, status
            seen["status"] = status
            seen["output"] = await call("get_job_output", {"job_id": job_id, "tail": 10})
            seen["followed"] = await call(
                "follow_job_output", {"job_id": job_id, "offset": 0, "wait_seconds": 5}
            )
            seen["artifacts"] = await call("get_job_artifacts", {"job_id": job_id})
            seen["download"] = await call(
                "download_artifact", {"job_id": job_id, "artifact_name": "report.txt"}
            )
            seen["escape_save_to"] = await call(
                "download_artifact",
                {
                    "job_id": job_id,
                    "artifact_name": "report.txt",
                    "save_to": str(tmp_path / "outside.txt"),
                },
            )
            seen["escape_name"] = await call(
                "download_artifact", {"job_id": job_id, "artifact_name": "../../outside.txt"}
            )
            seen["missing"] = await call("get_job_status", {"job_id": "job_0000000000000000"})
            seen["kill_ended"] = await call("kill_job", {"job_id": job_id})
            seen["list"] = await call("list_jobs", {"status": "failed", "limit": 5})
        return seen

    seen = anyio.run(session_run)
    assert seen["tools"] == TOOLS
    job_id = seen["spawned"]["job_id"]
    assert seen["spawned"]["files_id"].startswith("upload_")
    assert (seen["status"]["status"], seen["status"]["exit_code"]) == ("failed", 3)
    error, output = seen["output"]
    assert not error and output["output"].endswith("hello from the laptop\n")
    for key in ("live", "followed"):  # followed while it ran, and after its end
        error, followed = seen[key]
        assert not error and followed["complete"] is True, followed
        assert followed["output"].endswith("hello from the laptop\n")
        assert followed["next_offset"] == len(followed["output"].encode())
    error, artifacts = seen["artifacts"]
    assert [a["name"] for a in artifacts["artifacts"]] == ["report.txt"]
    error, download = seen["download"]
    assert not error and download["path"] == str(downloads / job_id / "report.txt")
    assert (downloads / job_id / "report.txt").read_text() == "done\n"
    for key in ("escape_save_to", "escape_name"):
        error, body = seen[key]
        assert error and body["error"] == "invalid_artifact_path", body
    assert not (tmp_path / "outside.txt").exists()
    assert sorted(p.name for p in downloads.rglob("*")) == [job_id, "report.txt"]
    error, body = seen["missing"]
    assert error and (body["error"], body["status"]) == ("job_not_found", 404)
    assert body["details"] == {"job_id": "job_0000000000000000"} and body["request_id"]
    error, body = seen["kill_ended"]
    assert error and (body["error"], body["status"]) == ("job_already_terminal", 409)
    error, listing = seen["list"]
    assert not error and job_id in [j["id"] for j in listing["jobs"]]
