"""The one program-running helper: each way a program can fail reaches the caller's error."""

from __future__ import annotations

import pytest
from flashpods.common.programs import ProgramFailure, run_program


class Failed(Exception):
    def __init__(self, failure: ProgramFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def test_success_returns_the_output() -> None:
    proc = run_program(["sh", "-c", "echo out; echo err >&2"], fail=Failed, timeout=30)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")


def test_exit_status_with_what_it_said() -> None:
    with pytest.raises(Failed) as info:
        run_program(["sh", "-c", "echo first >&2; echo last >&2; exit 3"], fail=Failed, timeout=30)
    failure = info.value.failure
    assert (failure.reason, failure.returncode, failure.last_line) == ("exit 3", 3, "last")
    assert failure.command == "sh -c echo first >&2; echo last >&2; exit 3"


def test_stdout_counts_when_stderr_is_silent() -> None:
    with pytest.raises(Failed) as info:
        run_program(["sh", "-c", "echo only-stdout; exit 1"], fail=Failed, timeout=30)
    assert info.value.failure.last_line == "only-stdout"


def test_unchecked_failure_is_the_callers_to_judge() -> None:
    assert run_program(["false"], fail=Failed, check=False, timeout=30).returncode == 1


def test_missing_program() -> None:
    with pytest.raises(Failed) as info:
        run_program(["/nonexistent/flashpods-nothing"], fail=Failed, check=False, timeout=30)
    assert (info.value.failure.reason, info.value.failure.returncode) == ("not found", None)


def test_timeout_kills_and_fails() -> None:
    with pytest.raises(Failed) as info:
        run_program(["sleep", "30"], fail=Failed, check=False, timeout=0.2)
    assert info.value.failure.reason == "timed out after 0.2 s"


def test_input_reaches_the_program() -> None:
    assert run_program(["cat"], fail=Failed, input="fed", timeout=30).stdout == "fed"
