from __future__ import annotations

from api_harness import Api


def test_health_and_create(api: Api) -> None:
    r = api.get("/health", token=None)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "healthy"
    api.upload("upload_abc", {"a.txt": b"hello", "sub/b.txt": b"x" * 10})
    r = api.post("/jobs", json={"type": "worker", "command": "echo hi", "files_id": "upload_abc"})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    r = api.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    print(r.json())
