"""The real Runtime: podman's CLI against a podman API socket (`podman --url unix://…`).

The same code runs rootless on NixOS (user flashpods, `--userns=keep-id`) and against
the lab's rootful `podman system service` (`--user` = the API's own uid:gid); which one
is asked of `podman info` once.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flashpods.api.config import Config, ModelService
from flashpods.api.runtime import (
    ContainerError,
    ContainerInfo,
    JobHooks,
    JobSpec,
    artifactpin,
    joblog,
)
from flashpods.api.runtime import podman_cli as cli
from flashpods.api.runtime.artifacts_collect import ArtifactLimits
from flashpods.api.runtime.logcapture import LogCapture, parse_conmon_time
from flashpods.api.runtime.supervisor import ContainerOps, JobSupervisor
from flashpods.common import envconfig
from flashpods.common.programs import ProgramFailure, run_program
from flashpods.common.timefmt import utc_now

log = logging.getLogger(__name__)

DEFAULT_LOG_MAX_BYTES = 50 << 20
PODMAN_TIMEOUT_SECONDS = 120
# conmon's own file may hold more than the job log (its record overhead is larger, and it
# keeps going after our capture stopped), but never more than this.
RAW_LOG_FACTOR = 4
NOT_STARTED = ("created", "initialized")
# How long a started container may take to reach its gate (PID 1 exec'd, the shell
# waiting on the FIFO).
GATE_SECONDS = 30.0
LIVE_STATES = ("running", "paused", *NOT_STARTED)
RAW_LOG_MIN_BYTES = 8 << 20


@dataclass(frozen=True)
class PodmanConfig:
    socket_path: Path = envconfig.PODMAN_SOCKET
    instance: str = "default"
    pull_policy: str = envconfig.DEFAULT_PULL_POLICY
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    spire_socket_dir: Path = envconfig.SPIRE_SOCKET_DIR
    token_socket: Path = envconfig.TOKEN_SOCKET
    tools_dir: Path | None = None
    agent_command: str = "claude"
    model_service: ModelService = field(default_factory=ModelService)
    podman_binary: str = "podman"
    artifact_limits: ArtifactLimits = field(default_factory=ArtifactLimits)

    @classmethod
    def from_api(cls, config: Config) -> PodmanConfig:
        """The runtime's part of the API's configuration."""
        return cls(
            socket_path=config.podman_socket,
            instance=config.instance,
            pull_policy=config.pull_policy,
            log_max_bytes=config.log_max_bytes,
            spire_socket_dir=config.spire_socket_dir,
            token_socket=config.token_socket,
            tools_dir=config.tools_dir,
            agent_command=config.agent_command,
            model_service=config.model_service,
            artifact_limits=ArtifactLimits(
                max_file_bytes=config.artifact_max_file_bytes,
                max_total_bytes=config.artifact_max_job_bytes,
                max_files=config.artifact_max_files,
            ),
        )

    def __post_init__(self) -> None:
        if self.pull_policy not in cli.PULL_POLICIES:
            raise ValueError(f"FLASHPODS_PULL_POLICY must be one of {cli.PULL_POLICIES}")
        if self.log_max_bytes < 1024:
            raise ValueError("FLASHPODS_LOG_MAX_BYTES must be at least 1024")
        for path in (self.spire_socket_dir, self.token_socket, self.tools_dir):
            if path is not None and any(c in str(path) for c in ":,"):
                raise ValueError(f"mount source {path} must not contain ':' or ','")


def raw_log_path(spec: JobSpec) -> Path:
    """conmon's file for the job, next to the job log (same owner, same cleanup)."""
    return spec.log_path.with_name(f".{spec.job_id}.ctr.log")


def gate_path(spec: JobSpec) -> Path:
    """The job's gate FIFO (podman_cli.GATE_TARGET), next to the job log."""
    return spec.log_path.with_name(f".{spec.job_id}.gate")


def _parse_time(text: str | None) -> datetime | None:
    if not text or text.startswith("0001-01-01"):
        return None
    return parse_conmon_time(text.encode())


def _is_missing(stderr: str) -> bool:
    """podman says the container does not exist (not: podman cannot be reached, whose
    message also says "no such file or directory" about its socket)."""
    text = stderr.lower()
    return ("no such container" in text or "no such object" in text) and (
        "unable to connect" not in text
    )


def _labels(raw: dict[str, Any]) -> dict[str, str]:
    return (raw.get("Config") or {}).get("Labels") or {}


