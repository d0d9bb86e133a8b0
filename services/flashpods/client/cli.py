"""`flashpods` — the command line front door.

    flashpods run [--image I] [--cpus N] [--memory GB] [--disk GB] [--timeout MIN] [--dir P] -- CMD
    flashpods agent --task TEXT --branch B [--context TEXT] [--dir PATH] [--follow]
    flashpods status JOB [--wait] | logs JOB [-f] [--tail N] | artifacts JOB [--download]
    flashpods kill JOB | jobs [--status S] [--limit N] | health

Exit codes: `run` (and `agent --follow`) exit with the job's exit code; when the job has
none, 124 timed out, 130 cancelled, 125 failed to start. 125 also means Flashpods itself
failed (API error, upload failed). Other commands: 0 ok, 1 error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from flashpods.client.errors import FlashpodsError
from flashpods.client.models import Job
from flashpods.client.progress import Progress, human_bytes
from flashpods.client.sdk import Flashpods, RetryEvent
from flashpods.client.upload import AGENT_EXCLUDES, DEFAULT_EXCLUDES
from flashpods.common.limits import LIMITS, MAX_TAIL

EXIT_FLASHPODS_ERROR = 125
EXIT_TIMED_OUT = 124
EXIT_INTERRUPTED = 130
ARTIFACTS_DIR = "flashpods-artifacts"


def job_exit_code(job: Job) -> int:
    """The exit code `run` reports for an ended job (pure)."""
    if job.exit_code is not None:
        return int(job.exit_code) & 0xFF
    return {
        "completed": 0,
        "timed_out": EXIT_TIMED_OUT,
        "cancelled": EXIT_INTERRUPTED,
    }.get(job.status, EXIT_FLASHPODS_ERROR)


def worker_command(argv: Sequence[str]) -> str:
    """`run -- make test` and `run -- 'make && ls'` both work: one argument is shell text
    (the worker runs /bin/sh -c), several are quoted so each stays one word."""
    return argv[0] if len(argv) == 1 else shlex.join(argv)


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO
    progress: Progress
    make_client: Callable[[Callable[[RetryEvent], None]], Flashpods]

    @property
    def as_json(self) -> bool:
        return bool(self.args.json)

    def client(self) -> Flashpods:
        return self.make_client(self._on_retry)

    def _on_retry(self, event: RetryEvent) -> None:
        text = f"API busy ({event.reason}); retrying in {event.delay:.1f}s"
        if self.progress.live:
            self.progress.update(text)
        else:
            self.progress.done(text)

    def emit(self, data: Any) -> None:
        self.out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        self.out.flush()

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


# ---------------------------------------------------------------------- commands


def cmd_run(ctx: Context) -> int:
    args = ctx.args
    if not args.command:
        raise FlashpodsError("missing_command", "nothing to run: flashpods run [options] -- CMD")
    command = worker_command(args.command)
    fp = ctx.client()

    def start(files_id: str | None) -> str:
        created = fp.create_worker(
            command,
            files_id=files_id,
            image=args.image,
            cpus=args.cpus,
            memory_gb=args.memory,
            disk_gb=args.disk,
            timeout_minutes=args.timeout,
        )
        return created.job_id

    return _run_job(ctx, fp, start, follow=not args.detach)


def cmd_agent(ctx: Context) -> int:
    args = ctx.args
    task = _text_arg(args.task, args.task_file, "task")
    if task is None:
        raise FlashpodsError("missing_task", "give --task TEXT or --task-file FILE")
    context = _text_arg(args.context, args.context_file, "context")
    fp = ctx.client()

    def start(files_id: str | None) -> str:
        created = fp.create_agent(
            task,
            args.branch,
            context=context,
            files_id=files_id,
            image=args.image,
            cpus=args.cpus,
            memory_gb=args.memory,
            disk_gb=args.disk,
            timeout_minutes=args.timeout,
        )
        return created.job_id

    return _run_job(ctx, fp, start, follow=args.follow, excludes=AGENT_EXCLUDES)


def _run_job(
    ctx: Context,
    fp: Flashpods,
    start: Callable[[str | None], str],
    *,
    follow: bool,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
) -> int:
    """Upload, start, and (when following) stream the log, download artifacts and
    return the job's exit code. Ctrl-C while following cancels the job."""
    args = ctx.args
    progress = ctx.progress
    files_id = None
    if args.dir is not None:
        files_id = _upload(ctx, fp, Path(args.dir), excludes)
    job_id = start(files_id)
    if not follow:
        if ctx.as_json:
            ctx.emit({"job_id": job_id, "files_id": files_id})
        else:
            progress.done(f"started {job_id} (flashpods logs -f {job_id})")
            ctx.line(job_id)
        return 0
    progress.done(f"started {job_id}; Ctrl-C cancels it")
    try:
        job = _follow_job(ctx, fp, job_id)
    except KeyboardInterrupt:
        progress.done(f"cancelling {job_id} ...")
        try:
            fp.kill(job_id)
        except FlashpodsError as exc:
            if exc.code != "job_already_terminal":
                raise
        job = fp.get_job(job_id)
        progress.done(f"{job_id} {job.status}")
        if ctx.as_json:
            ctx.emit({"job": job.raw, "artifacts": [], "exit_code": EXIT_INTERRUPTED})
        return EXIT_INTERRUPTED
    saved: list[Path] = []
    if not args.no_download:
        saved = _download_all(ctx, fp, job_id, Path(args.artifacts_dir) / job_id)
    code = job_exit_code(job)
    if ctx.as_json:
        output = fp.get_output(job_id, tail=MAX_TAIL).output if job.status != "pending" else ""
        ctx.emit(
            {
                "job": job.raw,
                "output": output,
                "artifacts": [str(p) for p in saved],
                "exit_code": code,
            }
        )
    else:
        detail = f", error: {job.error}" if job.error else ""
        progress.done(f"{job_id} {job.status} (exit {job.exit_code}{detail})")
    return code


