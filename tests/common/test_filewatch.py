"""FileWatch: a write to the watched file makes its descriptor readable; nothing else does."""

from __future__ import annotations

import select
from pathlib import Path

from flashpods.common.filewatch import FileWatch


def _woken(watch: FileWatch, timeout: float) -> bool:
    assert watch.fd is not None
    return bool(select.select([watch.fd], [], [], timeout)[0])


def test_a_write_wakes_and_drain_quiets_it(tmp_path: Path) -> None:
    path = tmp_path / "raw"
    path.write_bytes(b"")
    watch = FileWatch()
    try:
        assert watch.watch(path)
        assert not _woken(watch, 0)
        with path.open("ab") as fh:
            fh.write(b"x")
        assert _woken(watch, 5)
        watch.drain()
        assert not _woken(watch, 0)
    finally:
        watch.close()


def test_watching_a_new_file_forgets_the_old_one(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"")
    new.write_bytes(b"")
    watch = FileWatch()
    try:
        assert watch.watch(old)
        assert watch.watch(new)
        old.write_bytes(b"ignored")
        assert not _woken(watch, 0.2)  # a bounded look for an event that must not come
        new.write_bytes(b"seen")
        assert _woken(watch, 5)
    finally:
        watch.close()


def test_a_missing_file_cannot_be_watched(tmp_path: Path) -> None:
    watch = FileWatch()
    try:
        assert not watch.watch(tmp_path / "absent")
    finally:
        watch.close()
