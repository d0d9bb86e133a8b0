"""Benchmark of the API's HTTP layer: prints a table.

- req/s, p50 and p99 of GET /health and GET /jobs/{id} with 1, 8 and 32 concurrent
  keep-alive clients (rate limit off);
- GET /jobs/{id}/output?tail=100 on a 50 MB log;
- artifact download through curl against Debian's nginx (`sendfile on`, started here on
  loopback) serving the same file through the same curl, in the same run (--downloads
  pairs, which goes first alternating; medians and the median of the pairs' ratios), and
  reading the file from the page cache.

The server is the real console script (`python -m flashpods.api.main`) in its own
process, with a throwaway database, log and artifact seeded before it starts; podman is
not needed (no job is started; the reconcile loop just logs that podman is absent).
Clients are threads with persistent http.client connections in this process, so on a
small machine client and server share the CPUs: numbers are a floor, not a ceiling.

    python bench/api_http.py [--seconds 3] [--artifact-mb 256]
"""

from __future__ import annotations

import argparse
import http.client
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Test and benchmark scaffolding lives with the tests, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "testing"))

from flashpods.api import jobstate
from flashpods.api.db import Store
from flashpods_testing.localhost import (
    api_environment,
    api_process,
    free_port,
    stop_process,
    write_token,
)

TOKEN = "b" * 64
JOB_ID = "job_0123456789abcdef"
LINE = b"[12:00:00.000] " + b"x" * 85 + b"\n"  # 100-byte log lines


