#!/usr/bin/env python3
"""Job start overhead: POST /jobs → running → completed for `true`, against a plain
`podman run --rm` of the same image and command, in the same run (run as root).

Starts a private rootful `podman system service` and a real `flashpods-api` process in a
temporary directory, then alternates the two measurements N times (after one warm-up
each) so both see the same machine state:

- api: wall time from sending POST /jobs to the first GET /jobs/{id} that shows
  `completed` (polled every 10 ms), plus when `running` was first seen and the 201 itself;
- plain: wall time of `podman --url <same socket> run --rm --pull=never IMAGE true`.

    /var/cache/flashpods/venv/bin/python bench/job_start.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

IMAGE = "localhost/flashpods-job:latest"
TOKEN = "c" * 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_services(root: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], str]:
    sock = root / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(sock.exists, 15, "podman service")
    (root / "api-token").write_text(TOKEN)
    port = free_port()
    env = {
        **os.environ,
        "FLASHPODS_DB_PATH": str(root / "db" / "flashpods.db"),
        "FLASHPODS_UPLOADS_PATH": str(root / "uploads"),
        "FLASHPODS_ARTIFACTS_PATH": str(root / "artifacts"),
        "FLASHPODS_LOGS_PATH": str(root / "logs"),
        "FLASHPODS_LISTEN_ADDR": f"127.0.0.1:{port}",
        "FLASHPODS_TOKEN_FILE": str(root / "api-token"),
        "FLASHPODS_PODMAN_SOCKET": str(sock),
        "FLASHPODS_INSTANCE": f"bench-{os.getpid()}",
        "FLASHPODS_DEFAULT_IMAGE": IMAGE,
        "FLASHPODS_PULL_POLICY": "never",
        "FLASHPODS_RATE_LIMIT_PER_SECOND": "0",
        "FLASHPODS_SPIRE_SOCKET_DIR": str(root / "no-spire"),
        "FLASHPODS_TOKEN_SOCKET": str(root / "no-token.sock"),
        "FLASHPODS_LOG_LEVEL": "warning",
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "flashpods.api.main"],
        env=env,
        stdout=(root / "api.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(healthy, 20, "flashpods-api")
    return service, api, url


def api_run(session: requests.Session, url: str) -> tuple[float, float, float]:
    """(201 received, running first seen, completed first seen), seconds from the POST."""
    start = time.perf_counter()
    created = session.post(f"{url}/jobs", json={"type": "worker", "command": "true"}, timeout=60)
    t_created = time.perf_counter() - start
    if created.status_code != 201:
        raise SystemExit(f"POST /jobs: {created.status_code} {created.text}")
    job_id = created.json()["job_id"]
    t_running = float("nan")
    while True:
        job = session.get(f"{url}/jobs/{job_id}", timeout=10).json()
        now = time.perf_counter() - start
        if job["status"] == "running" and t_running != t_running:
            t_running = now
        if job["status"] in ("completed", "failed", "timed_out", "cancelled"):
            if job["status"] != "completed":
                raise SystemExit(f"job ended {job['status']}: {job}")
            return t_created, t_running, now
        time.sleep(0.01)


def plain_run(sock: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["podman", "--url", f"unix://{sock}", "run", "--rm", "--pull=never", IMAGE, "true"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def summary(name: str, values: list[float]) -> str:
    real = sorted(v for v in values if v == v)
    if not real:
        return f"{name:<34} (never observed)"
    p90 = real[min(len(real) - 1, int(len(real) * 0.9))]
    return (
        f"{name:<34} median {statistics.median(real) * 1000:7.0f} ms   p90 {p90 * 1000:7.0f} ms"
        f"   min {real[0] * 1000:7.0f} ms   (n={len(real)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flashpods-bench-") as tmp:
        root = Path(tmp)
        service, api, url = start_services(root)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        try:
            api_run(session, url)  # warm-up: image layers, page cache, podman's state
            plain_run(root / "podman.sock")
            created, running, completed, plain = [], [], [], []
            for _ in range(args.runs):
                c, r, d = api_run(session, url)
                created.append(c)
                running.append(r)
                completed.append(d)
                plain.append(plain_run(root / "podman.sock"))
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(20)
            service.terminate()
            service.wait(20)
    print(f"job start overhead, image {IMAGE}, command `true`, {args.runs} runs each")
    print(summary("api: POST /jobs → 201", created))
    print(summary("api: POST → running seen", running))
    print(summary("api: POST → completed seen", completed))
    print(summary("plain podman run --rm", plain))
    ratio = statistics.median(completed) / statistics.median(plain)
    print(f"ratio (median api completed / median plain run): {ratio:.2f}x")


if __name__ == "__main__":
    main()
