"""Configuration, the console script's start-up failures, HTTP details (headers, Range,
streaming), graceful stop, and the OpenAPI document against the routing table."""

from __future__ import annotations

import functools
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_fakes import FakeRuntime
from api_harness import TOKEN, Api, make_env, start_api
from flashpods.api.config import Config, ConfigError, load_config
from flashpods.api.http import ROUTES
from flashpods.api.validation import IMAGE_RE, is_valid_branch
from flashpods.common.artifact_names import artifact_name_problem
from flashpods.common.jsonhttp import HTTP_SERVER_ERROR_CODES
from flashpods.common.polling import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]

# --- configuration -----------------------------------------------------------------------


def test_config_from_environment(tmp_path: Path) -> None:
    env = make_env(
        tmp_path,
        FLASHPODS_LISTEN_ADDR="10.0.0.1:8080",
        FLASHPODS_ARTIFACTS_TTL_SECONDS="60",
        FLASHPODS_RATE_LIMIT_PER_SECOND="5.5",
        FLASHPODS_INSTANCE="test-1",
    )
    config = load_config(env)
    assert (config.listen_host, config.listen_port) == ("10.0.0.1", 8080)
    assert config.token == TOKEN and config.artifacts_ttl == 60
    assert config.rate_limit_per_second == 5.5 and config.instance == "test-1"
    assert config.snapshots_path == tmp_path / "snapshots" and config.snapshots_path.is_dir()
    assert (config.host_cpus, config.host_memory_gb) == (8, 16)
    env.pop("FLASHPODS_HOST_CPUS")
    assert load_config(env).host_cpus == len(os.sched_getaffinity(0))