def seed(root: Path, artifact_mb: int) -> dict[str, str]:
    # No podman socket: the reconcile loop (hourly here) only logs that podman is absent.
    env = api_environment(
        root,
        root / "no-podman.sock",
        "bench",
        FLASHPODS_RATE_LIMIT_PER_SECOND="0",
        FLASHPODS_LOG_LEVEL="warning",
        FLASHPODS_RECONCILE_INTERVAL_SECONDS="3600",
    )
    for key in ("FLASHPODS_UPLOADS_PATH", "FLASHPODS_ARTIFACTS_PATH", "FLASHPODS_LOGS_PATH"):
        Path(env[key]).mkdir(parents=True)
    Path(env["FLASHPODS_DB_PATH"]).parent.mkdir(parents=True)
    write_token(Path(env["FLASHPODS_TOKEN_FILE"]), TOKEN)
    store = Store(Path(env["FLASHPODS_DB_PATH"]))
    now = time.time()
    # A completed job, written the only way a job's status is written (api/jobstate.py).
    jobstate.insert(
        store,
        id=JOB_ID,
        type="worker",
        command="make test",
        image="ubuntu:22.04",
        cpus=2,
        memory_gb=4,
        timeout_minutes=30,
        created_at=now - 60,
        updated_at=now - 60,
    )
    jobstate.transition(store, JOB_ID, "starting")
    jobstate.transition(
        store,
        JOB_ID,
        "completed",
        final_status="completed",
        exit_code=0,
        started_at=now - 59,
        completed_at=now,
    )
    with open(Path(env["FLASHPODS_LOGS_PATH"]) / f"{JOB_ID}.log", "wb") as log:
        log.write(LINE * (50 * 1024 * 1024 // len(LINE)))
    artifact = Path(env["FLASHPODS_ARTIFACTS_PATH"]) / JOB_ID / "blob.bin"
    artifact.parent.mkdir()
    with open(artifact, "wb") as out:
        chunk = os.urandom(1024 * 1024)
        for _ in range(artifact_mb):
            out.write(chunk)
    store.execute(
        "INSERT INTO artifacts (job_id, name, size_bytes, created_at) VALUES (?, 'blob.bin', ?, ?)",
        (JOB_ID, artifact.stat().st_size, now),
    )
    store.close()
    return env


def load(
    host: str, port: int, path: str, clients: int, seconds: float
) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) for `clients` keep-alive connections hammering `path`."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        mine = latencies[index]
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            begin = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: HTTP {response.status}")
            mine.append(time.perf_counter() - begin)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start_gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = sorted(x for per in latencies for x in per)
    p99 = flat[min(len(flat) - 1, int(len(flat) * 0.99))]
    return len(flat) / elapsed, statistics.median(flat) * 1000, p99 * 1000


NGINX_CONF = """\
daemon off;
user {user};
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
    }}
}}
"""


@contextmanager
def nginx(docroot: Path, root: Path) -> Iterator[str]:
    """Debian's nginx serving `docroot` on loopback (its own prefix, pid and logs under
    `root`; no system nginx is touched); yields its base URL."""
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed (or /usr/sbin is not on PATH): scripts/setup.sh")
    (root / "tmp").mkdir(parents=True)
    port = free_port()
    conf = root / "nginx.conf"
    # Workers as this user (not www-data), so they can read the private temporary files;
    # nginx ignores the directive when not started as root.
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf.write_text(NGINX_CONF.format(root=root, port=port, docroot=docroot, user=user))
    # -e: the startup error log, before the config is read (default /var/log/nginx).
    process = subprocess.Popen(
        ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while curl_seconds(f"{url}/nope", {}, allow_error=True) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nginx did not start: {(root / 'error.log').read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        stop_process(process, 10)


def curl_seconds(url: str, headers: dict[str, str], allow_error: bool = False) -> float | None:
    """Wall time of one `curl` download to /dev/null as curl itself reports it."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    code, _, seconds = result.stdout.partition(" ")
    if result.returncode != 0 or code != "200":
        if allow_error:
            return None if result.returncode != 0 else float(seconds)
        raise SystemExit(f"curl {url}: exit {result.returncode}, HTTP {code}: {result.stderr}")
    return float(seconds)


def disk_mb_s(path: Path) -> float:
    begin = time.perf_counter()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(1024 * 1024):
            size += len(chunk)
    return size / (time.perf_counter() - begin) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per load measurement")
    parser.add_argument("--artifact-mb", type=int, default=256)
    parser.add_argument("--downloads", type=int, default=31, help="curl runs per server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flashpods-bench-") as tmp:
        env = seed(Path(tmp), args.artifact_mb)
        host, port_text = env["FLASHPODS_LISTEN_ADDR"].rsplit(":", 1)
        port = int(port_text)
        with api_process(Path(tmp), env):
            rows: list[tuple[str, str, str, str]] = []
            for path in ("/health", f"/jobs/{JOB_ID}"):
                for clients in (1, 8, 32):
                    rate, p50, p99 = load(host, port, path, clients, args.seconds)
                    rows.append(
                        (
                            f"GET {path.replace(JOB_ID, '{id}')} x{clients}",
                            f"{rate:,.0f} req/s",
                            f"{p50:.2f}",
                            f"{p99:.2f}",
                        )
                    )
            rate, p50, p99 = load(host, port, f"/jobs/{JOB_ID}/output?tail=100", 1, args.seconds)
            rows.append(
                (
                    "GET output?tail=100 (50 MB log) x1",
                    f"{rate:,.0f} req/s",
                    f"{p50:.2f}",
                    f"{p99:.2f}",
                )
            )
            artifact = Path(env["FLASHPODS_ARTIFACTS_PATH"]) / JOB_ID / "blob.bin"
            size = artifact.stat().st_size
            disk_mb_s(artifact)  # warm the page cache so both read from memory
            ours_url = f"http://{host}:{port}/jobs/{JOB_ID}/artifacts/blob.bin"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            ours: list[float] = []
            theirs: list[float] = []
            with nginx(artifact.parent, Path(tmp) / "nginx") as nginx_url:
                # In pairs, the first of each pair alternating (ABBA…): drift and whatever
                # the first download of a pair pays hit both sides alike.
                servers = [(ours, ours_url, auth), (theirs, f"{nginx_url}/blob.bin", {})]
                for turn in range(args.downloads):
                    for times, url, headers in servers if turn % 2 == 0 else servers[::-1]:
                        times.append(curl_seconds(url, headers) or 0.0)
            disk_rate = max(disk_mb_s(artifact) for _ in range(3))
            ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
            mib = size >> 20
            rows.append(
                (
                    f"artifact download {mib} MiB (curl)",
                    f"{size / ours_s / 1e6:,.0f} MB/s",
                    f"{ours_s * 1000:.0f}",
                    "",
                )
            )
            rows.append(
                (
                    "nginx sendfile, same file (curl)",
                    f"{size / theirs_s / 1e6:,.0f} MB/s",
                    f"{theirs_s * 1000:.0f}",
                    "",
                )
            )
            rows.append(("same file read from disk (cached)", f"{disk_rate:,.0f} MB/s", "", ""))
            ratio = theirs_s / ours_s
            pair_ratio = statistics.median(t / o for o, t in zip(ours, theirs, strict=True))
    print(f"{'measurement':<40} {'throughput':>16} {'p50 ms':>8} {'p99 ms':>8}")
    print("-" * 75)
    for name, throughput, p50_text, p99_text in rows:
        print(f"{name:<40} {throughput:>16} {p50_text:>8} {p99_text:>8}")
    cpus = os.cpu_count()
    print(f"\n{cpus} CPUs; clients and server share them; {args.seconds:.0f} s per load row.")
    print(
        f"download: {ratio:.2f}x nginx's throughput (medians of {args.downloads} curl runs each; "
        f"p50 column = median ms per download); median of the {args.downloads} pairs' "
        f"ratios {pair_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
