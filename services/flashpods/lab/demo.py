"""`flashpods-lab demo [--agent]`: a real job end to end, from the laptop namespace.

With the project's own SDK: rsync a small sample project, finalize it, start a worker
that reads /work, obtains its GITHUB_TOKEN through SPIRE and the token service (and
prints only that it got one), writes an artifact; follow its log; download the
artifact; print a summary with the time of each phase.

`--agent`: the sample project as a git repository whose origin is a bare repository on
the lab's git server; a sub-agent job runs the real Claude Code CLI against the lab's
scripted model service, which edits /work through the CLI's tools; the entrypoint
commits and pushes the branch; the demo prints the artifacts and the pushed commit.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from flashpods.lab.proc import run
from flashpods.lab.topology import GIT_DIR, Topology

SAMPLE_FILES = {
    "README.md": "# sample\n\nA tiny project the Flashpods demo uploads.\n",
    "data/poem.txt": "the quick brown fox\njumps over the lazy dog\nthe dog sleeps\n",
    "src/wordcount.py": (
        "import collections, pathlib, sys\n"
        "words = collections.Counter()\n"
        "for path in sorted(pathlib.Path(sys.argv[1]).rglob('*.txt')):\n"
        "    words.update(path.read_text().split())\n"
        "for word, count in words.most_common():\n"
        "    print(f'{count:3} {word}')\n"
    ),
}

# What the worker runs (/bin/sh -c). The token comes through the helper in the tools
# mounted at /opt/flashpods: a JWT-SVID from the SPIRE agent, exchanged at the token
# service; the helper execs its command with GITHUB_TOKEN in the environment only.
WORKER_COMMAND = """set -eu
echo "worker $(hostname) as uid $(id -u); /work holds:"
(cd /work && find . -type f | sort)
/opt/flashpods/bin/flashpods-token-helper sh -c \\
  'echo "got a GITHUB_TOKEN from the token service (${#GITHUB_TOKEN} chars, not shown)"'
python3 /work/src/wordcount.py /work/data > /artifacts/wordcount.txt
echo "wrote /artifacts/wordcount.txt ($(wc -l < /artifacts/wordcount.txt) lines)"
"""


@dataclass
class Phases:
    marks: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, start: float) -> float:
        now = time.monotonic()
        self.marks[name] = now - start
        return now


def write_sample(root: Path) -> None:
    for rel, text in SAMPLE_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


AGENT_TASK = "Write down notes about this project and count their lines."
AGENT_BRANCH = "flashpods/demo-notes"


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Lab laptop",
        "GIT_AUTHOR_EMAIL": "laptop@lab.invalid",
        "GIT_COMMITTER_NAME": "Lab laptop",
        "GIT_COMMITTER_EMAIL": "laptop@lab.invalid",
    }
    where = [] if cwd is None else ["-C", str(cwd)]
    return run(["git", *where, *args], env=env, timeout=120).stdout


def sample_repository(root: Path, topo: Topology) -> tuple[Path, Path]:
    """The sample project as a git repository (one commit on main) whose origin is a new
    bare repository on the lab's git server. Returns (project, bare repository)."""
    name = f"demo-{uuid.uuid4().hex[:12]}.git"
    bare = GIT_DIR / name
    git("init", "-q", "--bare", "--initial-branch=main", str(bare))
    project = root / "project"
    write_sample(project)
    git("init", "-q", "--initial-branch=main", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "the sample project", cwd=project)
    git("remote", "add", "origin", topo.git_url(name), cwd=project)
    # The laptop shares the lab's filesystem: publish main without the network.
    git("push", "-q", str(bare), "main", cwd=project)
    return project, bare


