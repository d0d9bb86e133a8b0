"""Token bucket per client (api.md: 100 requests/s, burst 10), thread-safe.

`take` returns what the X-RateLimit-* headers and a 429 need; the clock is injectable
so the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_epoch: int  # when the bucket is full again
    retry_after: float  # seconds until one token is available (0 if allowed)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self.lock = threading.Lock()
        self.buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, client: str) -> Decision:
        now = self.clock()
        with self.lock:
            bucket = self.buckets.get(client)
            if bucket is None:
                if len(self.buckets) > 10_000:  # forget idle clients, keep memory bounded
                    self.buckets = {k: b for k, b in self.buckets.items() if now - b.updated < 60}
                bucket = self.buckets[client] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            allowed = bucket.tokens >= 1
            if allowed:
                bucket.tokens -= 1
            missing = self.burst - bucket.tokens
            reset = time.time() + missing / self.rate
            retry = 0.0 if allowed else (1 - bucket.tokens) / self.rate
            return Decision(
                allowed, math.ceil(self.rate), int(bucket.tokens), math.ceil(reset), retry
            )
