"""Wake-ups for log followers, and the writing of their new bytes.

Jobs notifies on every status change and whenever the runtime's log capture reports new
bytes (JobHooks.on_output); GET /jobs/{id}/output?follow=true sleeps here in between.
A follower that has sent everything so far sleeps *parked*: notify() itself reads the new
bytes and writes them to its socket without blocking, so 50 followers of one job cost one
thread's 50 writes per new line instead of 50 threads waking (measured: 8 % of a core
the other way). A follower is woken only when notify() cannot finish for it (the socket
is full or gone, more than one read's worth is there) or the job's status changed.
The bus also bounds how many followers there are (each holds a server thread).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from flashpods.common.errors import ServiceError

READ_BYTES = 256 * 1024  # one chunk of a follow response at most


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (Transfer-Encoding: chunked)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass
class Parked:
    """A sleeping follower's place in the log, advanced by notify() as it writes."""

    log_fd: int
    sock_fd: int  # non-blocking
    offset: int
    leftover: bytes = b""  # the rest of a chunk the socket did not take
    failed: bool = False  # the client went away
    more: bool = False  # a full read: there may be more than notify() writes

    def push(self) -> bool:
        """Write what is new; False when the follower's own thread has to go on."""
        if self.failed or self.leftover or self.more:
            return False
        data = os.pread(self.log_fd, READ_BYTES, self.offset)
        if not data:
            return True
        piece = chunk(data)
        try:
            written = os.write(self.sock_fd, piece)
        except BlockingIOError:
            written = 0
        except OSError:
            self.failed = True
            return False
        self.offset += len(data)
        self.leftover = piece[written:]
        self.more = len(data) == READ_BYTES
        return not (self.leftover or self.more)


@dataclass
class _Topic:
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0  # any notification
    status_version: int = 0  # notifications of a status change
    subscriptions: set[Subscription] = field(default_factory=set)
    parked: dict[Subscription, Parked] = field(default_factory=dict)
    asleep: int = 0  # subscribers inside wait() right now


@dataclass(frozen=True)
class Seen:
    version: int
    status_version: int


class LogBus:
    """Wake-ups per job: `notify(job_id)` wakes every follower of that job."""

    def __init__(self, max_followers: int) -> None:
        self.max_followers = max_followers
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._followers = 0
        self.closed = False

    def notify(self, job_id: str, status: bool = False) -> None:
        """New bytes in the job's log, or (status=True) a change of its status."""
        with self._lock:
            topic = self._topics.get(job_id)
        if topic is None:
            return
        wake = []
        with topic.lock:
            topic.version += 1
            topic.status_version += status
            for subscription in topic.subscriptions:
                parked = topic.parked.get(subscription)
                if parked is not None and not status and parked.push():
                    continue  # written for it: it sleeps on
                topic.parked.pop(subscription, None)
                wake.append(subscription)
        for subscription in wake:
            subscription.waker.set()

    def close(self) -> None:
        """The server stops: every follower ends its response now."""
        with self._lock:
            self.closed = True
            topics = list(self._topics)
        for job_id in topics:
            self.notify(job_id, status=True)

    @property
    def followers(self) -> int:
        with self._lock:
            return self._followers

    def asleep(self, job_id: str) -> int:
        """How many followers of the job are waiting for a notification right now."""
        with self._lock:
            topic = self._topics.get(job_id)
        if topic is None:
            return 0
        with topic.lock:
            return topic.asleep

    def subscribe(self, job_id: str) -> Subscription:
        """A follower's place (503 when all are taken); release() gives it back."""
        with self._lock:
            if self._followers >= self.max_followers:
                raise ServiceError(
                    503,
                    "too_many_followers",
                    f"{self.max_followers} log followers are connected; retry shortly",
                    {"max_followers": self.max_followers},
                    headers={"Retry-After": "1"},
                )
            self._followers += 1
            topic = self._topics.setdefault(job_id, _Topic())
            subscription = Subscription(self, job_id, topic)
            with topic.lock:
                topic.subscriptions.add(subscription)
        return subscription

    def _release(self, subscription: Subscription) -> None:
        topic = subscription.topic
        with self._lock:
            self._followers -= 1
            with topic.lock:
                topic.subscriptions.discard(subscription)
                topic.parked.pop(subscription, None)
                if not topic.subscriptions:
                    self._topics.pop(subscription.job_id, None)


@dataclass(eq=False)
class Subscription:
    bus: LogBus
    job_id: str
    topic: _Topic
    waker: threading.Event = field(default_factory=threading.Event)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.bus._release(self)

    def seen(self) -> Seen:
        with self.topic.lock:
            return Seen(self.topic.version, self.topic.status_version)

    def wait(self, seen: int, timeout: float, parked: Parked | None = None) -> None:
        """Until a notification newer than `seen` that needs this follower, the bus
        closing, or `timeout`. While it sleeps, notify() writes new bytes on its behalf
        if it is `parked` (and advances that Parked); it is never parked afterwards."""
        self.waker.clear()  # before the check: a later notify sets it again
        with self.topic.lock:
            if self.topic.version != seen or self.bus.closed:
                return
            if parked is not None:
                self.topic.parked[self] = parked
            self.topic.asleep += 1
        try:
            self.waker.wait(timeout)
        finally:
            with self.topic.lock:
                self.topic.asleep -= 1
                self.topic.parked.pop(self, None)
