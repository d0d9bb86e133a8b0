#!/usr/bin/env python3
"""Token exchange latency and throughput against the real stack (run as root).

Starts the identity stack in a temp dir (podman API service, SPIRE server + agent,
token service; the same pieces as integration/identity), gets a worker JWT-SVID from a
real container, then calls GET /tokens over the unix socket from this process, one new
connection per request (as the container helper does):

- sequential, then N concurrent clients;
- per request: client latency, and the server's own split from its Server-Timing header:
  `validate` = JWT-SVID validation (py-spiffe against the bundle the SPIRE agent streams),
  the rest = our overhead (HTTP parsing, policy, secrets check, audit line, socket I/O);
- for comparison, the SPIRE agent's own ValidateJWTSVID round trip (Workload API).

    /var/cache/flashpods/venv/bin/python bench/token_exchange.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Test and benchmark scaffolding lives with the tests, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "testing"))

from flashpods.tokens.client import exchange
from flashpods_testing.identity_jobs import AUDIENCE, Containers, wait_until_issued
from flashpods_testing.identity_stack import IdentityStack
from spiffe.workloadapi.workload_api_client import WorkloadApiClient


@dataclass
class Sample:
    client_ms: float
    validate_ms: float
    server_ms: float


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def one(stack: IdentityStack, token: str) -> Sample:
    start = time.perf_counter()
    answer = exchange(stack.token_socket, token)
    client_ms = (time.perf_counter() - start) * 1000
    if answer.status != 200:
        raise RuntimeError(f"exchange failed: {answer.status} {answer.body}")
    timing = server_timing(answer.headers["Server-Timing"])
    return Sample(client_ms, timing["validate"], timing["total"])


def run(
    stack: IdentityStack, token: str, requests: int, clients: int
) -> tuple[list[Sample], float]:
    samples: list[Sample] = []
    lock = threading.Lock()
    per_client = requests // clients

    def worker() -> None:
        mine = [one(stack, token) for _ in range(per_client)]
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def row(name: str, values: list[float]) -> str:
    return f"  {name:<34} p50 {pct(values, 50):7.3f} ms   p99 {pct(values, 99):7.3f} ms"


def report(title: str, samples: list[Sample], elapsed: float) -> None:
    print(
        f"{title}: {len(samples)} requests in {elapsed:.2f} s = {len(samples) / elapsed:.0f} req/s"
    )
    print(row("client latency (connect..body)", [s.client_ms for s in samples]))
    print(row("  SPIRE/JWT-SVID validation", [s.validate_ms for s in samples]))
    print(row("  our overhead (latency - valid.)", [s.client_ms - s.validate_ms for s in samples]))
    print(row("  server handler total", [s.server_ms for s in samples]))


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    uid = gid = 62002  # the containers' uid:gid (a numeric id needs no passwd entry)
    base = Path(tempfile.mkdtemp(prefix="fpbench-", dir="/tmp"))
    base.chmod(0o755)
    stack = IdentityStack(
        base=base,
        workload_uid=uid,
        workload_gid=gid,
        secrets={"anthropic_api_key": secrets.token_hex(20), "github_token": secrets.token_hex(20)},
    )
    containers = Containers(stack, uid, gid, instance="bench-token-exchange", scratch=base / "jobs")
    try:
        stack.start()
        wait_until_issued(containers, 60)  # a worker container as the API makes it
        token = containers.jwt(role="worker", audience=AUDIENCE)
        for _ in range(50):  # warm-up: imports, first bundle use, page cache
            one(stack, token)
        print(f"token service: {stack.token_socket} (JWT-SVID ES256, worker)")
        samples, elapsed = run(stack, token, args.requests, 1)
        report("sequential (1 client)", samples, elapsed)
        samples, elapsed = run(stack, token, args.requests, args.concurrency)
        report(f"concurrent ({args.concurrency} clients)", samples, elapsed)

        client = WorkloadApiClient(f"unix://{stack.settings.agent_socket_path}")
        try:
            agent = timed(lambda: client.validate_jwt_svid(token, AUDIENCE), 300)
        finally:
            client.close()
        print("for comparison, the SPIRE agent validating the same token over the Workload API:")
        print(row("ValidateJWTSVID round trip", agent))
        print(f"  (mean {statistics.fmean(agent):.3f} ms; not used by the service, which")
        print("   validates locally against the streamed bundle)")
    finally:
        containers.remove_all()
        stack.close()
        stack.remove()


if __name__ == "__main__":
    main()
