"""GET /jobs/{id}/output?follow=true against the in-process API with the fake runtime:
bytes are pushed as the runtime reports them, the response ends with the log, offsets
resume exactly, followers are bounded and never leak their place."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from api_fakes import FakeRuntime
from api_harness import Api, start_api, with_config
from flashpods.api.config import Config
from flashpods.api.logbus import LogBus, Parked, Subscription, chunk
from flashpods.common.polling import wait_until


def _job(api: Api, runtime: FakeRuntime, run: bool = True) -> str:
    response = api.post("/jobs", json={"type": "worker", "command": "make"})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    if run:
        runtime.run(job_id)
    return job_id


def _follow(api: Api, job_id: str, **params: object) -> requests.Response:
    # Longer than the harness's read timeout (30 s): a wake-up that never comes fails the
    # test instead of ending the response normally.
    params = {"follow": "true", "timeout": 300, **params}
    return api.get(f"/jobs/{job_id}/output", params=params, stream=True)


def _chunks(response: requests.Response) -> Iterator[bytes]:
    return response.iter_content(chunk_size=None)


def _log(api: Api, job_id: str) -> bytes:
    return (api.config.logs_path / f"{job_id}.log").read_bytes()


def test_lines_are_pushed_as_written_and_the_response_ends_with_the_job(
    api: Api, runtime: FakeRuntime
) -> None:
    job_id = _job(api, runtime)
    response = _follow(api, job_id)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.headers["X-Log-Offset"] == "0"
    assert "X-Log-Complete" not in response.headers
    chunks = _chunks(response)
    received = next(chunks)  # "container created", written at start
    bus = api.server.app.logbus
    wait_until(lambda: bus.asleep(job_id) == 1, 10, "the follower to wait")
    runtime.log(job_id, "first")  # only the runtime's on_output can wake it now
    while b"first" not in received:  # arrives while the job runs, no end of the response
        received += next(chunks)
    runtime.log(job_id, "second")
    runtime.finish(job_id, 0)
    received += b"".join(chunks)  # ends by itself once the log is complete
    assert received == _log(api, job_id)
    assert received.endswith(b"second\n")
    # Asked again: everything, in one response that says it is the end.
    again = _follow(api, job_id, offset=len(received))
    assert again.headers["X-Log-Complete"] == "true"
    assert again.content == b""
    assert api.server.app.logbus.followers == 0


def test_offset_resumes_exactly_where_the_client_stopped(api: Api, runtime: FakeRuntime) -> None:
    job_id = _job(api, runtime)
    runtime.log(job_id, "héllo", "wörld")
    runtime.finish(job_id, 0)
    whole = _log(api, job_id)
    for offset in (0, 5, len(whole) - 3, len(whole), len(whole) + 10):
        response = _follow(api, job_id, offset=offset)
        assert response.status_code == 200
        assert response.headers["X-Log-Offset"] == str(offset)
        assert response.headers["X-Log-Complete"] == "true"
        assert response.content == whole[offset:]


def test_a_job_not_started_yet_is_followed_from_its_start(api: Api, runtime: FakeRuntime) -> None:
    runtime.start_gate = threading.Event()  # the container is still being created
    created: list[requests.Response] = []
    poster = threading.Thread(
        target=lambda: created.append(api.post("/jobs", json={"type": "worker", "command": "make"}))
    )
    poster.start()
    bus = api.server.app.logbus
    wait_until(lambda: bool(api.rows("jobs")), 10, "the job's row")
    job_id = api.rows("jobs")[0]["id"]
    assert api.rows("jobs")[0]["status"] == "starting"
    assert not (api.config.logs_path / f"{job_id}.log").exists()
    response = _follow(api, job_id)
    assert response.status_code == 200
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(_chunks(response)))
    reader.start()
    wait_until(lambda: bus.asleep(job_id) == 1, 10, "the follower to wait")
    runtime.start_gate.set()
    poster.join(10)
    assert created[0].status_code == 201
    runtime.run(job_id)  # running: a status change wakes the follower
    runtime.log(job_id, "out")
    runtime.finish(job_id, 0)
    reader.join(10)
    assert b"".join(got) == _log(api, job_id)
    assert b"".join(got).endswith(b"out\n")


def test_a_cancelled_job_is_followed_until_its_container_has_stopped(
    api: Api, runtime: FakeRuntime
) -> None:
    job_id = _job(api, runtime)
    # The DELETE makes the job `cancelled` at once; its container still prints while it
    # is being stopped (here: until the test opens the stop gate).
    runtime.stop_gate = threading.Event()
    assert api.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"
    response = _follow(api, job_id)
    assert "X-Log-Complete" not in response.headers
    chunks = _chunks(response)
    received = next(chunks)
    wait_until(lambda: api.server.app.logbus.asleep(job_id) == 1, 10, "the follower to wait")
    runtime.log(job_id, "caught SIGTERM, cleaning up")
    while b"cleaning up" not in received:
        received += next(chunks)
    runtime.stop_gate.set()  # the container stops; on_finished completes the log
    received += b"".join(chunks)
    assert received == _log(api, job_id)
    assert api.get(f"/jobs/{job_id}").json()["exit_code"] == 143


def test_the_response_ends_after_timeout_while_the_job_runs(api: Api, runtime: FakeRuntime) -> None:
    job_id = _job(api, runtime)
    response = _follow(api, job_id, timeout=1)
    assert response.content == _log(api, job_id)
    assert "X-Log-Complete" not in response.headers
    assert api.get(f"/jobs/{job_id}").json()["status"] == "running"
    assert api.server.app.logbus.followers == 0


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"follow": "yes"}, "follow"),
        ({"follow": "true", "offset": "-1"}, "offset"),
        ({"follow": "true", "offset": "1e3"}, "offset"),
        ({"follow": "true", "offset": "9" * 19}, "offset"),
        ({"follow": "true", "timeout": "0"}, "timeout"),
        ({"follow": "true", "timeout": "301"}, "timeout"),
        ({"follow": "true", "timeout": "1.5"}, "timeout"),
        ({"follow": "true", "tail": "5"}, "tail"),
        ({"offset": "5"}, "offset"),
        ({"follow": "false", "timeout": "5"}, "timeout"),
    ],
)
def test_bad_follow_parameters_are_refused(
    api: Api, runtime: FakeRuntime, params: dict[str, str], parameter: str
) -> None:
    job_id = _job(api, runtime)
    response = api.get(f"/jobs/{job_id}/output", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_parameter"
    assert response.json()["details"] == {"parameter": parameter}
    assert api.server.app.logbus.followers == 0


def test_unknown_job_and_deleted_logs(api: Api, runtime: FakeRuntime) -> None:
    missing = _follow(api, "job_0123456789abcdef")
    assert (missing.status_code, missing.json()["error"]) == (404, "job_not_found")
    job_id = _job(api, runtime)
    runtime.finish(job_id, 0)
    api.server.app.store.execute("UPDATE jobs SET logs_deleted_at = 1 WHERE id = ?", (job_id,))
    gone = _follow(api, job_id)
    assert (gone.status_code, gone.json()["error"]) == (410, "logs_deleted")
    assert api.server.app.logbus.followers == 0


def test_followers_are_bounded_and_a_client_that_leaves_frees_its_place(
    config: Config, runtime: FakeRuntime
) -> None:
    api = start_api(with_config(config, max_log_followers=2), runtime)
    try:
        job_id = _job(api, runtime)
        first, second = _follow(api, job_id), _follow(api, job_id)
        assert (first.status_code, second.status_code) == (200, 200)
        third = _follow(api, job_id)
        assert third.status_code == 503
        assert third.json()["error"] == "too_many_followers"
        assert third.headers["Retry-After"] == "1"
        first.close()  # the client goes away mid-response
        runtime.log(job_id, "x" * 300_000)  # the write to the closed connection fails
        wait_until(lambda: api.server.app.logbus.followers == 1, 10, "the place freed")
        assert _follow(api, job_id, timeout=1).status_code == 200
        second.close()
    finally:
        api.session.close()
        api.server.stop(grace=5)


def test_stopping_the_server_ends_every_follower(config: Config, runtime: FakeRuntime) -> None:
    api = start_api(config, runtime)
    job_id = _job(api, runtime)
    response = _follow(api, job_id, timeout=300)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(_chunks(response)))
    reader.start()
    wait_until(lambda: api.server.app.logbus.followers == 1, 10, "the follower")
    api.server.stop(grace=30)  # returns once in-flight requests are done
    reader.join(10)
    assert not reader.is_alive()
    assert b"".join(got) == _log(api, job_id)
    assert api.server.app.logbus.followers == 0
    api.session.close()


# --- the bus writing for parked followers (unit, with socket pairs) --------------------


def _parked_follower(
    tmp_path: Path, log: bytes, sndbuf: int | None = None
) -> tuple[LogBus, Subscription, Parked, socket.socket, threading.Thread]:
    """A follower asleep and parked at the end of `log`, its socket's peer unread."""
    path = tmp_path / "job.log"
    path.write_bytes(log)
    ours, peer = socket.socketpair()
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.setblocking(False)
    bus = LogBus(4)
    subscription = bus.subscribe("job_1")
    parked = Parked(os.open(path, os.O_RDONLY), ours.detach(), len(log))
    seen = subscription.seen()
    sleeper = threading.Thread(target=subscription.wait, args=(seen.version, 30, parked))
    sleeper.start()
    wait_until(lambda: bus.asleep("job_1") == 1, 10, "the follower to sleep")
    return bus, subscription, parked, peer, sleeper


