"""The one deadline-polling loop: check a condition until it holds or time runs out.

For conditions nothing announces (a socket file appearing, a health check passing, a
process ending that is not our child). Exceptions of the condition propagate, so a probe
can tell "failed for good" (raise) from "not yet" (False).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def poll(
    condition: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    stop: threading.Event | None = None,
) -> bool:
    """True as soon as `condition()` is; False once `timeout` seconds have passed (it is
    checked at least once, and once more at the deadline) or `stop` is set."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (stop is not None and stop.is_set()):
            return False
        pause = min(interval, remaining)
        if stop is not None:
            stop.wait(pause)
        else:
            time.sleep(pause)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.05
) -> None:
    """poll(), raising TimeoutError naming `what` when time runs out."""
    if not poll(condition, timeout, interval=interval):
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