def _upload(ctx: Context, fp: Flashpods, source: Path, defaults: Sequence[str]) -> str:
    excludes = [] if ctx.args.no_default_excludes else list(defaults)
    excludes += ctx.args.exclude or []
    ctx.progress.update(f"uploading {source} ...")

    def on_progress(done: int, percent: int) -> None:
        ctx.progress.update(f"uploading {source}: {human_bytes(done)} ({percent}%)")

    upload = fp.upload(source, excludes=excludes, on_progress=on_progress)
    sent = "" if upload.transfer is None else f", {human_bytes(upload.transfer.sent_bytes)} sent"
    ctx.progress.done(
        f"uploaded {upload.file_count} files ({human_bytes(upload.size_bytes or 0)}{sent})"
        f" as {upload.upload_id}"
    )
    return upload.upload_id


def _follow_job(ctx: Context, fp: Flashpods, job_id: str) -> Job:
    started = time.monotonic()

    def on_status(job: Job) -> None:
        if job.status in ("pending", "starting"):
            ctx.progress.update(f"{job_id}: {job.status} ({time.monotonic() - started:.0f}s)")
        else:
            ctx.progress.clear()

    if ctx.as_json:
        return fp.wait(job_id, on_status=on_status)

    def write(text: str) -> None:
        ctx.progress.clear()
        ctx.out.write(text)
        ctx.out.flush()

    return fp.follow(job_id, write, on_status=on_status)


def _download_all(ctx: Context, fp: Flashpods, job_id: str, directory: Path) -> list[Path]:
    listing = fp.list_artifacts(job_id)
    saved = []
    for n, artifact in enumerate(listing.artifacts, 1):
        ctx.progress.update(
            f"downloading {n}/{len(listing.artifacts)}: {artifact.name}"
            f" ({human_bytes(artifact.size_bytes)})"
        )
        saved.append(fp.download_artifact(job_id, artifact.name, directory))
    if saved:
        ctx.progress.done(
            f"downloaded {len(saved)} artifacts ({human_bytes(listing.total_size_bytes)})"
            f" to {directory}"
        )
    return saved


def cmd_status(ctx: Context) -> int:
    fp = ctx.client()
    job = fp.wait(ctx.args.job_id) if ctx.args.wait else fp.get_job(ctx.args.job_id)
    if ctx.as_json:
        ctx.emit(job.raw)
    else:
        for key, value in job.raw.items():
            if value is not None:
                ctx.line(f"{key + ':':<22} {_one_line(value)}")
    return 0