def run_agent_demo(out: Path) -> int:
    """Inside the laptop namespace, with FLASHPODS_HOST and FLASHPODS_API_TOKEN set."""
    from flashpods.client.sdk import Flashpods
    from flashpods.client.upload import AGENT_EXCLUDES
    from flashpods.lab import lab

    with Flashpods.from_config() as fp, tempfile.TemporaryDirectory() as tmp:
        project, bare = sample_repository(Path(tmp), lab.topology())
        upload = fp.upload(project, excludes=AGENT_EXCLUDES)
        print(f"uploaded the repository ({upload.file_count} files, .git included)")
        created = fp.create_agent(AGENT_TASK, AGENT_BRANCH, files_id=upload.upload_id)
        print(f"started sub-agent {created.job_id} on {AGENT_BRANCH}; its log:")
        job = fp.follow(
            created.job_id, lambda s: print("  | " + s.rstrip("\n").replace("\n", "\n  | "))
        )
        print(f"job {job.id} {job.status} (exit {job.exit_code})")
        paths = fp.download_artifacts(created.job_id, out / created.job_id)
    for path in paths:
        print(f"artifact {path} ({path.stat().st_size} bytes):")
        print(textwrap.indent(path.read_text().rstrip("\n"), "  "))
    pushed = ""
    if job.status == "completed":
        pushed = git("--git-dir", str(bare), "log", "-1", "--stat", AGENT_BRANCH)
        print(f"pushed commit: {AGENT_BRANCH} of {bare.name}, its origin on the lab's git server:")
        print(textwrap.indent(pushed.rstrip("\n"), "  "))
    return 0 if pushed and paths else 1


def run_demo(out: Path) -> int:
    """Inside the laptop namespace, with FLASHPODS_HOST and FLASHPODS_API_TOKEN set."""
    from flashpods.client.models import Job
    from flashpods.client.sdk import Flashpods
    from flashpods.client.upload import new_upload_id, run_rsync

    phases = Phases()
    with Flashpods.from_config() as fp, tempfile.TemporaryDirectory() as tmp:
        health = fp.health()
        print(f"API {health.version or '?'} healthy at {fp.base_url}")
        project = Path(tmp) / "project"
        write_sample(project)
        upload_id = new_upload_id()
        assert fp.rsync_url is not None
        t0 = t = time.monotonic()
        run_rsync(project, fp.rsync_url, upload_id)
        t = phases.timed("upload", t)
        upload = fp.finalize_upload(upload_id)
        t = phases.timed("finalize", t)
        print(f"uploaded {upload.file_count} files ({upload.size_bytes} bytes) as {upload_id}")
        created = fp.create_worker(WORKER_COMMAND, files_id=upload_id)
        print(f"started {created.job_id}; its log:")
        started: dict[str, float] = {}

        def on_status(job: Job) -> None:
            if job.status == "running" and "running" not in started:
                started["running"] = time.monotonic()

        job = fp.follow(
            created.job_id,
            lambda s: print("  | " + s.rstrip("\n").replace("\n", "\n  | ")),
            on_status=on_status,
        )
        ended = time.monotonic()
        running_at = started.get("running", ended)
        phases.marks["start"] = running_at - t
        phases.marks["run"] = ended - running_at
        t = ended
        print(f"job {job.id} {job.status} (exit {job.exit_code})")
        paths = fp.download_artifacts(created.job_id, out / created.job_id)
        phases.timed("artifact download", t)
        total = time.monotonic() - t0
    for path in paths:
        print(f"artifact {path} ({path.stat().st_size} bytes):")
        print(textwrap.indent(path.read_text().rstrip("\n"), "  "))
    print(
        "summary: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in phases.marks.items())
        + f"; end to end {total:.2f} s"
    )
    return 0 if job.status == "completed" and paths else 1


def main(agent: bool = False) -> int:
    """From the root namespace: re-run this module inside the laptop namespace."""
    from flashpods.lab import lab
    from flashpods.lab.proc import LabError

    if os.environ.get("FLASHPODS_LAB_NETNS") == "laptop":
        out = Path(os.environ.get("FLASHPODS_DEMO_OUT", "flashpods-artifacts"))
        return run_agent_demo(out) if agent else run_demo(out)
    if not lab.status().get("supervisor_running"):
        raise LabError("the lab is not up; run flashpods-lab up first")
    argv = [sys.executable, "-m", "flashpods.lab.demo", *(["--agent"] if agent else [])]
    argv = lab.shell_argv("laptop", argv)
    env = lab.shell_env("laptop")
    env.setdefault("FLASHPODS_DEMO_OUT", str(Path.cwd() / "flashpods-artifacts"))
    os.execvpe(argv[0], argv, env)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main(agent=sys.argv[1:] == ["--agent"]))
