"""Delta re-upload against the real API, rsync daemon and podman: an unchanged tree is sent
again as almost nothing, changes arrive exactly (changed, deleted, added, newly
excluded), and a base snapshot never changes, whatever the new upload and the jobs do.

rsync's own --stats (Upload.transfer) are the bytes on the socket from the laptop's side."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from client_stack import BIN, Api
from flashpods.client.bases import UploadBases
from flashpods.client.sdk import Flashpods
from flashpods.common.polling import wait_until
from flashpods_testing.trees import tree_record, write_tree
from mcp import ClientSession, StdioServerParameters, stdio_client

FILES, TOTAL = 400, 8 * 1024 * 1024
# What a job prints for its /work: one line per file, "sha256  ./path", sorted.
LISTING = "cd /work && find . -type f -print0 | sort -z | xargs -0 sha256sum"


@pytest.fixture
def client(api: Api, rsync_url: str, tmp_path: Path) -> Flashpods:
    fp = api.client(rsync_url)
    fp.upload_bases = UploadBases(tmp_path / "cache")
    return fp


def listing(root: Path) -> str:
    lines = []
    for path in sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256((root / path).read_bytes()).hexdigest()
        lines.append(f"{digest}  ./{path}")
    return "\n".join(lines) + "\n"


def work_of(fp: Flashpods, upload_id: str) -> str:
    """What a job on the upload finds in /work (and that it cannot write there)."""
    job = fp.create_worker(
        f"touch /work/x 2>/dev/null && echo WROTE; {LISTING}", files_id=upload_id, cpus=1
    )
    final = fp.wait(job.job_id, timeout=120)
    assert final.status == "completed", final
    return fp.get_output(job.job_id, tail=10000).output


def printed(log: str) -> str:
    return "".join(line.split("] ", 1)[1] + "\n" for line in log.splitlines())


def test_an_unchanged_tree_is_sent_again_as_almost_nothing(
    client: Flashpods, api: Api, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    write_tree(project, FILES, TOTAL)
    first = client.upload(project)
    assert first.transfer is not None and first.base_upload_id is None
    assert first.transfer.literal_bytes == TOTAL and first.transfer.sent_bytes > TOTAL
    assert printed(work_of(client, first.upload_id)) == listing(project)
    kept = api.root / "snapshots" / first.upload_id
    assert kept.is_dir()  # its job is over: kept as the folder's next base

    second = client.upload(project)
    assert second.base_upload_id == first.upload_id
    assert second.transfer is not None and second.transfer.literal_bytes == 0
    assert second.transfer.sent_bytes < TOTAL / 100, second.transfer
    assert not kept.exists()  # moved into the second upload
    assert printed(work_of(client, second.upload_id)) == listing(project)


def test_changes_arrive_exactly(client: Flashpods, tmp_path: Path) -> None:
    project = tmp_path / "project"
    files = write_tree(project, FILES, TOTAL)
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    first = client.upload(project, excludes=())  # an agent's upload keeps .git
    work_of(client, first.upload_id)

    changed, deleted = files[7], files[8]
    size, before = changed.stat().st_size, changed.stat().st_mtime_ns
    changed.write_bytes(os.urandom(size))  # same size, new content
    # ... and a new mtime within the same second: rsync's quick check must still see it.
    again = before + 1 if (before + 1) % 10**9 else before - 1
    os.utime(changed, ns=(again, again))
    deleted.unlink()
    (project / "new.bin").write_bytes(os.urandom(50_000))
    second = client.upload(project)  # a worker's: .git is left out now
    assert second.base_upload_id == first.upload_id
    assert second.transfer is not None
    assert second.transfer.literal_bytes == size + 50_000, second.transfer
    assert second.transfer.sent_bytes < size + 50_000 + TOTAL / 100
    shown = printed(work_of(client, second.upload_id))
    assert ".git/HEAD" not in shown and "WROTE" not in shown
    os.unlink(project / ".git" / "HEAD")
    assert shown == listing(project)


def test_a_base_in_use_is_copied_and_never_changes(
    client: Flashpods, api: Api, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    files = write_tree(project, FILES, TOTAL)
    first = client.upload(project)
    snapshot = api.root / "snapshots" / first.upload_id
    # Access times aside (the API's start check reads the directories), nothing of the
    # snapshot may change: inodes, modes, owners, sizes, links, mtimes, ctimes, bytes.
    before = tree_record(snapshot, atimes=False)
    holder = client.create_worker(
        "chmod -R 777 /work 2>/dev/null; rm -rf /work/pkg000 2>/dev/null; "
        "echo x >> /work/pkg000/mod0000/file00000.dat 2>/dev/null; "
        "trap 'exit 0' TERM; echo holding; sleep 300 & wait",
        files_id=first.upload_id,
        cpus=1,
    )
    try:
        wait_until(
            lambda: "holding" in client.get_output(holder.job_id).output, 60, "the job to run"
        )
        files[0].write_bytes(b"changed on the laptop")
        # rsync changes an up-to-date file's mode in place (a shared inode would carry it
        # into the snapshot): the host keeps u-bits only, so go from 0600 to 0700.
        files[1].chmod(0o755)
        second = client.upload(project)  # the base's job runs: a copy
        assert second.base_upload_id == first.upload_id
        assert second.transfer is not None
        assert second.transfer.literal_bytes == len(b"changed on the laptop")
        assert tree_record(snapshot, atimes=False) == before
        assert printed(work_of(client, second.upload_id)) == listing(project)
        assert tree_record(snapshot, atimes=False) == before
    finally:
        client.kill(holder.job_id)
    # An upload built on it is finalized: nobody's base any more, so it goes when the
    # job's container has stopped.
    wait_until(lambda: not snapshot.exists(), 60, "the base snapshot to go")
    assert client.get_upload(first.upload_id).state == "consumed"


def test_the_cli_and_the_mcp_server_start_from_the_folders_last_upload(
    api: Api, client_env: dict[str, str], tmp_path: Path
) -> None:
    """Both go through the SDK with the same cache (the laptop's HOME): the MCP server's
    upload of a folder starts from the CLI's upload of it, and the CLI's next from that."""
    project = tmp_path / "project"
    write_tree(project, FILES, TOTAL)

    def cli_run() -> tuple[str, str]:
        """(upload id, bytes sent as the CLI prints them)"""
        proc = subprocess.run(
            [str(BIN / "flashpods"), "run", "--dir", str(project), "--", "true"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        match = re.search(r"uploaded \d+ files \(.*, (.*) sent\) as (upload_\w+)", proc.stderr)
        assert match, proc.stderr
        return match.group(2), match.group(1)

    async def mcp_spawn() -> dict[str, Any]:
        params = StdioServerParameters(command=str(BIN / "flashpods-mcp"), env=client_env)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool(
                "spawn_worker", {"command": "true", "files": str(project), "cpus": 1}
            )
            body: dict[str, Any] = json.loads(result.content[0].text)
            assert not result.is_error, body
            return body

    first, sent = cli_run()
    assert sent.endswith(" MB")  # the whole tree
    spawned = anyio.run(mcp_spawn)
    fp = api.client("rsync://unused")
    assert fp.get_upload(spawned["files_id"]).base_upload_id == first
    fp.wait(spawned["job_id"], timeout=120)
    third, sent = cli_run()
    assert fp.get_upload(third).base_upload_id == spawned["files_id"]
    assert sent.endswith(" KB") and float(sent.split()[0]) < TOTAL / 100 / 1024, sent