def test_systemd_credential_wins(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-token").write_text("from-credential\n")
    env = make_env(tmp_path, CREDENTIALS_DIRECTORY=str(creds), FLASHPODS_TOKEN_FILE="/nonexistent")
    assert load_config(env).token == "from-credential"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"FLASHPODS_TOKEN_FILE": "/nonexistent/token"}, "does not exist"),
        ({"FLASHPODS_LISTEN_ADDR": "nonsense"}, "HOST:PORT"),
        ({"FLASHPODS_HOST_CPUS": "0"}, "at least 1"),
        ({"FLASHPODS_LOGS_TTL_SECONDS": "soon"}, "must be a number"),
        ({"FLASHPODS_PULL_POLICY": "sometimes"}, "PULL_POLICY"),
        ({"FLASHPODS_UPLOADS_PATH": "/proc/no/such"}, "cannot be created"),
    ],
)
def test_bad_configuration(tmp_path: Path, change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(make_env(tmp_path, **change))


def test_empty_token_and_bad_database(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    Path(env["FLASHPODS_TOKEN_FILE"]).write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(env)
    env = make_env(tmp_path)
    Path(env["FLASHPODS_DB_PATH"]).parent.mkdir(parents=True)
    Path(env["FLASHPODS_DB_PATH"]).write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigError, match="not readable"):
        load_config(env)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"FLASHPODS_TOKEN_FILE": "/nonexistent/token"}, "does not exist"),
        ({"FLASHPODS_LOG_MAX_BYTES": "10"}, "FLASHPODS_LOG_MAX_BYTES"),  # the runtime's check
        ({"FLASHPODS_LISTEN_ADDR": "taken"}, "cannot listen"),
    ],
)
def test_console_script_fails_with_one_line(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if change.get("FLASHPODS_LISTEN_ADDR") == "taken":
            change = {"FLASHPODS_LISTEN_ADDR": f"127.0.0.1:{taken.getsockname()[1]}"}
        result = subprocess.run(
            [sys.executable, "-m", "flashpods.api.main"],
            env={**os.environ, **make_env(tmp_path, **change)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


# --- HTTP details --------------------------------------------------------------------------


def test_headers_on_every_response(api: Api) -> None:
    mine = str(uuid.uuid4())
    echoed = api.get("/health", token=None, headers={"X-Request-Id": mine})
    assert echoed.headers["X-Request-Id"] == mine
    fresh = api.get("/nope", headers={"X-Request-Id": "<bad id>"})
    assert uuid.UUID(fresh.headers["X-Request-Id"])
    body = api.get("/health", token=None).json()
    assert body["status"] == "healthy" and body["version"] and body["uptime_seconds"] >= 0


def test_rate_limit_headers(tmp_path: Path) -> None:
    config = load_config(make_env(tmp_path, FLASHPODS_RATE_LIMIT_PER_SECOND="100"))
    api = start_api(config, FakeRuntime())
    try:
        response = api.get("/health", token=None)
        assert response.headers["X-RateLimit-Limit"] == "100"
        assert response.headers["X-RateLimit-Remaining"] == "9"
        assert abs(int(response.headers["X-RateLimit-Reset"]) - time.time()) < 5
    finally:
        api.server.stop(grace=2)


def test_range_downloads_and_streaming(api: Api) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    job_id = api.post("/jobs", json={"type": "worker", "command": "x"}).json()["job_id"]
    api.runtime.run(job_id)
    api.runtime.finish(job_id, 0, artifacts={"data/blob.bin": payload, "empty": b""})
    url = f"/jobs/{job_id}/artifacts/data/blob.bin"
    whole = api.get(url, stream=True)
    assert int(whole.headers["Content-Length"]) == len(payload)
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert b"".join(whole.iter_content(65536)) == payload
    part = api.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == payload[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(payload)}"
    suffix = api.get(url, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == payload[-10:]
    bad = api.get(url, headers={"Range": f"bytes={len(payload)}-"})
    assert bad.status_code == 416 and bad.json()["error"] == "range_not_satisfiable"
    assert bad.headers["Content-Range"] == f"bytes */{len(payload)}"
    empty = api.get(f"/jobs/{job_id}/artifacts/empty")
    assert empty.status_code == 200 and empty.content == b""
    # Keep-alive still works after all of that.
    assert api.get("/health", token=None).status_code == 200


def test_graceful_stop_finishes_requests_in_flight(api: Api) -> None:
    started, release = threading.Event(), threading.Event()
    original = api.server.app.jobs.list

    def slow_list(status: str, limit: int) -> dict[str, object]:
        started.set()
        release.wait(10)
        return original(status, limit)

    api.server.app.jobs.list = slow_list  # type: ignore[method-assign]
    host, port = str(api.server.server_address[0]), int(api.server.server_address[1])
    idle = socket.create_connection((host, port))  # an idle keep-alive connection
    result: dict[str, object] = {}

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=20)
        connection.request("GET", "/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        result["status"], result["body"] = response.status, response.read()

    in_flight = threading.Thread(target=client)
    in_flight.start()
    assert started.wait(10)
    job_id = api.post("/jobs", json={"type": "worker", "command": "x"}).json()["job_id"]
    api.runtime.run(job_id)
    stopper = threading.Thread(target=api.server.stop, kwargs={"grace": 10})
    stopper.start()
    wait_until(lambda: api.server.closing, 10, "the stop to begin")
    release.set()
    in_flight.join(10)
    stopper.join(10)
    assert result["status"] == 200
    assert idle.recv(1) == b""  # closed by the server, not left hanging
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()
    assert api.runtime.cancelled == [] and job_id in api.runtime.containers  # jobs untouched


def test_sigterm_stops_the_real_process(tmp_path: Path) -> None:
    """`flashpods-api` as a process: serves, then exits 0 on SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        **make_env(tmp_path, FLASHPODS_LISTEN_ADDR=f"127.0.0.1:{port}"),
        "FLASHPODS_PODMAN_SOCKET": str(tmp_path / "no-podman.sock"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "flashpods.api.main"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:

        def healthy() -> bool:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                return connection.getresponse().status == 200
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                return False

        wait_until(healthy, 10, "flashpods-api to serve /health", interval=0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- OpenAPI -----------------------------------------------------------------------------


def test_openapi_matches_the_routes() -> None:
    document = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    served = {(route.method, route.template) for route in ROUTES}
    assert documented == served
    shared = document.get("components", {}).get("parameters", {})

    def resolved(parameter: dict[str, str]) -> dict[str, str]:
        if "$ref" in parameter:
            return shared[parameter["$ref"].rsplit("/", 1)[-1]]  # type: ignore[no-any-return]
        return parameter

    for path, item in document["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            if method == "parameters":
                continue
            params = [
                resolved(p) for p in item.get("parameters", []) + operation.get("parameters", [])
            ]
            assert names == {p["name"] for p in params if p["in"] == "path"}, (method, path)
            assert operation.get("responses"), (method, path)


@functools.cache
def _openapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
    return document


def test_openapi_image_pattern_is_the_validators() -> None:
    common = _openapi()["components"]["schemas"]["JobCreateCommon"]
    assert common["properties"]["image"]["pattern"] == f"^{IMAGE_RE.pattern}$"


@functools.cache
def _artifact_name_pattern() -> re.Pattern[str]:
    (param,) = [
        p
        for p in _openapi()["paths"]["/jobs/{job_id}/artifacts/{name}"]["parameters"]
        if p.get("name") == "name"
    ]
    return re.compile(param["schema"]["pattern"])


@functools.cache
def _branch_pattern() -> re.Pattern[str]:
    agent = _openapi()["components"]["schemas"]["AgentJobCreate"]["allOf"][1]
    return re.compile(agent["properties"]["git_branch"]["pattern"])


NAME_PIECES = st.sampled_from(
    ["a", "b.txt", ".", "..", "/", "\\", "\x00", " ", "\t", "é", "x" * 255]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(NAME_PIECES, max_size=6).map("".join) | st.text(max_size=30))
def test_openapi_artifact_name_pattern_is_the_validators_rule(name: str) -> None:
    documented = _artifact_name_pattern().fullmatch(name) is not None
    assert documented == (artifact_name_problem(name) is None), name


BRANCH_PIECES = st.sampled_from(["main", "/", ".", "..", "-", "@{", "@", ".lock", "~", " ", "a"])


@settings(max_examples=400, deadline=None)
@given(st.lists(BRANCH_PIECES, max_size=6).map("".join) | st.text(max_size=20))
def test_openapi_branch_pattern_is_the_validators_rule(branch: str) -> None:
    documented = _branch_pattern().fullmatch(branch) is not None
    assert documented == is_valid_branch(branch), branch


def test_openapi_documents_every_error_code() -> None:
    text = (REPO / "docs" / "openapi.yaml").read_text()
    sources = [REPO / "services" / "flashpods" / "api", REPO / "services" / "flashpods" / "common"]
    codes = set(HTTP_SERVER_ERROR_CODES.values())
    for directory in sources:
        for path in directory.glob("*.py"):
            codes |= set(re.findall(r'ServiceError\(\s*\d{3},\s*"([a-z_]+)"', path.read_text()))
            codes |= set(re.findall(r'_bad\(\s*"([a-z_]+)"', path.read_text()))
    assert {"invalid_token", "malformed_authorization", "upload_expired"} <= codes
    missing = sorted(code for code in codes if code not in text)
    assert not missing, f"error codes not in docs/openapi.yaml: {missing}"


DESIGN_API_MD = Path("/work/shared/design/api.md")


def design_error_codes(api_md: str) -> set[str]:
    """The codes api.md names beside an HTTP status: in each paragraph, list item or table
    row that has a 4xx/5xx status, every backticked snake_case name."""
    codes: set[str] = set()
    for paragraph in re.split(r"\n\s*\n", api_md):
        for piece in re.split(r"\n(?=\||- )", paragraph):
            if re.search(r"\b[45]\d\d\b", piece):
                codes |= set(re.findall(r"`([a-z]+_[a-z_]+)`", piece))
    return codes


def test_docs_document_every_error_code_of_the_design() -> None:
    if not DESIGN_API_MD.exists():
        pytest.skip(f"{DESIGN_API_MD} (the design contract) is not on this machine")
    codes = design_error_codes(DESIGN_API_MD.read_text())
    assert {"upload_expired", "missing_authorization", "insufficient_resources"} <= codes
    # HTTP errors in the API reference; a job's failure reasons in docs/runtime.md.
    docs = (REPO / "docs" / "openapi.yaml").read_text() + (REPO / "docs" / "runtime.md").read_text()
    missing = sorted(code for code in codes if code not in docs)
    assert not missing, f"error codes of api.md missing from docs/: {missing}"


def test_download_names_cannot_inject_headers(api: Api) -> None:
    job_id = api.post("/jobs", json={"type": "worker", "command": "x"}).json()["job_id"]
    api.runtime.run(job_id)
    name = "résumé\r\nX-Evil: 1.txt"
    api.runtime.finish(job_id, 0, artifacts={name: b"cv"})
    response = api.get(f"/jobs/{job_id}/artifacts/r%C3%A9sum%C3%A9%0D%0AX-Evil%3A%201.txt")
    assert response.status_code == 200 and response.content == b"cv"
    assert "X-Evil" not in response.headers
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="r_sum___X-Evil: 1.txt"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9%0D%0AX-Evil%3A%201.txt"
    )


def test_binds_before_its_address_exists(config: Config) -> None:
    """10.0.0.1 exists only once wg0 is up; IP_FREEBIND lets the API start before that."""
    from dataclasses import replace

    from flashpods.api.server import build_server

    absent = "192.0.2.77"  # TEST-NET-1, configured on no interface here
    assert absent not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    server = build_server(
        replace(config, listen_host=absent, listen_port=0), FakeRuntime(), background=False
    )
    try:
        assert server.server_address[0] == absent
    finally:
        server.server_close()
        server.app.store.close()


def test_every_job_error_code_is_documented() -> None:
    from flashpods.api.recovery import Action
    from flashpods.api.runtime import artifacts_collect, supervisor

    codes = {action.value for action in Action if action.name.startswith("FAIL_")}
    codes |= set(artifacts_collect._ERRNO_CODES.values()) | {artifacts_collect.COPY_TIMEOUT}
    codes |= {supervisor.FINISH_FAILED, "oom_killed", "container_lost"}
    for doc in ("openapi.yaml", "runtime.md"):
        text = (REPO / "docs" / doc).read_text()
        missing = sorted(code for code in codes if code not in text)
        assert not missing, f"job error codes not in docs/{doc}: {missing}"
