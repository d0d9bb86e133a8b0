"""The API under test: in-process server with a fake runtime and a small HTTP client."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
from api_fakes import FakeRuntime
from flashpods.api.config import Config
from flashpods.api.server import FlashpodsHTTPServer, build_server

TOKEN = "a" * 64


def make_env(root: Path, **extra: str) -> dict[str, str]:
    (root / "api-token").write_text(TOKEN + "\n")
    env = {
        "FLASHPODS_DB_PATH": str(root / "db" / "flashpods.db"),
        "FLASHPODS_UPLOADS_PATH": str(root / "uploads"),
        "FLASHPODS_ARTIFACTS_PATH": str(root / "artifacts"),
        "FLASHPODS_LOGS_PATH": str(root / "logs"),
        "FLASHPODS_LISTEN_ADDR": "127.0.0.1:0",
        "FLASHPODS_TOKEN_FILE": str(root / "api-token"),
        "FLASHPODS_PODMAN_SOCKET": str(root / "podman.sock"),
        "FLASHPODS_HOST_CPUS": "8",
        "FLASHPODS_HOST_MEMORY_GB": "16",
        "FLASHPODS_RATE_LIMIT_PER_SECOND": "0",
    }
    env.update(extra)
    return env


@dataclass
class Api:
    server: FlashpodsHTTPServer
    runtime: FakeRuntime
    session: requests.Session

    @property
    def config(self) -> Config:
        return self.server.app.config

    @property
    def url(self) -> str:
        return self.server.url

    def request(
        self, method: str, path: str, token: str | None = TOKEN, **kwargs: Any
    ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self.server.app.store.query(f"SELECT * FROM {table}")

    def force_status(self, job_id: str, status: str, **fields: Any) -> None:
        """Put a job in any state, as a hand-edited database would: through a connection
        of its own (the service's own connection refuses status writes outside
        jobstate)."""
        assignments = "".join(f", {name} = ?" for name in fields)
        with contextlib.closing(sqlite3.connect(self.config.db_path)) as conn, conn:
            conn.execute(
                f"UPDATE jobs SET status = ?{assignments} WHERE id = ?",
                (status, *fields.values(), job_id),
            )

    def upload(self, upload_id: str, files: dict[str, bytes], finalize: bool = True) -> Path:
        """What rsync does (files in uploads/{id}), then finalize."""
        root = self.config.uploads_path / upload_id
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        if finalize:
            response = self.post(f"/uploads/{upload_id}/finalize")
            assert response.status_code == 200, response.text
        return root


def start_api(config: Config, runtime: FakeRuntime) -> Api:
    server = build_server(config, runtime, background=False)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return Api(server, runtime, requests.Session())


def with_config(config: Config, **changes: Any) -> Config:
    return replace(config, **changes)
