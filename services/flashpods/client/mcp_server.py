"""`flashpods-mcp` — the MCP server (stdio) through which an agent uses Flashpods.

The server holds the API token; the agent only sees job ids, outputs and files.
Every tool answers JSON (text content plus the same object as structured content).
Failures are tool errors whose JSON carries the API's code and HTTP status; throttled
answers (insufficient_resources, rate_limited, service_unavailable: 429/503) were
already retried by the SDK with backoff before an error is reported.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from flashpods.client import paths
from flashpods.client.config import DEFAULT_DOWNLOAD_DIR, load_config
from flashpods.client.errors import FlashpodsError
from flashpods.client.sdk import Flashpods
from flashpods.client.upload import AGENT_EXCLUDES, DEFAULT_EXCLUDES
from flashpods.common.jobstates import StatusFilter
from flashpods.common.limits import (
    DEFAULT_LIST_LIMIT,
    LIMITS,
    MAX_BRANCH,
    MAX_COMMAND,
    MAX_CONTEXT,
    MAX_FOLLOW_SECONDS,
    MAX_IMAGE,
    MAX_LIST_LIMIT,
    MAX_TAIL,
    MAX_TASK,
)
from flashpods.common.logsetup import configure_logging

log = logging.getLogger("flashpods.mcp")

JobId = Annotated[
    str,
    Field(pattern=r"^job_[A-Za-z0-9_-]{1,100}$", description="A job id, e.g. job_3f2a…"),
]
Files = Annotated[
    str | None,
    Field(
        description="Local directory to upload as the job's /work (relative paths are "
        "relative to this server's working directory). node_modules, target, __pycache__ "
        "and .venv are left out, and .git too except for sub-agents (they push a branch "
        "to the repository's origin).",
    ),
]
Image = Annotated[
    str | None,
    Field(max_length=MAX_IMAGE, description="Container image, [registry/]name[:tag][@digest]"),
]
WORKER, AGENT = LIMITS["worker"], LIMITS["agent"]
WorkerTimeout = Annotated[
    int | None,
    Field(
        ge=1,
        le=WORKER.max_timeout,
        description=f"Minutes before it is killed (default {WORKER.default_timeout})",
    ),
]
AgentTimeout = Annotated[
    int | None,
    Field(
        ge=1,
        le=AGENT.max_timeout,
        description=f"Minutes before it is killed (default {AGENT.default_timeout})",
    ),
]


@dataclass
class FlashpodsTools:
    """The tools' behaviour, independent of MCP plumbing (so tests can call it directly)."""

    make_client: Callable[[], Flashpods]
    download_root: Path
    _client: Flashpods | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def client(self) -> Flashpods:
        # Created on first use, so a missing token is reported to the agent as a
        # tool error (missing_token) instead of a server that never starts.
        with self._lock:
            if self._client is None:
                self._client = self.make_client()
            return self._client

    def _upload(self, files: str | None, excludes: Sequence[str]) -> str | None:
        if files is None:
            return None
        return self.client().upload(Path(files).expanduser(), excludes=excludes).upload_id

    def spawn_worker(
        self,
        command: str,
        files: str | None = None,
        image: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        timeout_minutes: int | None = None,
        disk_gb: int | None = None,
    ) -> dict[str, Any]:
        files_id = self._upload(files, DEFAULT_EXCLUDES)
        created = self.client().create_worker(
            command,
            files_id=files_id,
            image=image,
            cpus=cpus,
            memory_gb=memory_gb,
            disk_gb=disk_gb,
            timeout_minutes=timeout_minutes,
        )
        return {**created.raw, "files_id": files_id}

    def spawn_sub_agent(
        self,
        task: str,
        git_branch: str,
        files: str | None = None,
        context: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        timeout_minutes: int | None = None,
        disk_gb: int | None = None,
    ) -> dict[str, Any]:
        files_id = self._upload(files, AGENT_EXCLUDES)
        created = self.client().create_agent(
            task,
            git_branch,
            context=context,
            files_id=files_id,
            cpus=cpus,
            memory_gb=memory_gb,
            disk_gb=disk_gb,
            timeout_minutes=timeout_minutes,
        )
        return {**created.raw, "files_id": files_id}

    def get_job_status(self, job_id: str) -> dict[str, Any]:
        return self.client().get_job(job_id).raw

    def get_job_output(self, job_id: str, tail: int = 100) -> dict[str, Any]:
        return self.client().get_output(job_id, tail=tail).raw

    def follow_job_output(
        self, job_id: str, offset: int = 0, wait_seconds: int = 30
    ) -> dict[str, Any]:
        return self.client().read_output(job_id, offset, wait_seconds=wait_seconds).to_dict()

    def get_job_artifacts(self, job_id: str) -> dict[str, Any]:
        return self.client().list_artifacts(job_id).raw

    def download_artifact(
        self, job_id: str, artifact_name: str, save_to: str | None = None
    ) -> dict[str, Any]:
        paths.check_artifact_name(artifact_name)
        relative = (
            paths.save_to_relative(self.download_root, save_to)
            if save_to is not None
            else f"{job_id}/{artifact_name}"
        )
        saved = self.client().download_artifact(
            job_id, artifact_name, self.download_root, save_as=relative
        )
        return {
            "job_id": job_id,
            "artifact_name": artifact_name,
            "path": str(saved),
            "size_bytes": saved.stat().st_size,
        }

    def list_jobs(self, status: str = "all", limit: int = 20) -> dict[str, Any]:
        return self.client().list_jobs(status, limit).raw

    def kill_job(self, job_id: str) -> dict[str, Any]:
        return self.client().kill(job_id).raw


