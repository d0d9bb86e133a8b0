"""podman's REST API on the service's unix socket: one HTTP request per operation.

Every `podman --url …` call is a process of its own (a Go client starting, tens of ms,
far more on a loaded host); the same operation sent to the service that client would
talk to costs a connect and a few hundred bytes. The runtime makes every podman call
here, `create` too: its body (podman_spec.container_spec) is the one definition of a
job's container. The image is pulled (as the CLI's `create --pull=<policy>` did) by a
request of its own before the create: `POST /libpod/images/pull?reference=…&policy=…`
(pkg/api/server/register_images.go: policy "always" (its default), "missing", "newer",
"never"; 4.3 here refuses an unknown one with 400), whose 200 streams one JSON object a
line, a failure as {"error": …}.

Only libpod endpoints and parameters that podman 4.3 (Debian 12: the lab, CI) and
podman 5 (NixOS) both serve, under the oldest libpod API version podman 5 still accepts
(4.0.0). A failure becomes a ContainerError as the CLI's did: `podman <operation>
failed: <podman's message, host paths scrubbed>` to show, podman's whole answer (paths
kept) for the service's own log.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from flashpods.api.runtime import ContainerError
from flashpods.api.runtime.podman_spec import one_line, scrub_paths
from flashpods.common.unixhttp import UnixHTTPConnection

API_PREFIX = "/v4.0.0/libpod"
REQUEST_TIMEOUT_SECONDS = 120.0
# A pull may take a while (the bound the CLI's create, which pulled, had).
PULL_TIMEOUT_SECONDS = 600.0
WAIT_CONDITIONS = ("stopped", "exited")

Query = list[tuple[str, str]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def error_text(self) -> str:
        """podman's words: the `message` of its error body ({"cause", "message",
        "response"}), else the body as text."""
        try:
            data = json.loads(self.body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
        return self.body.decode("utf-8", "replace").strip()

    def is_missing(self) -> bool:
        """podman says there is no such container: a 404, or a 500 when it went while
        podman looked at it ("does not exist in database"). A 404 of an unknown route (a
        podman without the endpoint) is not that: it is an error."""
        if self.status not in (404, 500):
            return False
        try:
            data = json.loads(self.body)
        except ValueError:
            return False
        return isinstance(data, dict) and "no such container" in str(data.get("cause", ""))

    def json(self, operation: str) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ContainerError(
                f"podman {operation} failed: podman answered no JSON",
                f"podman {operation} answered {self.status} without JSON: {self.body[:200]!r}",
            ) from exc


def _json_lines(data: bytes) -> list[Any]:
    """The JSON values of a body of one per line (podman's pull progress: its encoder
    ends each with a newline); a line that is not JSON is skipped."""
    values = []
    for line in data.splitlines():
        try:
            values.append(json.loads(line))
        except ValueError:
            continue
    return values


def _failed(operation: str, answer: Answer) -> ContainerError:
    said = answer.error_text()
    return ContainerError(
        f"podman {operation} failed: {scrub_paths(said) or f'HTTP {answer.status}'}",
        f"podman {operation} answered {answer.status}: {one_line(said)}",
    )


class PodmanApi:
    """The container operations the runtime needs, against `socket_path`. Thread-safe:
    every call opens its own connection."""

    def __init__(self, socket_path: Path, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    # ---- transport -----------------------------------------------------------------

    def request(
        self,
        operation: str,
        method: str,
        path: str,
        query: Query | None = None,
        *,
        timeout: float | None,
        body: Any = None,
    ) -> Answer:
        """One request (`body`, if any, sent as JSON); ContainerError when podman cannot
        be reached or the exchange breaks off (the service went away mid-request).
        `timeout` None: no limit."""
        target = API_PREFIX + path + (f"?{urlencode(query)}" if query else "")
        conn = UnixHTTPConnection(self.socket_path, timeout)
        try:
            if body is None:
                conn.request(method, target)
            else:
                headers = {"Content-Type": "application/json"}
                conn.request(method, target, json.dumps(body).encode(), headers)
            response = conn.getresponse()
            return Answer(response.status, response.read())
        except (OSError, http.client.HTTPException) as exc:
            reason = type(exc).__name__
            raise ContainerError(
                f"podman {operation} failed: no answer from podman ({reason})",
                f"podman {operation}: {method} {target} on {self.socket_path}: {reason}: {exc}",
            ) from exc
        finally:
            conn.close()

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        query: Query | None = None,
        body: Any = None,
    ) -> Answer:
        return self.request(operation, method, path, query, timeout=self.timeout, body=body)

    @staticmethod
    def _container(name: str) -> str:
        return "/containers/" + quote(name, safe="")

    def _expect(self, operation: str, answer: Answer, *ok: int) -> Answer:
        if answer.status not in ok:
            raise _failed(operation, answer)
        return answer

    # ---- operations ----------------------------------------------------------------

    def rootless(self) -> bool:
        """Does the service run rootless (`podman info`: host.security.rootless)?"""
        answer = self._expect("info", self._call("info", "GET", "/info"), 200)
        info = answer.json("info")
        try:
            return bool(info["host"]["security"]["rootless"])
        except (KeyError, TypeError) as exc:
            raise ContainerError(
                "podman info failed: no host.security.rootless in its answer",
                f"podman info answered without host.security.rootless: {answer.body[:200]!r}",
            ) from exc

    def inspect(self, name: str) -> dict[str, Any] | None:
        """`podman container inspect`'s object for one container; None if it does not exist."""
        answer = self._call("inspect", "GET", self._container(name) + "/json")
        if answer.is_missing():
            return None
        data = self._expect("inspect", answer, 200).json("inspect")
        if not isinstance(data, dict):
            raise _failed("inspect", Answer(answer.status, b"not a JSON object"))
        return data

    def pull(self, image: str, policy: str) -> None:
        """Make `image` present as the pull `policy` says (podman's --pull values:
        always, missing, never, newer), within PULL_TIMEOUT_SECONDS. podman streams its
        progress as JSON objects after a 200, a failure as one with an `error`. To show,
        a failure reads as the create's did when the CLI's create pulled (`podman create
        failed: …`); the log line says it was the pull."""
        query = [("reference", image), ("policy", policy)]
        timeout = max(self.timeout, PULL_TIMEOUT_SECONDS)
        answer = self.request("create", "POST", "/images/pull", query, timeout=timeout)
        if answer.status == 200:
            said = [
                str(item["error"])
                for item in _json_lines(answer.body)
                if isinstance(item, dict) and item.get("error")
            ]
            if not said:
                return
            answer = Answer(answer.status, json.dumps({"message": said[-1]}).encode())
        failed = _failed("create", answer)
        raise ContainerError(str(failed), f"pulling {image} (policy {policy}): {failed.cause}")

    def create(self, body: dict[str, Any]) -> str:
        """Create a container from a SpecGenerator (podman_spec.container_spec); its id."""
        answer = self._expect(
            "create", self._call("create", "POST", "/containers/create", body=body), 201
        )
        created = answer.json("create")
        if not isinstance(created, dict) or not isinstance(created.get("Id"), str):
            raise _failed("create", Answer(answer.status, b"no container id in the answer"))
        return str(created["Id"])

    def start(self, name: str) -> None:
        """Start it; already running is fine (304)."""
        answer = self._call("start", "POST", self._container(name) + "/start")
        self._expect("start", answer, 204, 304)

    def wait(self, name: str) -> int | None:
        """Block until the container has stopped or exited and its conmon is gone (podman
        4.3 and 5 both wait for conmon, which runs `podman container cleanup` first); its
        exit code, or None when it does not exist (any more). No time limit."""
        query = [("condition", condition) for condition in WAIT_CONDITIONS]
        path = self._container(name) + "/wait"
        answer = self.request("wait", "POST", path, query, timeout=None)
        if answer.is_missing():
            return None
        code = self._expect("wait", answer, 200).json("wait")
        if not isinstance(code, int):
            raise _failed("wait", Answer(answer.status, b"no exit code in the answer"))
        return code

    def stop(self, name: str, grace_seconds: int) -> None:
        """SIGTERM (the container's stop signal), `grace_seconds`, SIGKILL; returns once it
        is down. Already stopped is fine (304)."""
        query = [("timeout", str(grace_seconds))]
        answer = self.request(
            "stop",
            "POST",
            self._container(name) + "/stop",
            query,
            timeout=self.timeout + grace_seconds,
        )
        self._expect("stop", answer, 204, 304)

    def remove(self, name: str) -> bool:
        """Kill (no grace) and remove it; False when there was no such container."""
        query = [("force", "true"), ("timeout", "0")]
        answer = self._call("rm", "DELETE", self._container(name), query)
        if answer.is_missing():
            return False
        self._expect("rm", answer, 200, 204)
        return True

    def list_ids(self, labels: dict[str, str]) -> list[str]:
        """IDs of every container (any state) carrying all of `labels`."""
        filters = json.dumps({"label": [f"{key}={value}" for key, value in labels.items()]})
        query = [("all", "true"), ("filters", filters)]
        answer = self._expect("ps", self._call("ps", "GET", "/containers/json", query), 200)
        listed = answer.json("ps")
        if not isinstance(listed, list):
            raise _failed("ps", Answer(answer.status, b"not a JSON list"))
        return [str(item["Id"]) for item in listed if isinstance(item, dict) and "Id" in item]