def cmd_logs(ctx: Context) -> int:
    fp = ctx.client()
    args = ctx.args

    def write(text: str) -> None:
        ctx.out.write(text)
        ctx.out.flush()

    if not args.follow:
        shown = fp.get_output(args.job_id, tail=args.tail)
        if ctx.as_json:
            ctx.emit(shown.raw)
        else:
            write(shown.output)
        return 0
    try:
        shown = fp.get_output(args.job_id, tail=args.tail)
    except FlashpodsError as exc:
        if exc.code != "logs_not_available":
            raise
        offset = 0  # not started yet: all of its log is still to come
    else:
        write(shown.output)
        offset = shown.total_bytes
    try:
        fp.follow(args.job_id, write, offset=offset)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # stop following; the job keeps running
    return 0


def cmd_artifacts(ctx: Context) -> int:
    fp = ctx.client()
    args = ctx.args
    listing = fp.list_artifacts(args.job_id)
    if args.download:
        saved = _download_all(ctx, fp, args.job_id, Path(args.dir or ARTIFACTS_DIR) / args.job_id)
        if ctx.as_json:
            ctx.emit({**listing.raw, "saved": [str(p) for p in saved]})
        else:
            for path in saved:
                ctx.line(str(path))
        return 0
    if ctx.as_json:
        ctx.emit(listing.raw)
        return 0
    for artifact in listing.artifacts:
        ctx.line(f"{human_bytes(artifact.size_bytes):>10}  {artifact.name}")
    note = " (copy in progress)" if listing.copy_in_progress else ""
    expiry = f", expire {listing.expires_at}" if listing.expires_at else ""
    ctx.progress.done(
        f"{len(listing.artifacts)} artifacts, {human_bytes(listing.total_size_bytes)}{expiry}{note}"
    )
    return 0


def cmd_kill(ctx: Context) -> int:
    result = ctx.client().kill(ctx.args.job_id)
    if ctx.as_json:
        ctx.emit(result.raw)
    else:
        ctx.line(f"{result.job_id} {result.status}")
    return 0


def cmd_jobs(ctx: Context) -> int:
    listing = ctx.client().list_jobs(ctx.args.status, ctx.args.limit)
    if ctx.as_json:
        ctx.emit(listing.raw)
        return 0
    ctx.line(f"{'JOB':<40} {'TYPE':<7} {'STATUS':<10} {'EXIT':>4}  {'CREATED':<20} WHAT")
    for job in listing.jobs:
        what = job.raw.get("command") or job.raw.get("task") or ""
        exit_code = "" if job.exit_code is None else str(job.exit_code)
        ctx.line(
            f"{job.id:<40} {job.type:<7} {job.status:<10} {exit_code:>4}  "
            f"{job.raw.get('created_at') or '':<20} {_one_line(what)[:60]}"
        )
    ctx.progress.done(f"{len(listing.jobs)} of {listing.total} jobs")
    return 0


def cmd_health(ctx: Context) -> int:
    health = ctx.client().health()
    if ctx.as_json:
        ctx.emit(health.raw)
    else:
        ctx.line(f"{health.status} (version {health.version}, up {health.uptime_seconds}s)")
    return 0 if health.status == "healthy" else 1


# ---------------------------------------------------------------------- parsing


def _text_arg(text: str | None, file: str | None, what: str) -> str | None:
    if text is not None and file is not None:
        raise FlashpodsError(f"invalid_{what}", f"give --{what} or --{what}-file, not both")
    if file is not None:
        try:
            return Path(file).read_text()
        except OSError as exc:
            raise FlashpodsError(f"invalid_{what}", f"cannot read {file}: {exc}") from exc
    return text