def _container_info(raw: dict[str, Any]) -> ContainerInfo:
    """One element of `podman container inspect`'s JSON array."""
    state = raw.get("State") or {}
    exit_code = state.get("ExitCode")
    return ContainerInfo(
        container_id=str(raw["Id"]),
        job_id=str(_labels(raw).get(cli.LABEL_JOB_ID, "")),
        state=str(state.get("Status", "")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        oom_killed=bool(state.get("OOMKilled")),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
    )


class PodmanRuntime:
    def __init__(self, config: PodmanConfig | Config) -> None:
        self.config = config if isinstance(config, PodmanConfig) else PodmanConfig.from_api(config)
        self._lock = threading.Lock()
        self._jobs: dict[str, JobSupervisor] = {}
        self._user: cli.ContainerUser | None = None
        self._closed = threading.Event()  # shutdown(): waiters stop retrying

    # ---- podman plumbing -------------------------------------------------------------

    def _podman(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = PODMAN_TIMEOUT_SECONDS,
    ) -> subprocess.CompletedProcess[str]:
        argv = cli.base(self.config.socket_path, self.config.podman_binary) + args
        full_env = None if env is None else {**os.environ, **env}
        return run_program(
            argv, fail=_podman_error(args[0]), check=False, env=full_env, timeout=timeout
        )

    def _checked(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = PODMAN_TIMEOUT_SECONDS,
    ) -> str:
        argv = cli.base(self.config.socket_path, self.config.podman_binary) + args
        full_env = None if env is None else {**os.environ, **env}
        return run_program(argv, fail=_podman_error(args[0]), env=full_env, timeout=timeout).stdout

    def container_user(self) -> cli.ContainerUser:
        if self._user is None:
            rootless = self._checked(["info", "--format", "{{.Host.Security.Rootless}}"])
            self._user = cli.ContainerUser(
                rootless=rootless.strip() == "true", uid=os.getuid(), gid=os.getgid()
            )
        return self._user

    def _inspect_raw(self, names: list[str]) -> list[dict[str, Any]]:
        """Inspect data of those that exist (a missing one is not an error)."""
        result = self._podman(cli.inspect_args(names))
        try:
            found = json.loads(result.stdout) if result.stdout.strip() else []
        except json.JSONDecodeError as exc:
            raise ContainerError("podman inspect returned no JSON") from exc
        if result.returncode != 0 and not found and not _is_missing(result.stderr):
            raise ContainerError(
                f"podman inspect failed: {cli.scrub_paths(result.stderr)}",
                f"podman inspect exited {result.returncode}: {cli.one_line(result.stderr)}",
            )
        return found

    def inspect(self, name: str) -> ContainerInfo | None:
        found = self._inspect_raw([name])
        return _container_info(found[0]) if found else None

    def _running_pid(self, name: str) -> tuple[ContainerInfo | None, int | None]:
        found = self._inspect_raw([name])
        if not found:
            return None, None
        pid = (found[0].get("State") or {}).get("Pid")
        return _container_info(found[0]), (pid if isinstance(pid, int) and pid > 0 else None)

    def _wait(self, name: str) -> None:
        """Block until the container is not running; survives podman hiccups and
        restarts of the podman service (it keeps asking until podman answers, or until
        shutdown: an abandoned job is resumed by the next start, not by this process)."""
        while not self._closed.is_set():
            try:
                result = self._podman(
                    ["wait", "--condition", "stopped", "--condition", "exited", name],
                    timeout=10 * 24 * 3600,
                )
                # `podman wait` can also end because the service went away: only podman's
                # own view of the container says whether it has really ended.
                info = self.inspect(name)
            except ContainerError as exc:
                log.warning("podman unreachable while waiting for %s, retrying: %s", name, exc)
                self._closed.wait(2)
                continue
            if info is None or info.state not in (*LIVE_STATES, "stopping"):
                return
            log.warning("podman wait %s ended early, retrying: %s", name, result.stderr.strip())
            self._closed.wait(2)

    def _stop(self, name: str) -> None:
        result = self._podman(cli.stop_args(name))
        if result.returncode != 0:
            log.warning("podman stop %s: %s", name, result.stderr.strip())

    # ---- job scratch files -----------------------------------------------------------

    def _mounts(self, spec: JobSpec) -> list[cli.Mount]:
        upload = cli.upload_mount(spec)
        mounts = [] if upload is None else [upload]
        optional = [
            (self.config.spire_socket_dir, "/run/spire/sockets"),
            (self.config.token_socket, "/run/flashpods/token.sock"),
        ]
        if self.config.tools_dir is not None:
            optional.append((self.config.tools_dir, "/opt/flashpods"))
        for source, target in optional:
            if source.exists():
                mounts.append(cli.Mount(source, target, read_only=True))
            else:
                log.warning(
                    "%s does not exist; job %s runs without %s", source, spec.job_id, target
                )
        return mounts

    def _prepare_files(self, spec: JobSpec) -> None:
        # Where the artifacts are copied out to: ours alone (downloads go through the API).
        spec.artifacts_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(spec.artifacts_dir, 0o700)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec.log_path.touch(0o600)
        # Created by us, so it is ours even when a rootful conmon appends to it.
        raw_log_path(spec).touch(0o600)
        gate_path(spec).unlink(missing_ok=True)
        os.mkfifo(gate_path(spec), 0o600)

    def _finalize(self, spec: JobSpec) -> None:
        """After on_finished: the container, its pinned /artifacts and the job's scratch
        files go."""
        artifactpin.release(spec.job_id)  # collected: the tmpfs may go
        self._podman(["rm", "--force", "--time", "0", f"job_{spec.job_id}"])
        raw_log_path(spec).unlink(missing_ok=True)
        gate_path(spec).unlink(missing_ok=True)

    def _fail_start(self, spec: JobSpec, error: ContainerError) -> ContainerError:
        self._podman(["rm", "--force", "--time", "0", f"job_{spec.job_id}"])
        artifactpin.release(spec.job_id)
        raw_log_path(spec).unlink(missing_ok=True)
        gate_path(spec).unlink(missing_ok=True)
        joblog.append_runtime_lines(spec.log_path, self.config.log_max_bytes, [str(error)])
        return error

    # ---- Runtime -----------------------------------------------------------------------

    def _supervisor(self, spec: JobSpec, hooks: JobHooks) -> JobSupervisor:
        ops = ContainerOps(
            wait=self._wait,
            stop=self._stop,
            inspect=self.inspect,
            finalize=self._finalize,
            artifacts=lambda spec: artifactpin.open_pinned(spec.job_id),
        )
        capture = LogCapture(
            raw_log_path(spec),
            spec.log_path,
            self.config.log_max_bytes,
            on_growth=lambda: hooks.on_output(spec.job_id),
        )
        sup = JobSupervisor(spec, hooks, ops, capture, self.config.artifact_limits, self._forget)
        with self._lock:
            self._jobs[spec.job_id] = sup
        return sup

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def start(self, spec: JobSpec, hooks: JobHooks) -> None:
        sup = self._supervisor(spec, hooks)
        try:
            self._start(spec, hooks, sup)
        except BaseException:
            self._forget(spec.job_id)
            raise

    def _start(self, spec: JobSpec, hooks: JobHooks, sup: JobSupervisor) -> None:
        name = cli.container_name(spec.job_id)
        try:
            self._prepare_files(spec)
            user = self.container_user()
            if spec.upload_dir is not None and not spec.upload_dir.is_dir():
                raise ContainerError("the job's upload snapshot is gone")
        except OSError as exc:
            raise self._fail_start(
                spec,
                ContainerError(
                    f"cannot prepare the job: {exc.strerror}", f"cannot prepare the job: {exc}"
                ),
            ) from exc
        except ContainerError as exc:
            raise self._fail_start(spec, exc) from exc
        raw_max = max(RAW_LOG_MIN_BYTES, RAW_LOG_FACTOR * self.config.log_max_bytes)
        args = cli.create_args(
            spec,
            instance=self.config.instance,
            user=user,
            mounts=self._mounts(spec),
            pull_policy=self.config.pull_policy,
            raw_log_path=raw_log_path(spec),
            raw_log_max_bytes=raw_max,
            gate=gate_path(spec),
        )
        env = cli.job_environment(spec, self.config.agent_command, self.config.model_service)
        try:
            self._checked(args, env=env, timeout=600)  # a pull may take a while
            self._checked(["start", name])
            self._pin_and_open_gate(spec, name)
            info, pid = self._running_pid(name)
        except ContainerError as exc:
            raise self._fail_start(spec, exc) from exc
        started_at = (info.started_at if info else None) or utc_now()
        hooks.on_running(spec.job_id, started_at)
        sup.supervise(started_at, pid)

    def _pin_and_open_gate(self, spec: JobSpec, name: str) -> None:
        """The container runs; its command waits on the gate. Pin its /artifacts through
        PID 1, then let the command go."""
        self._pin(spec, name)
        if not artifactpin.open_gate(gate_path(spec), GATE_SECONDS):
            raise ContainerError("the job's command did not start", f"{name}: nobody read its gate")

    def _pin(self, spec: JobSpec, name: str) -> None:
        if artifactpin.holders(spec.job_id):
            return
        pid = self._running_pid(name)[1]
        if pid is None:
            raise ContainerError("the container has no process to pin /artifacts through")
        try:
            artifactpin.pin(
                pid,
                spec.job_id,
                spec.disk_gb * cli.GIB,
                spec.timeout_minutes * 60 + artifactpin.MARGIN_SECONDS,
                GATE_SECONDS,
            )
        except OSError as exc:
            raise ContainerError(
                "cannot pin the job's /artifacts", f"pinning /artifacts of {name}: {exc}"
            ) from exc

    def cancel(self, job_id: str) -> None:
        with self._lock:
            sup = self._jobs.get(job_id)
        if sup is not None:
            sup.request_cancel()

    def resume(self, spec: JobSpec, hooks: JobHooks, info: ContainerInfo) -> None:
        with self._lock:
            if spec.job_id in self._jobs:
                return  # already supervised (a periodic reconciliation)
        sup = self._supervisor(spec, hooks)
        name = cli.container_name(spec.job_id)
        try:
            started_at = info.started_at
            if info.state in NOT_STARTED:
                # The API died between create and start: carry on with the start.
                self._checked(["start", name])
                self._pin_and_open_gate(spec, name)
                refreshed = self.inspect(name)
                started_at = (refreshed.started_at if refreshed else None) or utc_now()
                hooks.on_running(spec.job_id, started_at)
            running = info.state in LIVE_STATES
            if info.state in ("running", "paused"):
                try:  # the API died before the gate opened, or the holder is gone
                    self._pin(spec, name)
                    # A command just started may not be reading its gate yet.
                    age = (utc_now() - (started_at or utc_now())).total_seconds()
                    artifactpin.open_gate(gate_path(spec), max(0.0, GATE_SECONDS - age))
                except ContainerError as exc:
                    log.warning("job %s: %s; its artifacts will be lost", spec.job_id, exc.cause)
            pid = self._running_pid(name)[1] if running else None
            sup.supervise(started_at or utc_now(), pid, exited=not running)
        except BaseException:
            self._forget(spec.job_id)
            raise

    def list_job_containers(self) -> list[ContainerInfo]:
        ids = self._checked(cli.list_args(self.config.instance)).split()
        if not ids:
            return []
        mine = []
        for raw in self._inspect_raw(ids):
            # Only this instance's job containers, whatever podman's filter semantics.
            if _labels(raw).get(cli.LABEL_INSTANCE) == self.config.instance:
                mine.append(_container_info(raw))
        return [info for info in mine if info.job_id]

    def remove_container(self, container_id: str) -> None:
        found = self._inspect_raw([container_id])
        result = self._podman(["rm", "--force", "--time", "0", container_id])
        if result.returncode != 0 and not _is_missing(result.stderr):
            raise ContainerError(
                f"podman rm failed: {cli.scrub_paths(result.stderr)}",
                f"podman rm exited {result.returncode}: {cli.one_line(result.stderr)}",
            )
        # The raw log lives outside podman's storage (see raw_log_path); rm leaves it behind,
        # and the pin of its /artifacts.
        for raw in found:
            job_id = _labels(raw).get(cli.LABEL_JOB_ID)
            if job_id:
                artifactpin.release(job_id)
            path = Path(((raw.get("HostConfig") or {}).get("LogConfig") or {}).get("Path") or "")
            if path.name.startswith(".") and path.name.endswith(".ctr.log"):
                path.unlink(missing_ok=True)

    def shutdown(self) -> None:
        """Stop watching (the containers keep running; a restart resumes them)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for sup in jobs:
            sup.abandon()
        self._closed.set()


def _podman_error(operation: str) -> Callable[[ProgramFailure], ContainerError]:
    """podman's failure as a ContainerError: the last line, host paths scrubbed, to show;
    everything it said, for the service's own log."""

    def error(failure: ProgramFailure) -> ContainerError:
        if failure.returncode is None:  # it did not run to the end
            return ContainerError(
                f"podman {operation} failed: {failure.reason}",
                f"podman {operation}: {failure.reason} {failure.output}".strip(),
            )
        said = cli.scrub_paths(failure.last_line)
        return ContainerError(
            f"podman {operation} failed: {said or failure.reason}",
            f"podman {operation} exited {failure.returncode}: {cli.one_line(failure.output)}",
        )

    return error
