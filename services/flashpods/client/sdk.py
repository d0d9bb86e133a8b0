"""The Flashpods Python SDK: every API operation, with retries, on requests.

fp = Flashpods.from_config()
upload = fp.upload(Path("."))
job = fp.create_worker("make test", files_id=upload.upload_id)
final = fp.wait(job.job_id)
fp.download_artifacts(job.job_id, Path("out"))
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from flashpods.client import paths
from flashpods.client.bases import UploadBases
from flashpods.client.config import ClientConfig, load_config
from flashpods.client.errors import FlashpodsError
from flashpods.client.models import (
    ArtifactList,
    Cancelled,
    CreatedJob,
    Health,
    Job,
    JobList,
    JobOutput,
    OutputPiece,
    Upload,
)
from flashpods.client.retry import THROTTLED_STATUSES, RetryPolicy, parse_retry_after
from flashpods.client.upload import DEFAULT_EXCLUDES, check_source, new_upload_id, run_rsync
from flashpods.common.limits import DEFAULT_FOLLOW_SECONDS

log = logging.getLogger("flashpods.client")

_CHUNK = 1 << 16


@dataclass(frozen=True)
class RetryEvent:
    """Reported before each retry sleep (for progress displays and tests)."""

    method: str
    path: str
    attempt: int  # the attempt that just failed, 1-based
    delay: float
    reason: str  # the API's error code, or network_error
    status: int | None


@dataclass(frozen=True)
class PollSchedule:
    """Polling intervals: start fast (short jobs end within a second or two, and a
    followed log should feel live) and back off gently to a ceiling, so waiting on long
    jobs costs about one request a second."""

    first: float = 0.1
    factor: float = 1.2
    ceiling: float = 1.0

    def intervals(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(self.ceiling, delay * self.factor)


class Flashpods:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        rsync_url: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[RetryEvent], None] | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        poll: PollSchedule | None = None,
        session: requests.Session | None = None,
        upload_bases: UploadBases | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.rsync_url = rsync_url
        # Each folder's last upload, the base of its next one (None: every upload is full).
        self.upload_bases = upload_bases
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollSchedule()
        self.sleep = sleep
        self.on_retry = on_retry
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["User-Agent"] = "flashpods-client/0.1"

    @classmethod
    def from_config(cls, config: ClientConfig | None = None, **kwargs: Any) -> Flashpods:
        config = config or load_config()
        if config.cache_dir is not None:
            kwargs.setdefault("upload_bases", UploadBases(config.cache_dir))
        return cls(config.base_url, config.token, rsync_url=config.rsync_url, **kwargs)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Flashpods:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One logical request with the retry policy; returns the successful response.
        The same X-Request-Id (and body, so the same idempotency key) goes on every try."""
        url = self.base_url + path
        all_headers = {"X-Request-Id": str(uuid.uuid4()), **(headers or {})}
        throttled = network = 0
        while True:
            try:
                resp = self._session.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=all_headers,
                    stream=stream,
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                network += 1
                delay = self.retry.network_delay(network)
                if delay is None:
                    raise FlashpodsError(
                        "network_error",
                        f"{method} {url} failed after {network} tries: {exc}",
                    ) from exc
                self._before_retry(method, path, throttled + network, delay, "network_error", None)
                continue
            if resp.status_code < 400:
                return resp
            error = _error_from(resp)
            error.after_network_retry = network > 0
            resp.close()
            if resp.status_code not in THROTTLED_STATUSES:
                raise error
            throttled += 1
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if retry_after is None and isinstance(error.details.get("retry_after_seconds"), int):
                retry_after = float(error.details["retry_after_seconds"])
            wait = self.retry.throttled_delay(throttled, retry_after)
            if wait is None:
                raise error
            self._before_retry(method, path, throttled + network, wait, error.code, error.status)

    def _before_retry(
        self, method: str, path: str, attempt: int, delay: float, reason: str, status: int | None
    ) -> None:
        event = RetryEvent(method, path, attempt, delay, reason, status)
        log.info("retry %s %s in %.1fs after %s (try %d)", method, path, delay, reason, attempt)
        if self.on_retry is not None:
            self.on_retry(event)
        self.sleep(delay)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._send(method, path, **kwargs)
        return _decode(resp)

    # ------------------------------------------------------------------ health

    def health(self) -> Health:
        return Health.from_dict(self._json("GET", "/health"))

    # ------------------------------------------------------------------ uploads

    def upload(
        self,
        source: Path,
        *,
        excludes: Sequence[str] = DEFAULT_EXCLUDES,
        upload_id: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Upload:
        """Create a fresh upload id, starting from this folder's last upload when one is
        remembered (rsync then sends only what changed), rsync `source` into it and
        finalize it. A given `upload_id` that is still open (an rsync into it was cut
        off) is completed instead. On failure the partial upload is deleted so it does
        not count against the host's quota for 30 min."""
        if self.rsync_url is None:
            raise FlashpodsError("invalid_config", "no rsync URL configured for uploads")
        check_source(source)
        resumable = upload_id is not None
        upload_id = upload_id or new_upload_id()
        bases = self.upload_bases
        base = bases.get(self.base_url, source) if bases is not None else None
        try:
            created = self.create_upload(upload_id, base_upload_id=base)
        except FlashpodsError as exc:
            # Not ours to delete unless it is an open upload we complete now.
            if not (resumable and exc.code == "upload_already_exists"):
                raise
            if self.get_upload(upload_id).state != "uploading":
                raise
            created = None
        try:
            if created is not None and created.base_unavailable is not None:
                log.info("upload %s: base %s %s", upload_id, base, created.base_unavailable)
            transfer = run_rsync(source, self.rsync_url, upload_id, excludes, on_progress)
            upload = self.finalize_upload(upload_id)
        except BaseException:
            self._discard_upload(upload_id)
            raise
        if bases is not None:
            bases.remember(self.base_url, source, upload_id)
        return dataclasses.replace(upload, transfer=transfer)

    def create_upload(self, upload_id: str, *, base_upload_id: str | None = None) -> Upload:
        """POST /uploads: the directory rsync then fills, empty or as `base_upload_id`'s
        tree (`base_unavailable` says why a base was not used)."""
        body = {"upload_id": upload_id, "base_upload_id": base_upload_id}
        try:
            return Upload.from_dict(self._json("POST", "/uploads", json=body))
        except FlashpodsError as exc:
            # A retry after a network error may find our own first create done.
            if not (exc.code == "upload_already_exists" and exc.after_network_retry):
                raise
            return self.get_upload(upload_id)

    def _discard_upload(self, upload_id: str) -> None:
        try:
            self.delete_upload(upload_id)
        except FlashpodsError as exc:
            if exc.code not in ("upload_not_found", "upload_already_consumed"):
                log.warning("could not delete upload %s: %s", upload_id, exc)

    def finalize_upload(self, upload_id: str) -> Upload:
        try:
            resp = self._send("POST", f"/uploads/{_seg(upload_id)}/finalize")
        except FlashpodsError as exc:
            # A retry after a network error may find our own first finalize done.
            if not (exc.code == "upload_already_finalized" and exc.after_network_retry):
                raise
            return self.get_upload(upload_id)
        return Upload.from_dict(_decode(resp))

    def get_upload(self, upload_id: str) -> Upload:
        return Upload.from_dict(self._json("GET", f"/uploads/{_seg(upload_id)}"))

    def delete_upload(self, upload_id: str) -> None:
        resp = self._send("DELETE", f"/uploads/{_seg(upload_id)}")
        resp.close()

    # ------------------------------------------------------------------ jobs

    def create_job(self, body: dict[str, Any]) -> CreatedJob:
        """POST /jobs. A client_job_id (UUID v4) is added unless given; every retry of
        this call re-sends the same body, so the API creates at most one job."""
        body = {k: v for k, v in body.items() if v is not None}
        body.setdefault("client_job_id", str(uuid.uuid4()))
        return CreatedJob.from_dict(self._json("POST", "/jobs", json=body))

    def create_worker(
        self,
        command: str,
        *,
        files_id: str | None = None,
        image: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        timeout_minutes: int | None = None,
        client_job_id: str | None = None,
        disk_gb: int | None = None,
    ) -> CreatedJob:
        return self.create_job(
            {
                "type": "worker",
                "command": command,
                "files_id": files_id,
                "image": image,
                "cpus": cpus,
                "memory_gb": memory_gb,
                "disk_gb": disk_gb,
                "timeout_minutes": timeout_minutes,
                "client_job_id": client_job_id,
            }
        )

    def create_agent(
        self,
        task: str,
        git_branch: str,
        *,
        context: str | None = None,
        files_id: str | None = None,
        image: str | None = None,
        cpus: int | None = None,
        memory_gb: int | None = None,
        timeout_minutes: int | None = None,
        client_job_id: str | None = None,
        disk_gb: int | None = None,
    ) -> CreatedJob:
        return self.create_job(
            {
                "type": "agent",
                "task": task,
                "git_branch": git_branch,
                "context": context,
                "files_id": files_id,
                "image": image,
                "cpus": cpus,
                "memory_gb": memory_gb,
                "disk_gb": disk_gb,
                "timeout_minutes": timeout_minutes,
                "client_job_id": client_job_id,
            }
        )

    def get_job(self, job_id: str) -> Job:
        return Job.from_dict(self._json("GET", f"/jobs/{_seg(job_id)}"))

    def list_jobs(self, status: str | None = None, limit: int | None = None) -> JobList:
        params = {k: v for k, v in (("status", status), ("limit", limit)) if v is not None}
        return JobList.from_dict(self._json("GET", "/jobs", params=params))

    def get_output(self, job_id: str, tail: int | None = None) -> JobOutput:
        params = {"tail": tail} if tail is not None else None
        return JobOutput.from_dict(self._json("GET", f"/jobs/{_seg(job_id)}/output", params=params))

    def kill(self, job_id: str) -> Cancelled:
        try:
            resp = self._send("DELETE", f"/jobs/{_seg(job_id)}")
        except FlashpodsError as exc:
            # Our own earlier try may have landed before the connection broke.
            if not (exc.code == "job_already_terminal" and exc.after_network_retry):
                raise
            job = self.get_job(job_id)
            if job.status != "cancelled":
                raise
            return Cancelled(job.id, job.status, "Job was already cancelled", job.raw)
        return Cancelled.from_dict(_decode(resp))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_status: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job has ended; on_status sees every change of status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        for delay in self.poll.intervals():
            job = self.get_job(job_id)
            if job.status != last and on_status is not None:
                on_status(job)
            last = job.status
            if job.ended:
                return job
            if deadline is not None and time.monotonic() + delay > deadline:
                raise FlashpodsError(
                    "wait_timeout", f"{job_id} still {job.status} after {timeout}s"
                )
            self.sleep(delay)
        raise AssertionError("unreachable: intervals() is infinite")

    def follow(
        self,
        job_id: str,
        write: Callable[[str], None],
        *,
        on_status: Callable[[Job], None] | None = None,
        offset: int = 0,
    ) -> Job:
        """Write the job's log from byte `offset` through `write` as the API pushes it,
        until the log is complete (the job ended); returns the final job. A pending job
        is waited for. on_status sees the job before and after."""
        job = self.get_job(job_id)
        if on_status is not None:
            on_status(job)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            for data in self._log_bytes(job_id, offset, deadline=None):
                text = decoder.decode(data)
                if text:
                    write(text)
        except FlashpodsError as exc:
            if exc.code != "logs_deleted":
                raise
        rest = decoder.decode(b"", final=True)
        if rest:
            write(rest)
        final = self.get_job(job_id)
        if on_status is not None and final.status != job.status:
            on_status(final)
        return final

    def read_output(
        self, job_id: str, offset: int = 0, *, wait_seconds: float = 30, max_bytes: int = 1 << 20
    ) -> OutputPiece:
        """The log from byte `offset` as far as it gets within `wait_seconds` (at most
        `max_bytes`, cut at a character boundary); `complete` once nothing more will come.
        Continue with offset=piece.next_offset."""
        deadline = time.monotonic() + wait_seconds
        received = bytearray()
        complete = False
        pieces = self._log_bytes(job_id, offset, deadline)
        try:
            for data in pieces:
                received += data
                if len(received) >= max_bytes:
                    break
            else:
                complete = pieces.complete
        finally:
            pieces.close()
        kept = _utf8_prefix(bytes(received[:max_bytes]))
        if len(kept) < len(received):
            complete = False
        return OutputPiece(kept.decode("utf-8", "replace"), offset, offset + len(kept), complete)

    def _log_bytes(self, job_id: str, offset: int, deadline: float | None) -> _LogBytes:
        return _LogBytes(self, f"/jobs/{_seg(job_id)}/output", offset, deadline)

    # ------------------------------------------------------------------ artifacts

    def list_artifacts(self, job_id: str) -> ArtifactList:
        return ArtifactList.from_dict(self._json("GET", f"/jobs/{_seg(job_id)}/artifacts"))

    def download_artifact(
        self, job_id: str, name: str, directory: Path, *, save_as: str | None = None
    ) -> Path:
        """Stream one artifact to directory/(save_as or name): into a temporary file next
        to the target, then renamed, so a reader never sees half a file. Both the name
        the server gave and save_as must stay inside `directory`."""
        paths.check_artifact_name(name)
        target = paths.destination(
            directory, save_as or name, "save_to" if save_as else "artifact name"
        )
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                self._stream_into(f"/jobs/{_seg(job_id)}/artifacts/{_seg(name)}", out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def _stream_into(self, path: str, out: Any) -> None:
        """GET path into `out`; a connection that breaks mid-body is resumed with Range."""
        written = 0
        breaks = 0
        while True:
            headers = {"Range": f"bytes={written}-"} if written else None
            resp = self._send("GET", path, headers=headers, stream=True)
            with resp:
                if written and resp.status_code != 206:
                    out.seek(0)
                    out.truncate()
                    written = 0
                expected = resp.headers.get("Content-Length")
                got = 0
                try:
                    for chunk in resp.iter_content(_CHUNK):
                        out.write(chunk)
                        got += len(chunk)
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                    written += got
                    breaks += 1
                    delay = self.retry.network_delay(breaks)
                    if delay is None:
                        raise FlashpodsError(
                            "network_error", f"download of {path} broke {breaks} times: {exc}"
                        ) from exc
                    self._before_retry("GET", path, breaks, delay, "network_error", None)
                    continue
            if expected is not None and got != int(expected):
                raise FlashpodsError(
                    "invalid_response", f"{path}: got {got} bytes, Content-Length {expected}"
                )
            return

    def download_artifacts(self, job_id: str, directory: Path) -> list[Path]:
        return [
            self.download_artifact(job_id, a.name, directory)
            for a in self.list_artifacts(job_id).artifacts
        ]


class _LogBytes:
    """The log's bytes from an offset across as many follow responses as it takes: each
    ends after DEFAULT_FOLLOW_SECONDS or when the log is complete; a connection that breaks
    mid-body is resumed at the byte where it broke. `complete` says whether the
    iteration ended because the log is complete (rather than at the deadline)."""

    def __init__(self, client: Flashpods, path: str, offset: int, deadline: float | None) -> None:
        self.client = client
        self.path = path
        self.offset = offset
        self.deadline = deadline
        self.complete = False
        self._iterator = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        self._iterator.close()  # type: ignore[attr-defined]

    def _timeout(self) -> int | None:
        if self.deadline is None:
            return DEFAULT_FOLLOW_SECONDS
        left = self.deadline - time.monotonic()
        return None if left <= 0 else max(1, min(DEFAULT_FOLLOW_SECONDS, math.ceil(left)))

    def _run(self) -> Iterator[bytes]:
        breaks = 0
        while (timeout := self._timeout()) is not None:
            params = {"follow": "true", "offset": self.offset, "timeout": timeout}
            resp = self.client._send("GET", self.path, params=params, stream=True)
            with resp:
                complete = resp.headers.get("X-Log-Complete") == "true"
                try:
                    for data in resp.iter_content(chunk_size=None):
                        breaks = 0
                        self.offset += len(data)
                        yield data
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                    breaks += 1
                    delay = self.client.retry.network_delay(breaks)
                    if delay is None:
                        raise FlashpodsError(
                            "network_error", f"following {self.path} broke {breaks} times: {exc}"
                        ) from exc
                    self.client._before_retry(
                        "GET", self.path, breaks, delay, "network_error", None
                    )
                    continue
            if complete:
                self.complete = True
                return


def _utf8_prefix(data: bytes) -> bytes:
    """`data` without a UTF-8 sequence cut off at its end (it comes with the next piece)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80 or byte >= 0xF8:
            return data  # ASCII, or not UTF-8 at all: nothing to keep together
        if byte >= 0xC0:  # a lead byte: is its sequence whole?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data


def _seg(value: str) -> str:
    """One URL path segment: a `/`, `..` or `?` in user input cannot change the route."""
    return quote(value, safe="")


def _decode(resp: requests.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as exc:
        raise FlashpodsError(
            "invalid_response", f"API answered non-JSON ({resp.status_code})", resp.status_code
        ) from exc
    if not isinstance(data, dict):
        raise FlashpodsError("invalid_response", "API answered JSON that is not an object")
    return data


def _error_from(resp: requests.Response) -> FlashpodsError:
    request_id = resp.headers.get("X-Request-Id")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        details = body.get("details")
        return FlashpodsError(
            body["error"],
            str(body.get("message") or body["error"]),
            resp.status_code,
            details if isinstance(details, dict) else None,
            request_id,
        )
    # Not the API's error shape (a proxy, or something else on the port).
    fallback = {503: "service_unavailable", 429: "rate_limited"}.get(resp.status_code, "http_error")
    text = resp.text[:200] if resp.headers.get("Content-Type", "").startswith("text/") else ""
    message = f"HTTP {resp.status_code} {resp.reason} {text}".strip()
    return FlashpodsError(fallback, message, resp.status_code, None, request_id)
