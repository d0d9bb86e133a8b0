#!/usr/bin/env python3
"""Pushed logs: how fast a line a job prints reaches a follower, and what followers cost.

Starts a private rootful `podman system service` and a real `flashpods-api` process
(run as root), then runs jobs that print their own clock (`date +%s.%N`) every 100 ms:

- latency: one job, followed by `GET /jobs/{id}/output?follow=true` (what the SDK, the
  CLI and the MCP server use) and, side by side on the same job, by polling
  `?tail=` on the schedule the SDK used before (0.1 s, x1.2, at most 1 s). A line's
  latency is the follower's clock when the line arrived minus the clock the job printed
  (same kernel clock);
- cost: the API process's CPU time (utime+stime from /proc) over a window of the same
  job with no follower, then with 50 followers, as a share of one core.

    /var/cache/flashpods/venv/bin/python bench/log_follow.py [--window 10] [--followers 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

# Test and benchmark scaffolding lives with the tests, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "testing"))

import requests
from flashpods.common.polling import wait_until
from flashpods_testing.localhost import bench_host

TOKEN = "d" * 64
PRINTER = "while :; do date +%s.%N; sleep 0.1; done"


def start_job(session: requests.Session, url: str) -> str:
    created = session.post(f"{url}/jobs", json={"type": "worker", "command": PRINTER}, timeout=60)
    if created.status_code != 201:
        raise SystemExit(f"POST /jobs: {created.status_code} {created.text}")
    return str(created.json()["job_id"])


def printed(session: requests.Session, url: str, job_id: str) -> bool:
    answer = session.get(f"{url}/jobs/{job_id}/output", params={"tail": 1}, timeout=10)
    return bool(answer.json()["output"])


def stamps(data: bytes) -> list[float]:
    """The job's clock readings in whole lines (`[HH:MM:SS.mmm] 1764680000.123456789`)."""
    out = []
    for line in data.split(b"\n"):
        _, _, value = line.partition(b"] ")
        try:
            out.append(float(value))
        except ValueError:
            continue
    return out


class Follower(threading.Thread):
    """Follows one job's log from its start with follow=true; records the latency of each
    line printed after the follower started (the backlog it reads first is not a push)."""

    def __init__(self, url: str, job_id: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id, self.stop = url, job_id, stop
        self.latencies: list[float] = []
        self.first_line = threading.Event()

    def run(self) -> None:
        began = time.time()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        offset, carry = 0, b""
        while not self.stop.is_set():
            params = {"follow": "true", "offset": offset, "timeout": 30}
            with session.get(
                f"{self.url}/jobs/{self.job_id}/output", params=params, stream=True, timeout=60
            ) as response:
                for data in response.iter_content(chunk_size=None):
                    now = time.time()
                    offset += len(data)
                    carry += data
                    whole, _, carry = carry.rpartition(b"\n")
                    self.latencies += [now - t for t in stamps(whole) if t >= began]
                    self.first_line.set()
                    if self.stop.is_set():
                        return


class Poller(threading.Thread):
    """The way clients followed before: ?tail= on a backoff schedule, new bytes by size."""

    def __init__(self, url: str, job_id: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id, self.stop = url, job_id, stop
        self.latencies: list[float] = []

    def run(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        seen, delay = 0, 0.1
        while not self.stop.wait(delay):
            out = session.get(
                f"{self.url}/jobs/{self.job_id}/output", params={"tail": 10000}, timeout=30
            ).json()
            now = time.time()
            new = out["total_bytes"] - seen
            if new > 0:
                data = out["output"].encode()[-new:]
                self.latencies += [now - t for t in stamps(data)]
                seen = out["total_bytes"]
            delay = min(1.0, delay * 1.2)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_cpu_share(pid: int, window: float) -> float:
    """Share of one core the API process used over the next `window` seconds."""
    before, began = cpu_seconds(pid), time.monotonic()
    time.sleep(window)  # a measurement window, not a synchronisation
    return (cpu_seconds(pid) - before) / (time.monotonic() - began)


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000:7.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--followers", type=int, default=50)
    args = parser.parse_args()
    # The cancelled first job may still hold its CPUs when the second starts.
    with bench_host(TOKEN, FLASHPODS_HOST_CPUS="8") as (api, _sock):
        assert api.proc is not None
        pid = api.proc.pid
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"

        # 1. Latency: one pushed follower and one poller on the same job.
        job = start_job(session, api.url)
        stop = threading.Event()
        pushed, poller = Follower(api.url, job, stop), Poller(api.url, job, stop)
        pushed.start()
        poller.start()
        pushed.first_line.wait(60)
        time.sleep(args.window)
        stop.set()
        session.delete(f"{api.url}/jobs/{job}", timeout=30)

        # 2. Cost: the same job without followers, then with N.
        job = start_job(session, api.url)
        # Past the container's start: the window measures a printing job, not podman.
        wait_until(lambda: printed(session, api.url, job), 60, "the job's first line")
        idle = api_cpu_share(pid, args.window)
        stop_many = threading.Event()
        many = [Follower(api.url, job, stop_many) for _ in range(args.followers)]
        for follower in many:
            follower.start()
        for follower in many:
            follower.first_line.wait(60)
        followed = api_cpu_share(pid, args.window)
        stop_many.set()
        session.delete(f"{api.url}/jobs/{job}", timeout=30)
        for thread in (pushed, poller, *many):
            thread.join(35)
    crowd = [x for follower in many for x in follower.latencies]
    print("a line printed by a job, until it reaches the client (job prints every 100 ms)")
    print(f"{'':<36} {'p50 ms':>7} {'p90 ms':>7} {'lines':>7}")
    for name, values in (
        ("follow=true (pushed), 1 follower", pushed.latencies),
        ("tail polling (the SDK's old way)", poller.latencies),
        (f"follow=true, each of {args.followers} followers", crowd),
    ):
        print(f"{name:<36} {ms(values, 0.5)} {ms(values, 0.9)} {len(values):>7}")
    print(f"\nAPI process CPU over {args.window:.0f} s of a job printing 10 lines/s:")
    print(f"  no follower       {idle * 100:5.1f} % of one core")
    print(f"  {args.followers} followers      {followed * 100:5.1f} % of one core")
    print(f"  cost of followers {(followed - idle) * 100:5.1f} % of one core")


if __name__ == "__main__":
    main()