def test_the_bus_writes_new_bytes_for_a_parked_follower_without_waking_it(
    tmp_path: Path,
) -> None:
    bus, subscription, parked, peer, sleeper = _parked_follower(tmp_path, b"old\n")
    with open(tmp_path / "job.log", "ab") as log:
        log.write(b"new line\n")
    bus.notify("job_1")
    assert peer.recv(100) == b"9\r\nnew line\n\r\n"
    assert not subscription.waker.is_set() and bus.asleep("job_1") == 1
    assert parked.offset == 13
    bus.notify("job_1", status=True)  # a status change wakes it: it re-checks the job
    sleeper.join(10)
    assert not sleeper.is_alive() and bus.asleep("job_1") == 0
    subscription.release()
    assert bus.followers == 0
    _close(parked, peer)


def _close(parked: Parked, peer: socket.socket) -> None:
    os.close(parked.log_fd)
    os.close(parked.sock_fd)
    peer.close()


def test_a_full_socket_hands_the_rest_to_the_followers_own_thread(tmp_path: Path) -> None:
    bus, subscription, parked, peer, sleeper = _parked_follower(tmp_path, b"", sndbuf=4096)
    data = os.urandom(200_000)  # far more than the socket buffers take; nobody reads
    (tmp_path / "job.log").write_bytes(data)
    bus.notify("job_1")
    sleeper.join(10)
    assert not sleeper.is_alive()  # woken: the rest is its to write (blocking)
    assert parked.offset == len(data) and parked.leftover and not parked.failed
    received = bytearray()
    while len(received) < len(chunk(data)) - len(parked.leftover):
        received += peer.recv(1 << 16)
    assert bytes(received) + parked.leftover == chunk(data)
    subscription.release()
    _close(parked, peer)


def test_a_client_that_left_wakes_its_follower_to_end(tmp_path: Path) -> None:
    bus, subscription, parked, peer, sleeper = _parked_follower(tmp_path, b"")
    peer.close()
    (tmp_path / "job.log").write_bytes(b"x\n")
    bus.notify("job_1")
    sleeper.join(10)
    assert not sleeper.is_alive() and parked.failed
    subscription.release()
    _close(parked, peer)
