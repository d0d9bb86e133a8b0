"""Wake-ups for log followers: `notify(job_id)` wakes every follower of that job.

Jobs notifies on every status change and whenever the runtime's log capture reports new
bytes (JobHooks.on_output); GET /jobs/{id}/output?follow=true sleeps here in between.
The bus also bounds how many followers there are (each holds a server thread).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flashpods.common.errors import ServiceError


@dataclass
class _Topic:
    condition: threading.Condition = field(default_factory=threading.Condition)
    version: int = 0  # any notification
    status_version: int = 0  # notifications of a status change
    subscribers: int = 0
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
        if topic is not None:
            with topic.condition:
                topic.version += 1
                topic.status_version += status
                topic.condition.notify_all()

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
        with topic.condition:
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
            topic.subscribers += 1
        return Subscription(self, job_id, topic)

    def _release(self, job_id: str, topic: _Topic) -> None:
        with self._lock:
            self._followers -= 1
            topic.subscribers -= 1
            if topic.subscribers == 0:
                self._topics.pop(job_id, None)


@dataclass
class Subscription:
    bus: LogBus
    job_id: str
    topic: _Topic
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.bus._release(self.job_id, self.topic)

    def seen(self) -> Seen:
        with self.topic.condition:
            return Seen(self.topic.version, self.topic.status_version)

    def wait(self, seen: int, timeout: float) -> None:
        """Until a notification newer than `seen`, the bus closing, or `timeout`."""
        with self.topic.condition:
            self.topic.asleep += 1
            try:
                self.topic.condition.wait_for(
                    lambda: self.topic.version != seen or self.bus.closed, timeout
                )
            finally:
                self.topic.asleep -= 1
