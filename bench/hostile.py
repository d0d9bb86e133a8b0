#!/usr/bin/env python3
"""Hostile jobs against a real API on real podman (run as root), with yardsticks.

1. /health (and GET /jobs/{id}) latency while a job floods its log
   (`yes | head -c 300000000`), side by side with a trivial stdlib HTTP server on the
   same host, probed alternately in the same loop (the machine's noise hits both).
2. A table of the other hostile jobs: final status, seconds, whether a follow-up job that needs
   every CPU is admitted afterwards, and the peak host disk the job's container used
   (its artifacts directory plus its overlay upper directory, sampled every 100 ms).

    python bench/hostile.py [--skip-table|--skip-flood] [--api-code DIR]  (the venv's python)

--api-code runs the API from another checkout's services/ (a before-value).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Test and benchmark scaffolding lives with the tests, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "testing"))

import requests
from flashpods.common.jobstates import ENDED
from flashpods.common.polling import wait_until
from flashpods_testing.hostile import (
    DD_3G,
    DD_ROOT,
    FLOOD,
    FORK_5000,
    IGNORES_TERM,
    ORPHAN,
    DiskPeak,
)
from flashpods_testing.localhost import bench_host, free_port

TOKEN = "d" * 64
HOST_CPUS = 2
TRIVIAL_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class Client:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def post_job(self, body: dict[str, Any]) -> requests.Response:
        return self.session.post(f"{self.url}/jobs", json=body, timeout=60)

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.session.get(f"{self.url}/jobs/{job_id}", timeout=60).json())

    def wait_end(self, job_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] in ENDED:
                return job
            time.sleep(0.2)
        raise SystemExit(f"{job_id} did not end within {timeout} s")


def timed_get(session: requests.Session, url: str) -> float:
    start = time.perf_counter()
    response = session.get(url, timeout=30)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"GET {url}: {response.status_code}")
    return elapsed


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms"
        f"   max {ordered[-1] * 1000:6.1f} ms   (n={len(ordered)})"
    )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own CPU, its reaped children's CPU), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick
    children = (int(fields[13]) + int(fields[14])) / tick
    return own, children


def flood(api: Client, trivial_url: str, api_pid: int) -> None:
    cpu_before = cpu_seconds(api_pid)
    created = api.post_job({"type": "worker", "command": FLOOD, "cpus": 1, "memory_gb": 1})
    job_id = created.json()["job_id"]
    started = time.perf_counter()
    health, job_get, trivial = [], [], []
    plain = requests.Session()
    while True:
        health.append(timed_get(api.session, f"{api.url}/health"))
        trivial.append(timed_get(plain, trivial_url))
        begin = time.perf_counter()
        job = api.job(job_id)
        job_get.append(time.perf_counter() - begin)
        if job["status"] in ENDED:
            break
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    # Ended means the capture process has been waited for (LogCapture.finish comes first).
    own, children = (a - b for a, b in zip(cpu_seconds(api_pid), cpu_before, strict=True))
    print(f"flood `{FLOOD}`: {job['status']} after {seconds:.1f} s, probing alternately:")
    print(f"  CPU: the API process {own:.1f} s, its children (capture, podman) {children:.1f} s")
    print(f"  API /health          {percentiles(health)}")
    print(f"  API GET /jobs/{{id}}   {percentiles(job_get)}")
    print(f"  trivial HTTP server  {percentiles(trivial)}")


def follow_up_admitted(api: Client) -> bool:
    response = api.post_job({"type": "worker", "command": "true", "cpus": HOST_CPUS})
    if response.status_code != 201:
        return False
    api.wait_end(response.json()["job_id"], 60)
    return True


def case(api: Client, root: Path, sock: Path, name: str, command: str, **extra: Any) -> str:
    cancel_after = extra.pop("cancel_after", None)
    body = {"type": "worker", "command": command, "cpus": 1, "memory_gb": 2, **extra}
    started = time.perf_counter()
    response = api.post_job(body)
    if response.status_code != 201:
        return f"{name:<38} create failed: {response.status_code} {response.text[:80]}"
    job_id = response.json()["job_id"]
    with DiskPeak(sock, root / "artifacts" / job_id, f"job_{job_id}") as sampler:
        if cancel_after is not None:
            time.sleep(cancel_after)
            api.session.delete(f"{api.url}/jobs/{job_id}", timeout=60)
        job = api.wait_end(job_id, 600)
        wait_until(lambda: job_container_gone(sock, job_id), 60, "container removal")
    seconds = time.perf_counter() - started  # to the final status and no container left
    job = api.job(job_id)
    released = follow_up_admitted(api)
    ended = f"{job['status']} ({job['exit_code']}, {job['error']})"
    return (
        f"{name:<38} {ended:<34} {seconds:6.1f} s   {'yes' if released else 'NO':<4}"
        f" {sampler.peak / (1 << 20):8.1f} MiB"
    )


def job_container_gone(sock: Path, job_id: str) -> bool:
    result = subprocess.run(
        ["podman", "--url", f"unix://{sock}", "container", "exists", f"job_{job_id}"],
        check=False,
    )
    return result.returncode != 0


def table(api: Client, root: Path, sock: Path) -> None:
    print()
    print(f"{'case':<38} {'final status (exit, error)':<34} {'seconds':>8}   rel. disk peak")
    rows = [
        ("dd 3 GiB into /tmp (disk_gb 1)", DD_3G.format(path="/tmp/big"), {"disk_gb": 1}),
        ("dd 3 GiB into / /var/tmp /run", DD_ROOT, {}),
        (
            "dd 3 GiB into /artifacts (disk_gb 1)",
            DD_3G.format(path="/artifacts/big"),
            {"disk_gb": 1},
        ),
        ("ignores SIGTERM, cancel at 3 s", IGNORES_TERM, {"cancel_after": 3}),
        ("ignores SIGTERM, timeout 1 min", IGNORES_TERM, {"timeout_minutes": 1}),
        ("sleep 600 & exit 0", ORPHAN, {}),
        ("5,000 children", FORK_5000, {}),
    ]
    for name, command, extra in rows:
        print(case(api, root, sock, name, command, **extra), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-flood", action="store_true")
    parser.add_argument("--api-code", type=Path, help="services/ directory the API runs from")
    args = parser.parse_args()
    port = free_port()
    trivial = subprocess.Popen([sys.executable, "-c", TRIVIAL_SERVER, str(port)])
    # --api-code: the API runs that checkout's services/ (a before-value).
    code = {"PYTHONPATH": str(args.api_code.resolve())} if args.api_code else {}
    try:
        with bench_host(
            TOKEN, FLASHPODS_HOST_CPUS=str(HOST_CPUS), FLASHPODS_HOST_MEMORY_GB="16", **code
        ) as (process, sock):
            api = Client(process.url)
            trivial_url = f"http://127.0.0.1:{port}/health"
            wait_until(lambda: _up(trivial_url), 10, "trivial server")
            if not args.skip_flood:
                assert process.proc is not None
                flood(api, trivial_url, process.proc.pid)
            if not args.skip_table:
                table(api, process.root, sock)
    finally:
        trivial.kill()
        trivial.wait()


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    main()
