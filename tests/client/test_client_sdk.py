"""The SDK against a scripted server: retries, idempotency keys, error shape, downloads."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
from client_stub import TOKEN, Reply, Seen, Stub, error, log_piece, output_replies, query
from flashpods.client.bases import UploadBases
from flashpods.client.errors import FlashpodsError
from flashpods.client.sdk import Flashpods

CREATED = Reply(201, {"job_id": "job_0123456789abcdef", "status": "pending", "created": True})
JOB = "/jobs/job_0123456789abcdef"


def test_throttled_create_backs_off_and_reuses_one_idempotency_key(stub: Stub) -> None:
    stub.script.on(
        "POST",
        "/jobs",
        error(429, "insufficient_resources"),
        error(429, "insufficient_resources"),
        error(503, "service_unavailable"),
        CREATED,
    )
    created = stub.client().create_worker("make test", cpus=2)
    assert created.job_id == "job_0123456789abcdef" and created.created
    sent = stub.script.requests("POST", "/jobs")
    assert len(sent) == 4
    keys = {s.body["client_job_id"] for s in sent}
    assert len(keys) == 1 and uuid.UUID(keys.pop()).version == 4
    assert len({s.headers["X-Request-Id"] for s in sent}) == 1
    assert all(s.headers["Authorization"] == f"Bearer {TOKEN}" for s in sent)
    assert sent[0].body == {
        "type": "worker",
        "command": "make test",
        "cpus": 2,
        "client_job_id": sent[0].body["client_job_id"],
    }
    assert stub.sleeps == [1, 2, 4]
    assert [(e.reason, e.status) for e in stub.retries] == [
        ("insufficient_resources", 429),
        ("insufficient_resources", 429),
        ("service_unavailable", 503),
    ]


def test_two_logical_creates_use_two_keys(stub: Stub) -> None:
    stub.script.on("POST", "/jobs", CREATED)
    client = stub.client()
    client.create_worker("true")
    client.create_worker("true")
    keys = [s.body["client_job_id"] for s in stub.script.requests("POST", "/jobs")]
    assert len(set(keys)) == 2


def test_retry_after_header_is_honoured(stub: Stub) -> None:
    stub.script.on(
        "GET",
        JOB,
        error(429, "rate_limited", **{"Retry-After": "3"}),
        Reply(200, {"id": JOB[6:], "type": "worker", "status": "running"}),
    )
    job = stub.client().get_job(JOB[6:])
    assert job.status == "running"
    assert stub.sleeps == [3.0]


def test_retry_after_in_the_body_is_used_without_the_header(stub: Stub) -> None:
    body = {"error": "rate_limited", "message": "slow down", "details": {"retry_after_seconds": 2}}
    stub.script.on("GET", "/jobs", Reply(429, body), Reply(200, {"jobs": [], "total": 0}))
    assert stub.client().list_jobs().total == 0
    assert stub.sleeps == [2.0]


def test_gives_up_after_five_throttled_tries_with_the_apis_error(stub: Stub) -> None:
    body = {"error": "copy_in_progress", "message": "still copying", "details": {"job_id": "j"}}
    stub.script.on("GET", JOB + "/artifacts", Reply(503, body, {"X-Request-Id": "rid-1"}))
    with pytest.raises(FlashpodsError) as err:
        stub.client().list_artifacts(JOB[6:])
    assert (err.value.code, err.value.status) == ("copy_in_progress", 503)
    assert err.value.details == {"job_id": "j"}
    assert err.value.request_id == "rid-1"
    assert len(stub.script.requests("GET", JOB + "/artifacts")) == 5
    assert stub.sleeps == [1, 2, 4, 8]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_cpus"),
        (401, "invalid_token"),
        (404, "job_not_found"),
        (409, "job_already_terminal"),
        (500, "internal_error"),
    ],
)
def test_other_errors_are_not_retried(stub: Stub, status: int, code: str) -> None:
    stub.script.on("DELETE", JOB, error(status, code))
    with pytest.raises(FlashpodsError) as err:
        stub.client().kill(JOB[6:])
    assert (err.value.code, err.value.status) == (code, status)
    assert len(stub.script.requests("DELETE", JOB)) == 1
    assert stub.sleeps == []


def test_a_non_api_error_page_still_gives_code_and_status(stub: Stub) -> None:
    stub.script.on(
        "GET", "/health", Reply(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"})
    )
    with pytest.raises(FlashpodsError) as err:
        stub.client().health()
    assert (err.value.code, err.value.status) == ("http_error", 502)
    assert "bad gateway" in err.value.message


def test_dropped_connections_are_retried_three_times_in_all(stub: Stub) -> None:
    stub.script.on(
        "GET",
        "/health",
        Reply(drop=True),
        Reply(drop=True),
        Reply(200, {"status": "healthy", "version": "0.1.0", "uptime_seconds": 3}),
    )
    assert stub.client().health().status == "healthy"
    assert stub.sleeps == [1, 2]
    assert [e.reason for e in stub.retries] == ["network_error", "network_error"]

    stub.sleeps.clear()
    stub.script.on("GET", "/health", Reply(drop=True))
    with pytest.raises(FlashpodsError) as err:
        stub.client().health()
    assert (err.value.code, err.value.status) == ("network_error", None)
    assert stub.sleeps == [1, 2]


def test_nothing_listening_is_a_network_error_after_three_tries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    client = Flashpods(f"http://127.0.0.1:{port}", "t", sleep=sleeps.append)
    with pytest.raises(FlashpodsError) as err:
        client.health()
    assert err.value.code == "network_error"
    assert sleeps == [1, 2]


def test_kill_whose_first_send_landed_reports_the_cancellation(stub: Stub) -> None:
    stub.script.on("DELETE", JOB, Reply(drop=True), error(409, "job_already_terminal"))
    stub.script.on(
        "GET",
        JOB,
        Reply(200, {"id": JOB[6:], "type": "worker", "status": "cancelled", "exit_code": 137}),
    )
    result = stub.client().kill(JOB[6:])
    assert (result.job_id, result.status) == (JOB[6:], "cancelled")


def test_finalize_whose_first_send_landed_returns_the_upload(stub: Stub) -> None:
    path = "/uploads/upload_abc"
    stub.script.on(
        "POST", path + "/finalize", Reply(drop=True), error(409, "upload_already_finalized")
    )
    stub.script.on(
        "GET",
        path,
        Reply(
            200, {"upload_id": "upload_abc", "state": "finalized", "size_bytes": 5, "file_count": 1}
        ),
    )
    assert stub.client().finalize_upload("upload_abc").state == "finalized"
    # Without an earlier lost send, the API's 409 stands.
    stub.script.on("POST", path + "/finalize", error(409, "upload_already_finalized"))
    with pytest.raises(FlashpodsError) as err:
        stub.client().finalize_upload("upload_abc")
    assert err.value.code == "upload_already_finalized"


def test_ids_cannot_change_the_route(stub: Stub) -> None:
    with pytest.raises(FlashpodsError):
        stub.client().get_job("../uploads/upload_x")
    assert [s.path for s in stub.script.seen] == ["/jobs/..%2Fuploads%2Fupload_x"]


def test_wait_polls_until_the_job_has_ended(stub: Stub) -> None:
    def job(status: str, code: int | None = None) -> Reply:
        return Reply(200, {"id": JOB[6:], "type": "worker", "status": status, "exit_code": code})

    stub.script.on(
        "GET",
        JOB,
        job("pending"),
        job("starting"),
        job("running"),
        job("running"),
        job("failed", 3),
    )
    seen: list[str] = []
    final = stub.client().wait(JOB[6:], on_status=lambda j: seen.append(j.status))
    assert (final.status, final.exit_code) == ("failed", 3)
    assert seen == ["pending", "starting", "running", "failed"]


def upload_object(upload_id: str, state: str, **fields: Any) -> dict[str, Any]:
    return {
        "upload_id": upload_id,
        "state": state,
        "size_bytes": None,
        "file_count": None,
        **fields,
    }


def created_upload(seen: Seen) -> Reply:
    """POST /uploads as the API answers it when the base named is usable."""
    body = seen.body
    return Reply(
        201,
        upload_object(
            body["upload_id"],
            "uploading",
            base_upload_id=body["base_upload_id"],
            base_unavailable=None,
        ),
    )


def finalized_upload(seen: Seen) -> Reply:
    return Reply(200, upload_object(seen.path.split("/")[2], "finalized", size_bytes=1))


def test_failed_upload_is_deleted_so_it_does_not_hold_quota(stub: Stub, tmp_path: Path) -> None:
    stub.script.on("POST", "/uploads", created_upload)
    stub.script.on("DELETE", "/uploads/upload_x1", Reply(204))
    (tmp_path / "src").mkdir()
    bases = UploadBases(tmp_path / "cache")
    bases.remember(stub.url, tmp_path / "src", "upload_x0")
    with pytest.raises(FlashpodsError) as err:
        stub.client(rsync_url="rsync://127.0.0.1:1/uploads", upload_bases=bases).upload(
            tmp_path / "src", upload_id="upload_x1"
        )
    assert err.value.code == "upload_failed"
    assert len(stub.script.requests("DELETE", "/uploads/upload_x1")) == 1
    assert stub.script.requests("POST", "/uploads/upload_x1/finalize") == []
    assert bases.get(stub.url, tmp_path / "src") == "upload_x0"  # still the last good one


def test_an_upload_starts_from_the_folders_last_one(stub: Stub, tmp_path: Path) -> None:
    """Against a local rsync target (a path instead of rsync://): the base the SDK names
    is the folder's last finalized upload, and each upload reports rsync's numbers."""
    stub.script.on("POST", "/uploads", created_upload)
    for n in (1, 2, 3):
        stub.script.on("POST", f"/uploads/upload_n{n}/finalize", finalized_upload)
    source, other = tmp_path / "src", tmp_path / "other"
    for folder in (source, other):
        folder.mkdir()
        (folder / "f.txt").write_bytes(b"x" * 1000)
    (tmp_path / "host").mkdir()
    client = stub.client(
        rsync_url=str(tmp_path / "host"), upload_bases=UploadBases(tmp_path / "cache")
    )
    first = client.upload(source, upload_id="upload_n1")
    client.upload(other, upload_id="upload_n2")
    client.upload(source / ".", upload_id="upload_n3")  # the same folder, spelled otherwise
    bodies = [s.body for s in stub.script.requests("POST", "/uploads")]
    assert bodies == [
        {"upload_id": "upload_n1", "base_upload_id": None},
        {"upload_id": "upload_n2", "base_upload_id": None},
        {"upload_id": "upload_n3", "base_upload_id": "upload_n1"},
    ]
    assert first.transfer is not None and first.transfer.literal_bytes == 1000
    assert first.transfer.total_bytes == 1000 and first.transfer.sent_bytes > 1000


def test_create_upload_whose_first_send_landed_returns_the_upload(stub: Stub) -> None:
    stub.script.on("POST", "/uploads", Reply(drop=True), error(409, "upload_already_exists"))
    stub.script.on(
        "GET", "/uploads/upload_abc", Reply(200, upload_object("upload_abc", "uploading"))
    )
    assert stub.client().create_upload("upload_abc").state == "uploading"
    stub.script.on("POST", "/uploads", error(409, "upload_already_exists"))
    with pytest.raises(FlashpodsError) as err:
        stub.client().create_upload("upload_abc")
    assert err.value.code == "upload_already_exists"


def test_an_open_upload_named_again_is_completed_and_a_finalized_one_never_deleted(
    stub: Stub, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x")
    (tmp_path / "host").mkdir()
    client = stub.client(rsync_url=str(tmp_path / "host"))
    stub.script.on("POST", "/uploads", error(409, "upload_already_exists"))
    stub.script.on(
        "GET", "/uploads/upload_open", Reply(200, upload_object("upload_open", "uploading"))
    )
    stub.script.on("POST", "/uploads/upload_open/finalize", finalized_upload)
    assert client.upload(tmp_path / "src", upload_id="upload_open").state == "finalized"
    assert (tmp_path / "host" / "upload_open" / "f.txt").read_text() == "x"
    stub.script.on(
        "GET", "/uploads/upload_done", Reply(200, upload_object("upload_done", "finalized"))
    )
    with pytest.raises(FlashpodsError) as err:
        client.upload(tmp_path / "src", upload_id="upload_done")
    assert err.value.code == "upload_already_exists"
    assert stub.script.requests("DELETE", "/uploads/upload_done") == []


# ----------------------------------------------------------------------------- downloads

ART = JOB + "/artifacts"


def _listing(*names: str) -> Reply:
    return Reply(
        200,
        {
            "artifacts": [{"name": n, "size_bytes": 4, "created_at": None} for n in names],
            "total_size_bytes": 4 * len(names),
            "expires_at": None,
            "copy_in_progress": False,
        },
    )


def test_download_streams_into_place_and_resumes_a_broken_transfer(
    stub: Stub, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 1000
    stub.script.on(
        "GET",
        ART + "/sub%2Fdata.bin",
        Reply(200, payload, cut_after=100_000),
        lambda seen: Reply(206, payload[int(seen.headers["Range"][6:-1]) :]),
    )
    saved = stub.client().download_artifact(JOB[6:], "sub/data.bin", tmp_path / "dl")
    assert saved == (tmp_path / "dl" / "sub" / "data.bin").resolve()
    assert saved.read_bytes() == payload
    ranges = [s.headers.get("Range") for s in stub.script.requests("GET", ART + "/sub%2Fdata.bin")]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert [p.name for p in saved.parent.iterdir()] == ["data.bin"]  # no .part left


def test_a_failed_download_leaves_nothing_behind(stub: Stub, tmp_path: Path) -> None:
    stub.script.on("GET", ART + "/gone.txt", error(404, "artifact_not_found"))
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "gone.txt").write_text("older copy")
    with pytest.raises(FlashpodsError) as err:
        stub.client().download_artifact(JOB[6:], "gone.txt", tmp_path / "dl")
    assert (err.value.code, err.value.status) == ("artifact_not_found", 404)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["gone.txt"]
    assert (tmp_path / "dl" / "gone.txt").read_text() == "older copy"


def test_a_hostile_listing_cannot_write_outside(stub: Stub, tmp_path: Path) -> None:
    stub.script.on("GET", ART, _listing("ok.txt", "../../escaped.txt"))
    stub.script.on("GET", ART + "/ok.txt", Reply(200, b"fine"))
    with pytest.raises(FlashpodsError) as err:
        stub.client().download_artifacts(JOB[6:], tmp_path / "dl")
    assert err.value.code == "invalid_artifact_path"
    assert not (tmp_path / "escaped.txt").exists()
    assert stub.script.requests("GET", ART + "/..%2F..%2Fescaped.txt") == []


def test_short_body_is_an_error_not_a_file(stub: Stub, tmp_path: Path) -> None:
    # Content-Length says 10 but the connection ends after 4, three times over.
    stub.script.on("GET", ART + "/x", Reply(200, b"0123456789", cut_after=4))
    with pytest.raises(FlashpodsError) as err:
        stub.client().download_artifact(JOB[6:], "x", tmp_path)
    assert err.value.code in ("network_error", "invalid_response")
    assert list(tmp_path.iterdir()) == []


def _job_reply(status: str) -> Reply:
    return Reply(200, {"id": "job_0123456789abcdef", "type": "worker", "status": status})


def test_follow_resumes_a_broken_stream_at_the_byte_where_it_broke(stub: Stub) -> None:
    stub.script.on("GET", JOB, _job_reply("running"), _job_reply("completed"))
    text = "héllo wörld\n".encode()
    stub.script.on(
        "GET",
        JOB + "/output",
        output_replies(
            None,
            log_piece(text[:2], unfinished=True),  # breaks inside the two bytes of "é"
            log_piece(text[2:5], text[5:8]),  # the API's timeout ended this one
            log_piece(text[8:], complete=True),
        ),
    )
    written: list[str] = []
    final = stub.client().follow("job_0123456789abcdef", written.append)
    assert final.status == "completed"
    assert "".join(written) == "héllo wörld\n"
    offsets = [query(s)["offset"] for s in stub.script.requests("GET", JOB + "/output")]
    assert offsets == ["0", "2", "8"]
    assert [r.reason for r in stub.retries] == ["network_error"]


def test_follow_of_a_deleted_log_ends_with_the_job(stub: Stub) -> None:
    stub.script.on("GET", JOB, _job_reply("cleaned"))
    stub.script.on("GET", JOB + "/output", output_replies(None, error(410, "logs_deleted")))
    written: list[str] = []
    assert stub.client().follow("job_0123456789abcdef", written.append).status == "cleaned"
    assert written == []


def test_read_output_returns_a_piece_and_where_to_go_on(stub: Stub) -> None:
    stub.script.on(
        "GET",
        JOB + "/output",
        output_replies(None, log_piece(b"ab"), log_piece("cdé".encode(), complete=True)),
    )
    piece = stub.client().read_output("job_0123456789abcdef", 10, wait_seconds=30)
    assert (piece.output, piece.offset, piece.next_offset, piece.complete) == (
        "abcdé",
        10,
        16,
        True,
    )
    assert [query(s)["offset"] for s in stub.script.requests("GET", JOB + "/output")] == [
        "10",
        "12",
    ]


def test_read_output_stops_at_max_bytes_on_a_character_boundary(stub: Stub) -> None:
    stub.script.on(
        "GET", JOB + "/output", output_replies(None, log_piece("aé€z".encode(), complete=True))
    )
    piece = stub.client().read_output("job_0123456789abcdef", 0, max_bytes=4)
    # 4 bytes would cut "€" (3 bytes, starting at byte 3): it comes with the next piece.
    assert (piece.output, piece.next_offset, piece.complete) == ("aé", 3, False)
