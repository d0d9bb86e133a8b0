"""The real Runtime: podman's REST API on its service socket (podman_rest: a request,
not a client process, per operation); a job's container is created from one body,
podman_spec.container_spec.

The same code runs rootless on NixOS (user flashpods, userns keep-id) and against the
lab's rootful `podman system service` (user = the API's own uid:gid); which one is asked
of podman's info once.
"""

from __future__ import annotations

import logging
import os
import select
import threading
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
from flashpods.api.runtime import podman_spec as ctr
from flashpods.api.runtime.artifacts_collect import ArtifactLimits
from flashpods.api.runtime.logcapture import LogCapture, parse_conmon_time
from flashpods.api.runtime.podman_rest import PodmanApi
from flashpods.api.runtime.supervisor import ContainerOps, JobSupervisor
from flashpods.common import envconfig
from flashpods.common.polling import poll
from flashpods.common.timefmt import utc_now

log = logging.getLogger(__name__)

DEFAULT_LOG_MAX_BYTES = 50 << 20
PODMAN_TIMEOUT_SECONDS = 120
# conmon's own file may hold more than the job log (its record overhead is larger, and it
# keeps going after our capture stopped), but never more than this.
RAW_LOG_FACTOR = 4
RAW_LOG_MIN_BYTES = 8 << 20
NOT_STARTED = ("created", "initialized")
# How long a started container may take to reach its gate (PID 1 exec'd, the shell
# waiting on the FIFO).
GATE_SECONDS = 30.0
LIVE_STATES = ("running", "paused", *NOT_STARTED)
NOT_ENDED = (*LIVE_STATES, "stopping")
# After the container's PID 1 has exited, conmon drains the job's output into its log,
# syncs it and writes the exit file; podman's state says "ended" from then on.
EXIT_FILE_SECONDS = 5.0
EXIT_FILE_POLL_SECONDS = 0.005


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
    network: str | None = None  # FLASHPODS_JOB_NETWORK; None: podman's default network
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
            network=config.job_network,
            artifact_limits=ArtifactLimits(
                max_file_bytes=config.artifact_max_file_bytes,
                max_total_bytes=config.artifact_max_job_bytes,
                max_files=config.artifact_max_files,
            ),
        )

    def __post_init__(self) -> None:
        if self.pull_policy not in envconfig.PULL_POLICIES:
            raise ValueError(f"FLASHPODS_PULL_POLICY must be one of {envconfig.PULL_POLICIES}")
        if self.log_max_bytes < 1024:
            raise ValueError("FLASHPODS_LOG_MAX_BYTES must be at least 1024")
        for path in (self.spire_socket_dir, self.token_socket, self.tools_dir):
            if path is not None and any(c in str(path) for c in ":,"):
                raise ValueError(f"mount source {path} must not contain ':' or ','")


def raw_log_path(spec: JobSpec) -> Path:
    """conmon's file for the job, next to the job log (same owner, same cleanup)."""
    return spec.log_path.with_name(f".{spec.job_id}.ctr.log")


def gate_path(spec: JobSpec) -> Path:
    """The job's gate FIFO (podman_spec.GATE_TARGET), next to the job log."""
    return spec.log_path.with_name(f".{spec.job_id}.gate")


def _parse_time(text: str | None) -> datetime | None:
    if not text or text.startswith("0001-01-01"):
        return None
    return parse_conmon_time(text.encode())


def _labels(raw: dict[str, Any]) -> dict[str, str]:
    return (raw.get("Config") or {}).get("Labels") or {}


