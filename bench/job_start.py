#!/usr/bin/env python3
"""Job start overhead: POST /jobs → running → completed for `true`, against a plain
`podman run --rm` of the same image and command, in the same run (run as root).

Starts a private rootful `podman system service` and a real `flashpods-api` process in a
temporary directory, then alternates the two measurements N times (after one warm-up
each) so both see the same machine state:

- api: wall time from sending POST /jobs to the first GET /jobs/{id} that shows
  `completed` (polled every 10 ms), plus when `running` was first seen and the 201 itself;
- plain: wall time of `podman --url <same socket> run --rm --pull=never IMAGE true`.

Both on the same podman network: `--network lean` (the default) is a network made like
the lab's job network (flashpods.lab.jobnet: the CNI bridge plugin alone, one static nft
masquerade; created for the run and removed after it), `--network default` podman's own
default network (bridge with per-container iptables, portmap, firewall, tuning).

The API reports `completed` before it removes the container (and podman's own cleanup of
it runs on): the next measurement starts only once that container is gone, so neither
side is timed while the other's leftovers still run.

    /var/cache/flashpods/venv/bin/python bench/job_start.py [--runs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# Test and benchmark scaffolding lives with the tests, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "testing"))

import requests
from flashpods.common.jobstates import ENDED
from flashpods.common.polling import wait_until
from flashpods.lab.jobnet import JobNetwork
from flashpods_testing.localhost import JOB_IMAGE, bench_host

TOKEN = "c" * 64
BENCH_NETWORK = JobNetwork(
    name="flashpods-bench", bridge="cni-fpbench0", subnet="10.90.0.0/24", gateway="10.90.0.1"
)


def api_run(session: requests.Session, url: str, sock: Path) -> tuple[float, float, float]:
    """(201 received, running first seen, completed first seen), seconds from the POST;
    returns once the job's container is removed."""
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
        if job["status"] in ENDED:
            if job["status"] != "completed":
                raise SystemExit(f"job ended {job['status']}: {job}")
            wait_until(lambda: not container_exists(sock, f"job_{job_id}"), 60, "its removal")
            return t_created, t_running, now
        time.sleep(0.01)


def container_exists(sock: Path, name: str) -> bool:
    argv = ["podman", "--url", f"unix://{sock}", "container", "exists", name]
    return subprocess.run(argv, check=False).returncode == 0


def plain_run(sock: Path, network: str | None) -> float:
    argv = ["podman", "--url", f"unix://{sock}", "run", "--rm", "--pull=never"]
    argv += [f"--network={network}"] if network else []
    start = time.perf_counter()
    subprocess.run([*argv, JOB_IMAGE, "true"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@contextlib.contextmanager
def job_network(kind: str) -> Iterator[str | None]:
    """The podman network's name for both sides (None: podman's default)."""
    if kind == "default":
        yield None
        return
    BENCH_NETWORK.ensure(None)
    try:
        yield BENCH_NETWORK.name
    finally:
        BENCH_NETWORK.remove()
        BENCH_NETWORK.remove_from_namespace(None)


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
    parser.add_argument("--network", choices=("lean", "default"), default="lean")
    args = parser.parse_args()
    with job_network(args.network) as network:
        env = {"FLASHPODS_JOB_NETWORK": network} if network else {}
        with bench_host(TOKEN, **env) as (api, sock):
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {TOKEN}"
            api_run(session, api.url, sock)  # warm-up: image layers, page cache, podman
            plain_run(sock, network)
            created, running, completed, plain = [], [], [], []
            for _ in range(args.runs):
                c, r, d = api_run(session, api.url, sock)
                created.append(c)
                running.append(r)
                completed.append(d)
                plain.append(plain_run(sock, network))
    print(
        f"job start overhead, image {JOB_IMAGE}, command `true`, {args.runs} runs each, "
        f"network {network or 'podman default'}"
    )
    print(summary("api: POST /jobs → 201", created))
    print(summary("api: POST → running seen", running))
    print(summary("api: POST → completed seen", completed))
    print(summary("plain podman run --rm", plain))
    ratio = statistics.median(completed) / statistics.median(plain)
    print(f"ratio (median api completed / median plain run): {ratio:.2f}x")


if __name__ == "__main__":
    main()
