"""The job state machine: the transition table and the only code that writes
`jobs.status` (the state names and groups are flashpods.common.jobstates, shared with
the client).

A job's row is created by `insert` (always `pending`) and its status changes only
through `transition`, which checks the table. `guard` makes SQLite refuse any other
write of the column at run time (tests/api/test_api_jobstate.py also scans the source).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from flashpods.common.jobstates import ACTIVE, ENDED, OVER, STATES

if TYPE_CHECKING:
    from flashpods.api.db import Store

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"starting", "failed", "cancelled"}),
    # A container can end before its `running` was observed.
    "starting": frozenset({"running", "completed", "failed", "timed_out", "cancelled"}),
    "running": frozenset({"completed", "failed", "timed_out", "cancelled"}),
    **{ended: frozenset({"cleaning"}) for ended in ENDED},
    "cleaning": frozenset({"cleaned"}),
    "cleaned": frozenset(),
}


def can_transition(source: str, target: str) -> bool:
    return target in TRANSITIONS.get(source, frozenset())


def sources_of(target: str) -> tuple[str, ...]:
    return tuple(state for state in STATES if can_transition(state, target))


def status_in(states: Iterable[str], column: str = "status") -> str:
    """SQL `status IN ('a', 'b')` for a group of our own state names (never user input)."""
    names = tuple(states)
    if not names or any(name not in STATES for name in names):
        raise ValueError(f"not job states: {names}")
    return f"{column} IN ({', '.join(repr(name) for name in names)})"


# Jobs whose container holds (or is about to hold) CPUs and memory: `pending` rows exist
# only for the moment between admission and the start of their container, and a cancelled
# job holds its share until its container has stopped.
HOLDING_SQL = f"({status_in(ACTIVE)} OR (status = 'cancelled' AND cancel_requested = 1))"


def holds_resources(row: dict[str, Any]) -> bool:
    """HOLDING_SQL for one row: the job has not ended yet as far as its container goes."""
    return row["status"] in ACTIVE or (
        row["status"] == "cancelled" and bool(row["cancel_requested"])
    )


def settled(row: dict[str, Any]) -> bool:
    """The job has ended and nothing about it is still happening: its log is complete
    and its artifacts are in place. An ended status alone is not enough: a cancelled job
    is `cancelled` from the DELETE on while its container is still being stopped (and
    printing); on_finished clears cancel_requested and copy_in_progress at the very end."""
    return row["status"] in OVER and not row["cancel_requested"] and not row["copy_in_progress"]


_writer = threading.local()


@contextmanager
def _writing() -> Iterator[None]:
    _writer.active = True
    try:
        yield
    finally:
        _writer.active = False


def insert(store: Store, **fields: Any) -> None:
    """The job's row, in its first state (`pending`)."""
    columns = ", ".join(("status", *fields))
    marks = ", ".join("?" * (len(fields) + 1))
    with _writing():
        store.execute(
            f"INSERT INTO jobs ({columns}) VALUES ({marks})", ("pending", *fields.values())
        )


def transition(
    store: Store,
    job_id: str,
    target: str,
    only_from: tuple[str, ...] | None = None,
    **fields: Any,
) -> bool:
    """Move the job to `target` (setting `fields` too) if its current state is one of
    `only_from` (default: every state the table allows to reach `target`); False if it
    is not. Works inside `store.transaction()` as well."""
    allowed = sources_of(target)
    sources = only_from or allowed
    if not sources or any(source not in allowed for source in sources):
        raise ValueError(f"no transition {sources} -> {target}")
    assignments = "".join(f", {name} = ?" for name in fields)
    sql = (
        f"UPDATE jobs SET status = ?, updated_at = ?{assignments} "
        f"WHERE id = ? AND {status_in(sources)}"
    )
    with _writing():
        return store.execute(sql, (target, time.time(), *fields.values(), job_id)) == 1


def _authorize(action: int, table: str | None, column: str | None, *_: Any) -> int:
    if getattr(_writer, "active", False) or table != "jobs":
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_INSERT or (action == sqlite3.SQLITE_UPDATE and column == "status"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def guard(conn: sqlite3.Connection) -> None:
    """From now on this connection refuses to insert jobs or write `jobs.status` outside
    `insert`/`transition` ("not authorized"). Installed after the migrations ran."""
    conn.set_authorizer(_authorize)
