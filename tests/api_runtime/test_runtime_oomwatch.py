"""OomWatch's thread: how it ends."""

from __future__ import annotations

import os
from pathlib import Path

from flashpods.api.runtime import oomwatch


def test_oom_watch_stop_wakes_the_event_wait(tmp_path: Path, monkeypatch) -> None:
    """The container ended but its cgroup lives on (podman's cleanup removes it later):
    stop() must not wait for the cgroup's event, however long that wait is."""
    counter = tmp_path / "memory.oom_control"
    counter.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (tmp_path / "cgroup.event_control").write_text("")  # registration succeeds: event mode
    monkeypatch.setattr(oomwatch, "memory_counter_file", lambda text: counter)
    monkeypatch.setattr(oomwatch, "EVENT_WAIT_SECONDS", 600)
    watch = oomwatch.OomWatch(os.getpid())
    watch.start()
    assert watch.stop(0) is False
    assert not watch._thread.is_alive()  # woken, not left behind by stop's join timeout