def _container_info(raw: dict[str, Any]) -> ContainerInfo:
    """podman's inspect object of one container."""
    state = raw.get("State") or {}
    exit_code = state.get("ExitCode")
    return ContainerInfo(
        container_id=str(raw["Id"]),
        job_id=str(_labels(raw).get(ctr.LABEL_JOB_ID, "")),
        state=str(state.get("Status", "")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        oom_killed=bool(state.get("OOMKilled")),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
    )


def _ended(info: ContainerInfo | None) -> bool:
    return info is None or info.state not in NOT_ENDED


def _wait_for_exit(pidfd: int, wake: int) -> bool:
    """Until the process of `pidfd` has exited (True) or `wake` is written (False).
    poll(), not select(): the API may hold more than 1024 descriptors."""
    events = select.poll()
    events.register(pidfd, select.POLLIN)
    events.register(wake, select.POLLIN)
    while not (ready := [fd for fd, _ in events.poll()]):
        pass
    return pidfd in ready


class PodmanRuntime:
    def __init__(self, config: PodmanConfig | Config) -> None:
        self.config = config if isinstance(config, PodmanConfig) else PodmanConfig.from_api(config)
        self._api = PodmanApi(self.config.socket_path, PODMAN_TIMEOUT_SECONDS)
        self._lock = threading.Lock()
        self._jobs: dict[str, JobSupervisor] = {}
        self._user: ctr.ContainerUser | None = None
        self._closed = threading.Event()  # shutdown(): waiters stop retrying
        self._wakes: set[int] = set()  # eventfds of exit waiters, written at shutdown
        self._holders: dict[str, int] = {}  # job id → pid of the pin holder we started

    # ---- podman plumbing -------------------------------------------------------------

    def _create(self, body: dict[str, Any]) -> None:
        """Pull the image as the pull policy says (the CLI's `create --pull=<policy>`
        did), then create the container from its one definition."""
        if self.config.pull_policy != "never":
            self._api.pull(body["image"], self.config.pull_policy)
        self._api.create(body)

    def container_user(self) -> ctr.ContainerUser:
        if self._user is None:
            self._user = ctr.ContainerUser(
                rootless=self._api.rootless(), uid=os.getuid(), gid=os.getgid()
            )
        return self._user

    def inspect(self, name: str) -> ContainerInfo | None:
        found = self._api.inspect(name)
        return _container_info(found) if found is not None else None

    def _running_pid(self, name: str) -> tuple[ContainerInfo | None, int | None]:
        found = self._api.inspect(name)
        if found is None:
            return None, None
        pid = (found.get("State") or {}).get("Pid")
        return _container_info(found), (pid if isinstance(pid, int) and pid > 0 else None)

    def _wait(self, name: str, pid: int | None) -> ContainerInfo | None:
        """Block until the container has ended; podman's view of it then (None: it is
        gone). Seen first from its PID 1's exit, then from podman's state: podman's own
        wait also waits for conmon, which runs `podman container cleanup` (a process of
        its own, hundreds of ms on a busy host) before it exits. That wait remains the
        fallback, and survives podman hiccups and restarts of the service: it keeps
        asking until podman answers, or until shutdown (an abandoned job is resumed by
        the next start, not by this process)."""
        try:
            seen = self._after_exit_of(name, pid)
        except ContainerError as exc:
            log.warning("watching %s end failed, asking podman to wait: %s", name, exc)
        else:
            if seen is not None:
                return seen[0]
        while not self._closed.is_set():
            try:
                code = self._api.wait(name)
                # The wait can also end because the service went away: only podman's
                # own view of the container says whether it has really ended.
                found = self.inspect(name)
            except ContainerError as exc:
                log.warning("podman unreachable while waiting for %s, retrying: %s", name, exc)
                self._closed.wait(2)
                continue
            if _ended(found):
                return found
            log.warning("podman wait %s ended early (%s), retrying", name, code)
            self._closed.wait(2)
        return None

    def _after_exit_of(self, name: str, pid: int | None) -> tuple[ContainerInfo | None] | None:
        """Wait for PID 1 `pid` of the container to exit (None: it is not running), then
        for podman to say it ended: (its info,); None when that was not seen (no pidfd
        here, shutdown, or podman did not say so in time)."""
        try:
            pidfd = None if pid is None else os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None  # it has exited already
        except OSError as exc:
            log.warning("no pidfd for %s (%s); podman waits for it", name, exc.strerror)
            return None
        try:
            if pidfd is not None:
                # A pid is reused only after its process is gone: while podman still
                # says the container runs as `pid`, the descriptor is of its PID 1.
                info, running = self._running_pid(name)
                if _ended(info):
                    return (info,)
                if running == pid and not self._exit_of(pidfd):
                    return None  # shutdown
        finally:
            if pidfd is not None:
                os.close(pidfd)
        seen: list[ContainerInfo | None] = []

        def ended() -> bool:
            found = self.inspect(name)
            if _ended(found):
                seen.append(found)
            return bool(seen)

        poll(ended, EXIT_FILE_SECONDS, interval=EXIT_FILE_POLL_SECONDS, stop=self._closed)
        return (seen[0],) if seen else None

    def _exit_of(self, pidfd: int) -> bool:
        """Wait for the process of `pidfd` to exit (True), or for shutdown (False)."""
        wake = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            with self._lock:
                if self._closed.is_set():
                    return False
                self._wakes.add(wake)
            return _wait_for_exit(pidfd, wake)
        finally:
            with self._lock:
                self._wakes.discard(wake)
            os.close(wake)

    def _stop(self, name: str) -> None:
        try:
            self._api.stop(name, ctr.STOP_GRACE_SECONDS)
        except ContainerError as exc:
            log.warning("podman stop %s: %s", name, exc.cause)

    def _remove(self, name: str) -> None:
        """Kill and remove, where a failure only delays it: the reconciler removes what
        is left."""
        try:
            self._api.remove(name)
        except ContainerError as exc:
            log.warning("podman rm %s: %s", name, exc.cause)

    # ---- job scratch files -----------------------------------------------------------

    def _mounts(self, spec: JobSpec) -> list[ctr.Mount]:
        upload = ctr.upload_mount(spec)
        mounts = [] if upload is None else [upload]
        optional = [
            (self.config.spire_socket_dir, "/run/spire/sockets"),
            (self.config.token_socket, "/run/flashpods/token.sock"),
        ]
        if self.config.tools_dir is not None:
            optional.append((self.config.tools_dir, "/opt/flashpods"))
        for source, target in optional:
            if source.exists():
                mounts.append(ctr.Mount(source, target, read_only=True))
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
        self._forget_pin(spec.job_id)
        self._remove(ctr.container_name(spec.job_id))
        raw_log_path(spec).unlink(missing_ok=True)
        gate_path(spec).unlink(missing_ok=True)

    def _fail_start(self, spec: JobSpec, error: ContainerError) -> ContainerError:
        self._remove(ctr.container_name(spec.job_id))
        artifactpin.release(spec.job_id)
        self._forget_pin(spec.job_id)
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
            artifacts=lambda spec: artifactpin.open_pinned(spec.job_id, self._holder(spec.job_id)),
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
            sup.capture.abandon()
            self._forget(spec.job_id)
            raise

    def _start(self, spec: JobSpec, hooks: JobHooks, sup: JobSupervisor) -> None:
        name = ctr.container_name(spec.job_id)
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
        body = ctr.container_spec(
            spec,
            instance=self.config.instance,
            user=user,
            mounts=self._mounts(spec),
            raw_log_path=raw_log_path(spec),
            raw_log_max_bytes=raw_max,
            environment=ctr.job_environment(
                spec, self.config.agent_command, self.config.model_service
            ),
            gate=gate_path(spec),
            network=self.config.network,
        )
        # The capture process starts (an interpreter, tens of ms) while podman creates and
        # starts the container: a short job's end does not wait for it to come up.
        sup.capture.start()
        try:
            self._create(body)
            self._api.start(name)
            info, pid = self._pin_and_open_gate(spec, name, pinned_maybe=False)
        except ContainerError as exc:
            sup.capture.abandon()  # before the error line goes into the job log
            raise self._fail_start(spec, exc) from exc
        started_at = (info.started_at if info else None) or utc_now()
        hooks.on_running(spec.job_id, started_at)
        sup.supervise(started_at, pid)

    def _pin_and_open_gate(
        self, spec: JobSpec, name: str, *, pinned_maybe: bool
    ) -> tuple[ContainerInfo | None, int | None]:
        """The container runs; its command waits on the gate. Pin its /artifacts through
        PID 1 (unless `pinned_maybe` and a holder is there), then let the command go.
        Returns podman's view of the container and its PID 1, asked while the command
        still waits (once a short job has ended, `podman container cleanup` holds the
        container's lock, and an inspect would wait for it)."""
        info, pid = self._running_pid(name)
        if not (pinned_maybe and artifactpin.holders(spec.job_id)):
            self._pin(spec, name, pid)
        if not artifactpin.open_gate(gate_path(spec), GATE_SECONDS):
            raise ContainerError("the job's command did not start", f"{name}: nobody read its gate")
        return info, pid

    def _pin(self, spec: JobSpec, name: str, pid: int | None) -> None:
        if pid is None:
            raise ContainerError("the container has no process to pin /artifacts through")
        try:
            holder = artifactpin.pin(
                pid,
                spec.job_id,
                spec.disk_gb * ctr.GIB,
                spec.timeout_minutes * 60 + artifactpin.MARGIN_SECONDS,
                GATE_SECONDS,
            )
        except OSError as exc:
            raise ContainerError(
                "cannot pin the job's /artifacts", f"pinning /artifacts of {name}: {exc}"
            ) from exc
        with self._lock:
            self._holders[spec.job_id] = holder

    def _holder(self, job_id: str) -> int | None:
        """The pid of the job's pin holder if this process started it."""
        with self._lock:
            return self._holders.get(job_id)

    def _forget_pin(self, job_id: str) -> None:
        with self._lock:
            self._holders.pop(job_id, None)

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
        name = ctr.container_name(spec.job_id)
        try:
            started_at = info.started_at
            if info.state in NOT_STARTED:
                # The API died between create and start: carry on with the start.
                self._api.start(name)
                refreshed, _ = self._pin_and_open_gate(spec, name, pinned_maybe=True)
                started_at = (refreshed.started_at if refreshed else None) or utc_now()
                hooks.on_running(spec.job_id, started_at)
            running = info.state in LIVE_STATES
            if info.state in ("running", "paused"):
                try:  # the API died before the gate opened, or the holder is gone
                    if not artifactpin.holders(spec.job_id):
                        self._pin(spec, name, self._running_pid(name)[1])
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
        mine = []
        for container_id in self._api.list_ids(ctr.job_labels(self.config.instance)):
            raw = self._api.inspect(container_id)
            # Only this instance's job containers, whatever podman's filter semantics
            # (one removed since the listing is simply not there any more).
            if raw is not None and _labels(raw).get(ctr.LABEL_INSTANCE) == self.config.instance:
                mine.append(_container_info(raw))
        return [info for info in mine if info.job_id]

    def remove_container(self, container_id: str) -> None:
        found = self._api.inspect(container_id)
        self._api.remove(container_id)
        # The raw log lives outside podman's storage (see raw_log_path); rm leaves it behind,
        # and the pin of its /artifacts.
        if found is not None:
            job_id = _labels(found).get(ctr.LABEL_JOB_ID)
            if job_id:
                artifactpin.release(job_id)
            config = (found.get("HostConfig") or {}).get("LogConfig") or {}
            path = Path(config.get("Path") or "")
            if path.name.startswith(".") and path.name.endswith(".ctr.log"):
                path.unlink(missing_ok=True)

    def shutdown(self) -> None:
        """Stop watching (the containers keep running; a restart resumes them)."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._closed.set()
            for wake in self._wakes:
                os.eventfd_write(wake, 1)
        for sup in jobs:
            sup.abandon()
