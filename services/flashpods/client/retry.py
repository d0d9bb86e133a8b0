"""When to try a request again, and how long to wait first (pure; no I/O, no clock).

client.md: 429 and 503 -> exponential backoff, base 1 s, cap 30 s, 5 tries in all,
honouring Retry-After; network errors -> 3 tries in all; any other answer -> no retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

THROTTLED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 1.0
    cap_seconds: float = 30.0
    throttled_tries: int = 5
    network_tries: int = 3

    def backoff(self, failed_attempts: int) -> float:
        """Delay after the n-th failed attempt (1-based): base * 2^(n-1), at most cap."""
        return min(self.cap_seconds, self.base_seconds * 2 ** (failed_attempts - 1))

    def throttled_delay(self, failed_attempts: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next try after a 429/503, or None when out of tries.

        The server's Retry-After wins over our own backoff (it knows when capacity
        returns), but never beyond the cap, so one bad header cannot stall a caller.
        """
        if failed_attempts >= self.throttled_tries:
            return None
        if retry_after is not None:
            return min(self.cap_seconds, max(0.0, retry_after))
        return self.backoff(failed_attempts)

    def network_delay(self, failed_attempts: int) -> float | None:
        if failed_attempts >= self.network_tries:
            return None
        return self.backoff(failed_attempts)


def parse_retry_after(header: str | None, now: datetime | None = None) -> float | None:
    """Retry-After is delay-seconds or an HTTP-date (RFC 9110 10.2.3); None if absent/bad."""
    if header is None or not header.strip():
        return None
    text = header.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
