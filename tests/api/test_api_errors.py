"""Every error code of api.md, produced over HTTP, each followed by a check that nothing
changed: no row, no directory or file, no container."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from api_fakes import FakeRuntime
from api_harness import TOKEN, Api, start_api
from flashpods.api.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def state(api: Api) -> dict[str, Any]:
    tables = {t: api.rows(t) for t in ("jobs", "idempotency_keys", "uploads", "artifacts")}
    files = []
    for root in (
        api.config.uploads_path,
        api.config.snapshots_path,
        api.config.artifacts_path,
        api.config.logs_path,
    ):
        for directory, dirs, names in os.walk(root):
            files += [os.path.join(directory, n) for n in dirs + names]
    return {
        "tables": tables,
        "files": sorted(files),
        "containers": sorted(api.runtime.containers),
        "started": list(api.runtime.started),
        "cancelled": list(api.runtime.cancelled),
    }


@contextmanager
def unchanged(api: Api) -> Iterator[None]:
    before = state(api)
    yield
    assert state(api) == before


def expect(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Request-Id"]
    text = response.text
    # No traceback, no host path (every test directory lives under /tmp).
    assert "Traceback" not in text and "/tmp/" not in text
    return body  # type: ignore[no-any-return]


def worker(**extra: Any) -> dict[str, Any]:
    return {"type": "worker", "command": "true", **extra}


def finished_job(api: Api, artifacts: dict[str, bytes] | None = None) -> str:
    job_id = api.post("/jobs", json=worker()).json()["job_id"]
    api.runtime.run(job_id)
    api.runtime.finish(job_id, 0, artifacts=artifacts or {"a.txt": b"a"})
    return job_id


# --- auth, routing, bodies ---------------------------------------------------------------


def test_auth_errors(api: Api) -> None:
    with unchanged(api):
        expect(api.post("/jobs", token=None, json=worker()), 401, "missing_authorization")
        expect(
            api.post("/jobs", token=None, json=worker(), headers={"Authorization": "Basic abc"}),
            401,
            "malformed_authorization",
        )
        expect(
            api.post("/jobs", token=None, json=worker(), headers={"Authorization": "Bearer"}),
            401,
            "malformed_authorization",
        )
        expect(api.post("/jobs", token="b" * 64, json=worker()), 401, "invalid_token")
        expect(api.get("/jobs", token=TOKEN[:-1]), 401, "invalid_token")
        # Unknown routes need the token too (no route discovery without it).
        expect(api.get("/nope", token=None), 401, "missing_authorization")
    assert api.get("/health", token=None).status_code == 200


def test_not_found_and_method_not_allowed(api: Api) -> None:
    with unchanged(api):
        expect(api.get("/nope"), 404, "not_found")
        expect(api.get("/jobs/job_0/extra/x"), 404, "not_found")
        body = expect(api.request("PUT", "/jobs"), 405, "method_not_allowed")
        assert set(body["details"]["allowed"]) == {"GET", "POST"}
        expect(api.request("PATCH", "/health"), 405, "method_not_allowed")
        for method in ("TRACE", "CONNECT", "PROPFIND", "FOO"):
            response = api.request(method, "/jobs")
            body = expect(response, 405, "method_not_allowed")
            assert response.headers["Allow"] == "POST, GET"
            assert body["details"]["allowed"] == ["POST", "GET"]
        expect(api.request("TRACE", "/nope"), 404, "not_found")


def test_invalid_json_and_payload_too_large(api: Api) -> None:
    with unchanged(api):
        expect(api.post("/jobs", data=b"{nope"), 400, "invalid_json")
        expect(api.post("/jobs", data=b"[1, 2]"), 400, "invalid_json")
        expect(api.post("/jobs", data=b"\xff\xfe"), 400, "invalid_json")
        expect(api.post("/jobs", data=b""), 400, "invalid_json")
        nan = b'{"type": "worker", "command": "x", "cpus": NaN}'
        expect(api.post("/jobs", data=nan), 400, "invalid_json")
        big = b'{"type": "worker", "command": "' + b"x" * (1024 * 1024) + b'"}'
        expect(api.post("/jobs", data=big), 413, "payload_too_large")


def test_malformed_request_line_gets_json(api: Api) -> None:
    host, port = api.server.server_address[:2]
    with socket.create_connection((str(host), int(port))) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):  # the server closes after an error like this
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 400") or reply.startswith("HTTP/1.0 400")
    assert '"error": "bad_request"' in reply and "<html" not in reply.lower()


def test_rate_limited(config: Config) -> None:
    from api_harness import with_config

    api = start_api(
        with_config(config, rate_limit_per_second=1.0, rate_limit_burst=3), FakeRuntime()
    )
    try:
        codes = []
        for _ in range(4):
            response = api.post("/jobs", data=b"{bad")
            codes.append(response.status_code)
        assert codes[:3] == [400, 400, 400]
        body = expect(response, 429, "rate_limited")
        assert body["details"]["retry_after_seconds"] > 0
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["X-RateLimit-Limit"] == "1"
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())
        assert api.rows("jobs") == []
    finally:
        api.server.stop(grace=2)


def test_internal_and_database_errors_hide_details(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_path = str(api.config.db_path)

    def explode(*_: Any) -> Any:
        raise RuntimeError(f"boom at {secret_path}")

    monkeypatch.setattr(api.server.app.jobs, "list", explode)
    body = expect(api.get("/jobs"), 500, "internal_error")
    assert secret_path not in str(body)

    def db_down(*_: Any) -> Any:
        raise sqlite3.OperationalError(f"disk I/O error in {secret_path}")

    monkeypatch.setattr(api.server.app.jobs, "require", db_down)
    body = expect(api.get("/jobs/job_0123456789abcdef"), 500, "database_error")
    assert secret_path not in str(body)


# --- uploads -----------------------------------------------------------------------------


def test_upload_errors(api: Api) -> None:
    with unchanged(api):
        expect(api.post("/uploads/upload_missing/finalize"), 404, "upload_not_found")
        expect(api.get("/uploads/upload_missing"), 404, "upload_not_found")
        expect(api.get("/uploads/upload_..%2F..%2Fetc"), 404, "upload_not_found")
        expect(api.post("/uploads/notanupload/finalize"), 404, "upload_not_found")
        expect(api.delete("/uploads/upload_missing"), 404, "upload_not_found")
    api.upload("upload_f", {"a": b"1"})
    with unchanged(api):
        expect(api.post("/uploads/upload_f/finalize"), 409, "upload_already_finalized")
    job_id = api.post("/jobs", json=worker(files_id="upload_f")).json()["job_id"]
    api.runtime.run(job_id)
    with unchanged(api):
        expect(api.post("/uploads/upload_f/finalize"), 409, "upload_already_consumed")
        expect(api.delete("/uploads/upload_f"), 409, "upload_already_consumed")
    api.upload("upload_e", {"a": b"1"})
    assert api.delete("/uploads/upload_e").status_code == 204
    with unchanged(api):
        expect(api.post("/uploads/upload_e/finalize"), 410, "upload_expired")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "upload_id"),
        ({"upload_id": None}, "upload_id"),
        ({"upload_id": 5}, "upload_id"),
        ({"upload_id": "upload_../../etc"}, "upload_id"),
        ({"upload_id": "job_0123456789abcdef"}, "upload_id"),
        ({"upload_id": "upload_" + "a" * 65}, "upload_id"),
        ({"upload_id": "upload_ok", "base_upload_id": "../snapshots/upload_x"}, "base_upload_id"),
        ({"upload_id": "upload_ok", "base_upload_id": ["upload_x"]}, "base_upload_id"),
        ({"upload_id": "upload_ok", "base_upload_id": ""}, "base_upload_id"),
    ],
)
def test_create_upload_validation(api: Api, body: dict[str, Any], field: str) -> None:
    with unchanged(api):
        error = expect(api.post("/uploads", json=body), 400, "invalid_upload_id")
    assert error["details"] == {"field": field}


def test_create_upload_refuses_an_id_in_use(api: Api) -> None:
    with unchanged(api):
        expect(api.post("/uploads", data=b"[1]"), 400, "invalid_json")
    api.upload("upload_done", {"a": b"1"})  # a row
    api.upload("upload_rsynced", {"a": b"1"}, finalize=False)  # rsync's directory, no row
    (api.config.uploads_path / "upload_link").symlink_to("/")
    for taken in ("upload_done", "upload_rsynced", "upload_link"):
        with unchanged(api):
            body = {"upload_id": taken, "base_upload_id": "upload_done"}
            error = expect(api.post("/uploads", json=body), 409, "upload_already_exists")
        assert error["details"] == {"upload_id": taken}
    assert (api.config.uploads_path / "upload_rsynced" / "a").read_bytes() == b"1"


def test_insufficient_storage_per_upload_and_total(config: Config) -> None:
    from api_harness import with_config

    api = start_api(
        with_config(config, upload_max_bytes=100, uploads_total_max_bytes=150), FakeRuntime()
    )
    try:
        api.upload("upload_big", {"a": b"x" * 101}, finalize=False)
        assert api.get("/uploads/upload_big").json()["state"] == "uploading"  # discovered
        with unchanged(api):
            body = expect(api.post("/uploads/upload_big/finalize"), 507, "insufficient_storage")
        assert body["details"]["max_upload_bytes"] == 100
        assert api.get("/uploads/upload_big").json()["state"] == "uploading"
        api.upload("upload_one", {"a": b"x" * 100})
        api.upload("upload_two", {"a": b"x" * 60}, finalize=False)
        api.get("/uploads/upload_two")
        with unchanged(api):
            expect(api.post("/uploads/upload_two/finalize"), 507, "insufficient_storage")
    finally:
        api.server.stop(grace=2)


def test_an_upload_over_the_entry_limit_is_refused_at_finalize(config: Config) -> None:
    """Entries are everything under the upload (files, directories, symlinks); exactly
    the limit is finalized, one more is 507 upload_too_many_entries and stays uploading."""
    from api_harness import with_config

    api = start_api(with_config(config, upload_max_entries=5), FakeRuntime())
    try:
        # 5 entries: the file a, directories d and d/e, the file d/e/f, the symlink l.
        root = api.upload("upload_five", {"a": b"1", "d/e/f": b""}, finalize=False)
        (root / "l").symlink_to("/etc")  # counted, never followed
        assert api.post("/uploads/upload_five/finalize").json()["state"] == "finalized"
        root = api.upload("upload_six", {"a": b"1", "d/e/f": b""}, finalize=False)
        (root / "l").symlink_to("/etc")
        (root / "d" / "empty").mkdir()
        api.get("/uploads/upload_six")  # discovered: a row exists before finalize
        with unchanged(api):
            body = expect(api.post("/uploads/upload_six/finalize"), 507, "upload_too_many_entries")
        assert body["details"] == {"entry_count": 6, "max_upload_entries": 5}
        assert api.get("/uploads/upload_six").json()["state"] == "uploading"
        assert not (api.config.snapshots_path / "upload_six").exists()
    finally:
        api.server.stop(grace=2)


# --- job creation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"type": "batch", "command": "x"}, "invalid_job_type"),
        ({"command": "x"}, "invalid_job_type"),
        ({"type": "worker"}, "missing_command"),
        ({"type": "worker", "command": ""}, "missing_command"),
        ({"type": "worker", "command": "x" * 10_001}, "missing_command"),
        ({"type": "agent", "git_branch": "b"}, "missing_task"),
        ({"type": "agent", "task": "t", "git_branch": "b", "context": 5}, "invalid_context"),
        ({"type": "agent", "task": "t"}, "missing_git_branch"),
        ({"type": "agent", "task": "t", "git_branch": "a..b"}, "missing_git_branch"),
        (worker(client_job_id="not-a-uuid"), "invalid_client_job_id"),
        (worker(client_job_id=str(uuid.uuid1())), "invalid_client_job_id"),
        (worker(image="Bad Image"), "invalid_image"),
        (worker(image="a" * 256), "invalid_image"),
        (worker(cpus=0), "invalid_cpus"),
        (worker(cpus=1.5), "invalid_cpus"),
        (worker(cpus="2"), "invalid_cpus"),
        (worker(memory_gb=-1), "invalid_memory"),
        (worker(memory_gb=True), "invalid_memory"),
        (worker(timeout_minutes=0), "invalid_timeout"),
        # Validation comes first: a bad type wins over a bad upload and bad resources.
        ({"type": "x", "files_id": "upload_nope", "cpus": 0}, "invalid_job_type"),
    ],
)
def test_create_validation_errors(api: Api, body: dict[str, Any], code: str) -> None:
    with unchanged(api):
        expect(api.post("/jobs", json=body), 400, code)


def test_create_upload_errors(api: Api) -> None:
    with unchanged(api):
        expect(api.post("/jobs", json=worker(files_id="upload_none")), 404, "upload_not_found")
        expect(api.post("/jobs", json=worker(files_id="../etc")), 404, "upload_not_found")
    api.upload("upload_open", {"a": b"1"}, finalize=False)
    with unchanged(api):
        expect(api.post("/jobs", json=worker(files_id="upload_open")), 409, "upload_not_finalized")
    api.get("/uploads/upload_open")  # discovered: a row in state uploading
    with unchanged(api):
        expect(api.post("/jobs", json=worker(files_id="upload_open")), 409, "upload_not_finalized")


def test_upload_changed_after_finalize_is_refused(api: Api) -> None:
    api.upload("upload_m", {"a": b"1"})
    # A late writer (an rsync still running during finalize) changes the snapshot.
    (api.config.snapshots_path / "upload_m" / "late").write_bytes(b"surprise")
    with unchanged(api):
        expect(api.post("/jobs", json=worker(files_id="upload_m")), 409, "upload_modified")


def test_idempotency_is_checked_before_upload_and_admission(api: Api) -> None:
    key = str(uuid.uuid4())
    first = api.post("/jobs", json=worker(client_job_id=key, cpus=8, memory_gb=16))
    assert first.status_code == 201
    with unchanged(api):
        # The host is full and the upload does not exist, yet the replay succeeds.
        replay = api.post("/jobs", json=worker(client_job_id=key, files_id="upload_none"))
        assert replay.status_code == 200 and replay.json()["job_id"] == first.json()["job_id"]
        expect(api.post("/jobs", json=worker(files_id="upload_none")), 404, "upload_not_found")
        expect(api.post("/jobs", json=worker()), 429, "insufficient_resources")


# --- jobs, logs, artifacts ---------------------------------------------------------------


def test_job_read_errors(api: Api) -> None:
    with unchanged(api):
        expect(api.get("/jobs/job_0123456789abcdef"), 404, "job_not_found")
        expect(api.delete("/jobs/job_0123456789abcdef"), 404, "job_not_found")
        expect(api.get("/jobs/job_0123456789abcdef/output"), 404, "job_not_found")
        expect(api.get("/jobs/job_0123456789abcdef/artifacts"), 404, "job_not_found")
        expect(api.get("/jobs/job_0123456789abcdef/artifacts/a.txt"), 404, "job_not_found")
        expect(api.get("/jobs", params={"limit": 0}), 400, "invalid_parameter")
        expect(api.get("/jobs", params={"limit": 101}), 400, "invalid_parameter")
        expect(api.get("/jobs", params={"status": "bogus"}), 400, "invalid_parameter")
        expect(api.get("/jobs?status="), 400, "invalid_parameter")
        for bad in ("%C2%B2", "", "9" * 5000, "%EF%BC%91", "1.0"):
            body = expect(api.get(f"/jobs?limit={bad}"), 400, "invalid_parameter")
            assert body["details"] == {"parameter": "limit"}


def test_malformed_content_length_is_a_bad_request(api: Api) -> None:
    host, port = api.server.server_address[:2]
    for bad in (b"9" * 5000, b"\xc2\xb2", b"-1", b"1e3"):
        with unchanged(api), socket.create_connection((str(host), int(port))) as sock:
            sock.sendall(
                b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + TOKEN.encode()
                + b"\r\nContent-Length: "
                + bad
                + b"\r\n\r\n{}"
            )
            chunks = []
            while chunk := sock.recv(65536):  # the server closes after this error
                chunks.append(chunk)
            reply = b"".join(chunks).decode()
        assert reply.startswith("HTTP/1.1 400"), reply
        assert '"error": "bad_request"' in reply and "Traceback" not in reply


def test_logs_errors(api: Api) -> None:
    job_id = api.post("/jobs", json=worker()).json()["job_id"]
    api.force_status(job_id, "pending")
    with unchanged(api):
        expect(api.get(f"/jobs/{job_id}/output"), 404, "logs_not_available")
    api.force_status(job_id, "starting")
    with unchanged(api):
        expect(api.get(f"/jobs/{job_id}/output", params={"tail": 0}), 400, "invalid_parameter")
        expect(api.get(f"/jobs/{job_id}/output", params={"tail": 10001}), 400, "invalid_parameter")
        expect(api.get(f"/jobs/{job_id}/output", params={"tail": "x"}), 400, "invalid_parameter")
        for bad in ("\u00b2", "", "9" * 5000, "-1", " 5"):
            body = expect(
                api.get(f"/jobs/{job_id}/output", params={"tail": bad}), 400, "invalid_parameter"
            )
            assert body["details"] == {"parameter": "tail"}
    api.force_status(job_id, "cleaned", logs_deleted_at=1)
    with unchanged(api):
        expect(api.get(f"/jobs/{job_id}/output"), 410, "logs_deleted")


def test_artifact_errors(api: Api) -> None:
    store = api.server.app.store
    running = api.post("/jobs", json=worker(cpus=1, memory_gb=1)).json()["job_id"]
    with unchanged(api):
        expect(api.get(f"/jobs/{running}/artifacts"), 404, "artifacts_not_available")
        expect(api.get(f"/jobs/{running}/artifacts/a.txt"), 404, "artifacts_not_available")
    api.runtime.run(running)
    api.runtime.containers[running].hooks.on_copying_artifacts(running)
    with unchanged(api):
        response = api.get(f"/jobs/{running}/artifacts/a.txt")
        expect(response, 503, "copy_in_progress")
        assert response.headers["Retry-After"]
        assert api.get(f"/jobs/{running}/artifacts").json()["copy_in_progress"] is True

    done = finished_job(api)
    with unchanged(api):
        for bad in ("%2E%2E", "a/%2E%2E/b", "%00x", " lead", "trail ", "a\\b", "a//b", "x" * 256):
            expect(api.get(f"/jobs/{done}/artifacts/{bad}"), 400, "invalid_artifact_name")
        expect(api.get(f"/jobs/{done}/artifacts/missing.txt"), 404, "artifact_not_found")
        for bad in ("bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000, "bytes=0-" + "9" * 19):
            body = expect(
                api.get(f"/jobs/{done}/artifacts/a.txt", headers={"Range": bad}),
                400,
                "invalid_parameter",
            )
            assert body["details"] == {"parameter": "Range"}
    store.execute("UPDATE jobs SET artifacts_deleted_at = 1 WHERE id = ?", (done,))
    with unchanged(api):
        expect(api.get(f"/jobs/{done}/artifacts"), 410, "artifacts_deleted")
        expect(api.get(f"/jobs/{done}/artifacts/a.txt"), 410, "artifacts_deleted")


def test_symlinked_artifact_is_never_served(api: Api) -> None:
    done = finished_job(api, {"link": b"placeholder", "d/f": b"1"})
    target = api.config.artifacts_path / done / "link"
    target.unlink()
    target.symlink_to("/etc/passwd")
    directory = api.config.artifacts_path / done / "d"
    (directory / "f").unlink()
    directory.rmdir()
    directory.symlink_to("/etc")
    with unchanged(api):
        expect(api.get(f"/jobs/{done}/artifacts/link"), 404, "artifact_not_found")
        expect(api.get(f"/jobs/{done}/artifacts/d/f"), 404, "artifact_not_found")


def test_cancel_ended_job(api: Api) -> None:
    done = finished_job(api)
    with unchanged(api):
        body = expect(api.delete(f"/jobs/{done}"), 409, "job_already_terminal")
    assert body["details"]["status"] == "completed"


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_job_bodies = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["worker", "agent", "", "WORKER"]) | _json_values,
        "command": st.text(max_size=30) | _json_values,
        "task": st.text(max_size=30) | _json_values,
        "context": _json_values,
        "git_branch": st.sampled_from(["main", "a..b", "-x", "feature/ok"]) | _json_values,
        "client_job_id": st.uuids(version=4).map(str) | _json_values,
        "files_id": st.sampled_from(["upload_nope", "../x"]) | _json_values,
        "image": st.sampled_from(["ubuntu:22.04", "Bad", "a@b"]) | _json_values,
        "cpus": _json_values,
        "memory_gb": _json_values,
        "timeout_minutes": _json_values,
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_job_bodies)
def test_any_job_body_gets_a_documented_answer(api: Api, body: dict[str, Any]) -> None:
    response = api.post("/jobs", json=body)
    assert response.status_code in (200, 201, 400, 404, 409, 429), response.text
    payload = response.json()
    if response.status_code >= 400:
        assert set(payload) <= {"error", "message", "details"} and payload["error"]
    else:
        assert payload["job_id"].startswith("job_")
        api.delete(f"/jobs/{payload['job_id']}")  # free its resources for the next example


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(segment=st.text(min_size=1, max_size=40), method=st.sampled_from(["GET", "POST", "DELETE"]))
def test_any_path_gets_a_json_answer(api: Api, segment: str, method: str) -> None:
    from urllib.parse import quote

    encoded = quote(segment, safe="")
    for path in (
        f"/uploads/{encoded}",
        f"/uploads/{encoded}/finalize",
        f"/jobs/{encoded}",
        f"/jobs/{encoded}/output",
        f"/jobs/job_0123456789abcdef/artifacts/{encoded}",
        f"/{encoded}",
    ):
        response = api.request(method, path)
        assert response.status_code in (200, 204, 400, 404, 405, 409, 410), (path, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]
