"""The job state machine is the only writer of `jobs.status`: in the source, and at run
time (the Store's connection refuses any other write of the column)."""

from __future__ import annotations

import ast
import re
import sqlite3
import time
from pathlib import Path

import pytest
from flashpods.api import jobstate
from flashpods.api.db import Store
from flashpods.common import jobstates

SERVICES = Path(jobstate.__file__).resolve().parents[2]
WRITES_STATUS = re.compile(
    r"\bUPDATE\s+jobs\s+SET\b(?:(?!\bWHERE\b).)*?(?<![\w.])status\s*=", re.I | re.S
)
INSERTS_JOB = re.compile(r"\b(INSERT|REPLACE)\s+(OR\s+\w+\s+)?INTO\s+jobs\b", re.I)
SQLITE_UTILS_WRITE = re.compile(
    r"""(table\(\s*["']jobs["']\s*\)|\[\s*["']jobs["']\s*\])\s*\.\s*(update|insert|upsert)"""
)


def sql_texts(tree: ast.AST) -> list[str]:
    """Every string in a module, f-strings with their literal parts joined."""
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            texts.append(
                "".join(
                    part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
                )
            )
    return texts


def status_writers(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.resolve() == Path(jobstate.__file__).resolve():
            continue
        source = path.read_text()
        texts = sql_texts(ast.parse(source))
        if any(
            WRITES_STATUS.search(t) or INSERTS_JOB.search(t) for t in texts
        ) or SQLITE_UTILS_WRITE.search(source):
            found.append(str(path.relative_to(root)))
    return found


def test_no_other_module_writes_the_status(tmp_path: Path) -> None:
    assert status_writers(SERVICES) == []
    # The scan does see the forms a bypass would take.
    bypass = tmp_path / "bypass.py"
    for text in (
        "conn.execute(\"UPDATE jobs SET status = 'failed' WHERE id = ?\", (i,))",
        'conn.execute(f"UPDATE jobs SET error = ?, status = ? WHERE {x}")',
        'conn.execute("update jobs set\\n  status=? where id=?")',
        'conn.execute("INSERT INTO jobs (id, status) VALUES (?, ?)")',
        'db.table("jobs").update(job_id, {"status": "failed"})',
    ):
        bypass.write_text(text + "\n")
        assert status_writers(tmp_path) == ["bypass.py"], text
    bypass.write_text('conn.execute("UPDATE jobs SET final_status = ? WHERE status = ?")\n')
    assert status_writers(tmp_path) == []


def new_job(store: Store, job_id: str = "job_1") -> None:
    now = time.time()
    jobstate.insert(
        store, id=job_id, type="worker", cpus=1, memory_gb=1, created_at=now, updated_at=now
    )


def test_the_connection_refuses_status_writes_outside_the_state_machine(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        new_job(store)
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            store.execute("UPDATE jobs SET status = 'failed' WHERE id = 'job_1'")
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            store.execute(
                "INSERT INTO jobs (id, type, status, created_at, updated_at) "
                "VALUES ('job_2', 'worker', 'running', 0, 0)"
            )
        # Other columns are anyone's to write.
        assert store.execute("UPDATE jobs SET error = 'x' WHERE id = 'job_1'") == 1
        assert store.one("SELECT status FROM jobs WHERE id = 'job_1'") == {"status": "pending"}
        assert jobstate.transition(store, "job_1", "starting")
        assert not jobstate.transition(store, "job_1", "starting")  # already there
        assert store.one("SELECT status FROM jobs WHERE id = 'job_1'") == {"status": "starting"}
    finally:
        store.close()


def test_transitions_outside_the_table_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        new_job(store)
        with pytest.raises(ValueError, match="no transition"):
            jobstate.transition(store, "job_1", "running", ("pending",))
        with pytest.raises(ValueError, match="no transition"):
            jobstate.transition(store, "job_1", "pending")
        assert jobstate.transition(store, "job_1", "cancelled")
        assert not jobstate.transition(store, "job_1", "failed")  # ended stays ended
        assert store.one("SELECT status FROM jobs WHERE id = 'job_1'") == {"status": "cancelled"}
    finally:
        store.close()


@pytest.mark.parametrize("status", jobstate.STATES)
@pytest.mark.parametrize("cancel_requested", [0, 1])
def test_holding_sql_and_holds_resources_agree(
    tmp_path: Path, status: str, cancel_requested: int
) -> None:
    with sqlite3.connect(tmp_path / "x.db") as conn:
        conn.execute("CREATE TABLE jobs (status TEXT, cancel_requested INTEGER)")
        conn.execute("INSERT INTO jobs VALUES (?, ?)", (status, cancel_requested))
        in_sql = bool(
            conn.execute(f"SELECT count(*) FROM jobs WHERE {jobstate.HOLDING_SQL}").fetchone()[0]
        )
    row = {"status": status, "cancel_requested": cancel_requested}
    assert jobstate.holds_resources(row) is in_sql


def test_groups_partition_the_states_the_table_knows() -> None:
    assert (*jobstate.ACTIVE, *jobstate.ENDED, *jobstates.CLEANUP) == jobstate.STATES
    assert set(jobstate.TRANSITIONS) == set(jobstate.STATES)
    assert set(jobstates.OVER) == set(jobstate.STATES) - set(jobstate.ACTIVE)
    assert set(jobstates.WITH_CONTAINER) <= set(jobstate.ACTIVE)
    assert ("all", *jobstate.STATES) == jobstates.STATUS_FILTERS


def test_status_in_names_only_states() -> None:
    assert jobstate.status_in(jobstate.ACTIVE) == "status IN ('pending', 'starting', 'running')"
    with pytest.raises(ValueError):
        jobstate.status_in(["running'); DROP TABLE jobs; --"])