def _one_line(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.split())


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashpods",
        description="Run jobs on a Flashpods host (config: FLASHPODS_API_TOKEN, "
        "FLASHPODS_HOST, FLASHPODS_PORT or ~/.config/flashpods/config.toml).",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    # Also accepted after the command; SUPPRESS keeps `--json status` from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    resources = argparse.ArgumentParser(add_help=False)
    resources.add_argument("--image", help="container image (API default otherwise)")
    wl, al = LIMITS["worker"], LIMITS["agent"]
    resources.add_argument(
        "--cpus",
        type=_positive,
        help=f"default {wl.default_cpus} (max: worker {wl.max_cpus}, agent {al.max_cpus})",
    )
    resources.add_argument(
        "--memory",
        type=_positive,
        metavar="GB",
        help=f"default {wl.default_memory_gb} (max: worker {wl.max_memory_gb}, "
        f"agent {al.max_memory_gb})",
    )
    resources.add_argument(
        "--disk",
        type=_positive,
        metavar="GB",
        help=f"scratch /tmp size, part of the memory; default {wl.default_disk_gb} "
        f"(max: worker {wl.max_disk_gb}, agent {al.max_disk_gb})",
    )
    resources.add_argument(
        "--timeout",
        type=_positive,
        metavar="MINUTES",
        help=f"default: worker {wl.default_timeout}, agent {al.default_timeout}",
    )
    resources.add_argument("--dir", default=".", help="folder to upload (default: .)")
    resources.add_argument(
        "--no-upload", dest="dir", action="store_const", const=None, help="upload nothing"
    )
    resources.add_argument(
        "--exclude", action="append", metavar="PATTERN", help="rsync exclude pattern (repeatable)"
    )
    resources.add_argument(
        "--no-default-excludes",
        action="store_true",
        help=f"do not exclude {' '.join(DEFAULT_EXCLUDES)} (agent always keeps .git)",
    )
    resources.add_argument(
        "--artifacts-dir",
        default=ARTIFACTS_DIR,
        help="artifacts go to DIR/JOB_ID/ (default: ./flashpods-artifacts)",
    )
    resources.add_argument("--no-download", action="store_true", help="leave artifacts remote")

    run = sub.add_parser(
        "run", parents=[common, resources], help="upload, run a command, follow it, fetch artifacts"
    )
    run.add_argument(
        "--detach", "-d", action="store_true", help="start the job, print its id and return"
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    run.set_defaults(func=cmd_run)

    agent = sub.add_parser("agent", parents=[common, resources], help="start a coding agent")
    agent.add_argument("--task")
    agent.add_argument("--task-file")
    agent.add_argument("--branch", required=True, help="git branch the agent works on")
    agent.add_argument("--context")
    agent.add_argument("--context-file")
    agent.add_argument(
        "--follow", "-f", action="store_true", help="follow it like run (Ctrl-C cancels)"
    )
    agent.set_defaults(func=cmd_agent)

    status = sub.add_parser("status", parents=[common], help="show a job")
    status.add_argument("job_id")
    status.add_argument("--wait", action="store_true", help="wait until it has ended")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", parents=[common], help="show a job's output")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.add_argument("--tail", type=_positive, default=100, help="last N lines (default 100)")
    logs.set_defaults(func=cmd_logs)

    artifacts = sub.add_parser("artifacts", parents=[common], help="list or fetch artifacts")
    artifacts.add_argument("job_id")
    artifacts.add_argument("--download", action="store_true")
    artifacts.add_argument(
        "--dir", help="download into DIR/JOB_ID/ (default ./flashpods-artifacts)"
    )
    artifacts.set_defaults(func=cmd_artifacts)

    kill = sub.add_parser("kill", parents=[common], help="cancel a job")
    kill.add_argument("job_id")
    kill.set_defaults(func=cmd_kill)

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    jobs.add_argument("--status", help="all, running, completed, failed or a state name")
    jobs.add_argument("--limit", type=_positive, help="1-100 (default 20)")
    jobs.set_defaults(func=cmd_jobs)

    health = sub.add_parser("health", parents=[common], help="is the API up?")
    health.set_defaults(func=cmd_health)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    make_client: Callable[[Callable[[RetryEvent], None]], Flashpods] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    out = out or sys.stdout
    err = err or sys.stderr
    progress = Progress.for_stream(err, quiet=bool(args.json))
    failure_code = EXIT_FLASHPODS_ERROR if args.cmd in ("run", "agent") else 1
    ctx = Context(
        args, out, progress, make_client or (lambda hook: Flashpods.from_config(on_retry=hook))
    )
    try:
        return int(args.func(ctx))
    except FlashpodsError as exc:
        progress.clear()
        if args.json:
            ctx.emit(exc.to_dict())
        else:
            err.write(f"flashpods: {exc}\n")
        return failure_code
    except KeyboardInterrupt:
        progress.clear()
        err.write("flashpods: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
