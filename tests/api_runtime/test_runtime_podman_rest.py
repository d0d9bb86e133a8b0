"""PodmanApi against a scripted HTTP server on a unix socket: the requests it sends, and
what it makes of answers a real podman gives only when something is wrong."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from flashpods.api.runtime import ContainerError
from flashpods.api.runtime.podman_rest import API_PREFIX, PodmanApi

GOING = b'{"cause":"no such container","message":"container 0f does not exist in database: no such container","response":500}'  # noqa: E501
MISSING = b'{"cause":"no such container","message":"no container with name or ID \\"x\\" found: no such container","response":404}'  # noqa: E501


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    hang_up: bool = False  # close the connection without answering
    stall: threading.Event | None = None  # answer only once this is set


@dataclass
class Script:
    replies: dict[tuple[str, str], Reply] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)

    def reply(self, method: str, path: str) -> Reply:
        self.seen.append((method, path))
        return self.replies.get((method, path.split("?")[0]), Reply(404, b"Not Found\n"))


def handler_for(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            reply = script.reply(self.command, self.path)
            if reply.stall is not None:
                reply.stall.wait(10)
            if reply.hang_up:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(reply.status)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Script, PodmanApi]]:
    script = Script()
    path = tmp_path / "podman.sock"
    server = Server(str(path), handler_for(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield script, PodmanApi(path, timeout=5)
    server.shutdown()
    server.server_close()
    thread.join(5)


def on(script: Script, method: str, path: str, reply: Reply) -> None:
    script.replies[(method, API_PREFIX + path)] = reply


def test_requests_carry_the_operation_in_method_path_and_query(served) -> None:
    script, api = served
    on(script, "POST", "/containers/job_1/start", Reply(304))
    on(script, "POST", "/containers/job_1/stop", Reply(204))
    on(script, "POST", "/containers/job_1/wait", Reply(200, b"137\n"))
    on(script, "DELETE", "/containers/job_1", Reply(200, b"[]"))
    on(script, "GET", "/containers/json", Reply(200, b'[{"Id":"abc"},{"Id":"def"}]'))
    api.start("job_1")
    api.stop("job_1", 10)
    assert api.wait("job_1") == 137
    assert api.remove("job_1") is True
    assert api.list_ids({"flashpods-job": "true", "flashpods-instance": "i 1"}) == ["abc", "def"]
    p = API_PREFIX
    assert script.seen == [
        ("POST", f"{p}/containers/job_1/start"),
        ("POST", f"{p}/containers/job_1/stop?timeout=10"),
        ("POST", f"{p}/containers/job_1/wait?condition=stopped&condition=exited"),
        ("DELETE", f"{p}/containers/job_1?force=true&timeout=0"),
        (
            "GET",
            f"{p}/containers/json?all=true&filters=%7B%22label%22%3A+%5B%22flashpods-job%3Dtrue"
            "%22%2C+%22flashpods-instance%3Di+1%22%5D%7D",
        ),
    ]


def test_a_name_is_one_path_segment(served) -> None:
    script, api = served
    with pytest.raises(ContainerError):  # no such route on the scripted server
        api.inspect("../../info")
    assert script.seen == [("GET", f"{API_PREFIX}/containers/..%2F..%2Finfo/json")]


def test_missing_needs_podmans_no_such_container(served) -> None:
    script, api = served
    on(script, "GET", "/containers/gone/json", Reply(404, MISSING))
    assert api.inspect("gone") is None
    # Removed while podman looked it up: a 500 that says so.
    on(script, "GET", "/containers/going/json", Reply(500, GOING))
    assert api.inspect("going") is None
    # A 404 of a route podman does not have (another API version) is not "missing".
    with pytest.raises(ContainerError) as raised:
        api.inspect("other")
    assert str(raised.value) == "podman inspect failed: Not Found"
    assert raised.value.cause == "podman inspect answered 404: Not Found"


def test_a_server_error_shows_podmans_message_without_paths(served) -> None:
    script, api = served
    body = b'{"cause":"x","message":"mount /var/lib/secret/x: permission denied","response":500}'
    on(script, "POST", "/containers/job_1/start", Reply(500, body))
    with pytest.raises(ContainerError) as raised:
        api.start("job_1")
    assert str(raised.value) == "podman start failed: mount <path>: permission denied"
    assert raised.value.cause == (
        "podman start answered 500: mount /var/lib/secret/x: permission denied"
    )


def test_an_empty_error_says_its_status(served) -> None:
    script, api = served
    on(script, "DELETE", "/containers/job_1", Reply(409, b""))
    with pytest.raises(ContainerError) as raised:
        api.remove("job_1")
    assert str(raised.value) == "podman rm failed: HTTP 409"


@pytest.mark.parametrize(
    ("call", "path", "body", "message"),
    [
        (lambda a: a.inspect("c"), "/containers/c/json", b"<html>", "podman answered no JSON"),
        (lambda a: a.inspect("c"), "/containers/c/json", b"[1]", "not a JSON object"),
        (lambda a: a.wait("c"), "/containers/c/wait", b'"soon"', "no exit code in the answer"),
        (lambda a: a.list_ids({}), "/containers/json", b"{}", "not a JSON list"),
        (lambda a: a.rootless(), "/info", b'{"host":{}}', "no host.security.rootless"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_an_error(
    served, call: Callable[[PodmanApi], object], path: str, body: bytes, message: str
) -> None:
    script, api = served
    method = "POST" if path.endswith("/wait") else "GET"
    on(script, method, path, Reply(200, body))
    with pytest.raises(ContainerError) as raised:
        call(api)
    assert message in str(raised.value)


def test_a_connection_dropped_before_the_answer_is_an_error(served) -> None:
    script, api = served
    on(script, "POST", "/containers/job_1/wait", Reply(hang_up=True))
    with pytest.raises(ContainerError) as raised:
        api.wait("job_1")
    assert str(raised.value) == "podman wait failed: no answer from podman (RemoteDisconnected)"


def test_requests_time_out_but_a_wait_does_not(served, tmp_path: Path) -> None:
    script, _ = served
    api = PodmanApi(tmp_path / "podman.sock", timeout=0.3)
    release = threading.Event()
    on(script, "GET", "/containers/job_1/json", Reply(200, b"{}", stall=release))
    on(script, "POST", "/containers/job_1/wait", Reply(200, b"0", stall=release))
    with pytest.raises(ContainerError) as raised:
        api.inspect("job_1")
    assert str(raised.value) == "podman inspect failed: no answer from podman (TimeoutError)"
    codes: list[int | None] = []
    waiter = threading.Thread(target=lambda: codes.append(api.wait("job_1")))
    waiter.start()
    waiter.join(1.0)  # three times the request timeout: still waiting
    assert waiter.is_alive() and codes == []
    release.set()
    waiter.join(5)
    assert codes == [0]