def _answer(call: Callable[[], dict[str, Any]]) -> CallToolResult:
    try:
        data = call()
    except FlashpodsError as exc:
        body = exc.to_dict()
        return CallToolResult(
            content=[TextContent(type="text", text=json.dumps(body))],
            structured_content=body,
            is_error=True,
        )
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data))], structured_content=data
    )


def build_server(tools: FlashpodsTools) -> MCPServer:
    server: MCPServer = MCPServer(
        name="flashpods",
        instructions=(
            "Flashpods runs commands and sub-agents in ephemeral containers on a remote "
            "host. spawn_worker/spawn_sub_agent return a job_id at once; watch it with "
            "follow_job_output (returns new output as it arrives, complete=true once the "
            "job has ended) or get_job_status, read get_job_output, and fetch files with "
            "get_job_artifacts and download_artifact. Files a job writes to /artifacts "
            "are kept for 1 hour."
        ),
    )

    @server.tool()
    def spawn_worker(
        command: Annotated[
            str, Field(min_length=1, max_length=MAX_COMMAND, description="Run with /bin/sh -c")
        ],
        files: Files = None,
        image: Image = None,
        cpus: Annotated[
            int | None,
            Field(ge=1, le=WORKER.max_cpus, description=f"CPUs (default {WORKER.default_cpus})"),
        ] = None,
        memory_gb: Annotated[
            int | None,
            Field(
                ge=1,
                le=WORKER.max_memory_gb,
                description=f"Memory in GB (default {WORKER.default_memory_gb})",
            ),
        ] = None,
        timeout_minutes: WorkerTimeout = None,
        disk_gb: Annotated[
            int | None,
            Field(
                ge=1,
                le=WORKER.max_disk_gb,
                description="Size of /tmp in GB, part of the memory "
                f"(default {WORKER.default_disk_gb}); writes past it fail with ENOSPC",
            ),
        ] = None,
    ) -> CallToolResult:
        """Start a worker job: a shell command in a fresh container, with `files`
        uploaded read-only at /work. Returns its job_id at once; whatever it writes to
        /artifacts can be downloaded after it ends."""
        return _answer(
            lambda: tools.spawn_worker(
                command, files, image, cpus, memory_gb, timeout_minutes, disk_gb
            )
        )

    @server.tool()
    def spawn_sub_agent(
        task: Annotated[str, Field(min_length=1, max_length=MAX_TASK, description="What to do")],
        git_branch: Annotated[
            str, Field(min_length=1, max_length=MAX_BRANCH, description="Branch to work on")
        ],
        files: Files = None,
        context: Annotated[
            str | None, Field(max_length=MAX_CONTEXT, description="Background for the agent")
        ] = None,
        cpus: Annotated[
            int | None,
            Field(ge=1, le=AGENT.max_cpus, description=f"CPUs (default {AGENT.default_cpus})"),
        ] = None,
        memory_gb: Annotated[
            int | None,
            Field(
                ge=1,
                le=AGENT.max_memory_gb,
                description=f"Memory in GB (default {AGENT.default_memory_gb})",
            ),
        ] = None,
        timeout_minutes: AgentTimeout = None,
        disk_gb: Annotated[
            int | None,
            Field(
                ge=1,
                le=AGENT.max_disk_gb,
                description="Size of /tmp in GB, part of the memory "
                f"(default {AGENT.default_disk_gb}); writes past it fail with ENOSPC",
            ),
        ] = None,
    ) -> CallToolResult:
        """Start a coding sub-agent on `git_branch` with `files` at /work (read-write).
        It cannot start jobs itself. Returns its job_id at once."""
        return _answer(
            lambda: tools.spawn_sub_agent(
                task, git_branch, files, context, cpus, memory_gb, timeout_minutes, disk_gb
            )
        )

    @server.tool()
    def get_job_status(job_id: JobId) -> CallToolResult:
        """A job's status, exit_code, error and timings."""
        return _answer(lambda: tools.get_job_status(job_id))

    @server.tool()
    def get_job_output(
        job_id: JobId,
        tail: Annotated[int, Field(ge=1, le=MAX_TAIL, description="Last N lines")] = 100,
    ) -> CallToolResult:
        """The last `tail` lines of a job's stdout+stderr, each prefixed [HH:MM:SS.mmm]."""
        return _answer(lambda: tools.get_job_output(job_id, tail))

    @server.tool()
    def follow_job_output(
        job_id: JobId,
        offset: Annotated[
            int, Field(ge=0, description="Byte offset to start at: 0, or the last next_offset")
        ] = 0,
        wait_seconds: Annotated[
            int,
            Field(
                ge=1, le=MAX_FOLLOW_SECONDS, description="Wait at most this long for more output"
            ),
        ] = 30,
    ) -> CallToolResult:
        """A job's stdout+stderr from `offset` on, pushed as the job prints, for up to
        `wait_seconds` (at most 1 MiB per call). Returns output, next_offset (pass it as
        offset next time) and complete (true: the job has ended and its whole log is read)."""
        return _answer(lambda: tools.follow_job_output(job_id, offset, wait_seconds))

    @server.tool()
    def get_job_artifacts(job_id: JobId) -> CallToolResult:
        """The files an ended job left in /artifacts (names, sizes, expiry)."""
        return _answer(lambda: tools.get_job_artifacts(job_id))

    @server.tool()
    def download_artifact(
        job_id: JobId,
        artifact_name: Annotated[str, Field(min_length=1, max_length=4096)],
        save_to: Annotated[
            str | None,
            Field(
                max_length=4096,
                description="Path under the download directory (default JOB_ID/NAME); "
                "paths outside it are refused",
            ),
        ] = None,
    ) -> CallToolResult:
        """Download one artifact into the local download directory; returns its path."""
        return _answer(lambda: tools.download_artifact(job_id, artifact_name, save_to))

    @server.tool()
    def list_jobs(
        status: StatusFilter = "all",
        limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
    ) -> CallToolResult:
        """Jobs, newest first, optionally only those in one status."""
        return _answer(lambda: tools.list_jobs(status, limit))

    @server.tool()
    def kill_job(job_id: JobId) -> CallToolResult:
        """Cancel a job (SIGTERM, then SIGKILL after 10 s)."""
        return _answer(lambda: tools.kill_job(job_id))

    return server


def main() -> None:
    # stdout is the MCP channel; configure_logging writes to stderr.
    configure_logging("flashpods-mcp")
    download_root = Path(DEFAULT_DOWNLOAD_DIR)
    try:
        download_root = load_config().download_dir
    except FlashpodsError as exc:
        log.warning("configuration incomplete, tools will fail until fixed: %s", exc)
    tools = FlashpodsTools(Flashpods.from_config, download_root.absolute())
    build_server(tools).run("stdio")


if __name__ == "__main__":
    main()
