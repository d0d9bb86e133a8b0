"""The one deadline-polling helper."""

from __future__ import annotations

import threading

import pytest
from flashpods.common.polling import poll, wait_until


def test_returns_as_soon_as_the_condition_holds() -> None:
    answers = iter([False, False, True])
    calls = []

    def condition() -> bool:
        calls.append(1)
        return next(answers)

    assert poll(condition, timeout=60, interval=0)
    assert len(calls) == 3


def test_checks_once_more_at_the_deadline_then_gives_up() -> None:
    calls = []
    assert not poll(lambda: calls.append(1) is not None, timeout=0)
    assert len(calls) == 1


def test_the_conditions_exception_propagates() -> None:
    def condition() -> bool:
        raise RuntimeError("died")

    with pytest.raises(RuntimeError, match="died"):
        poll(condition, timeout=60)


def test_stop_ends_the_wait() -> None:
    stop = threading.Event()
    stop.set()
    assert not poll(lambda: False, timeout=3600, stop=stop)


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match="waiting for the moon"):
        wait_until(lambda: False, 0, "the moon")


def test_an_unset_stop_does_not_end_the_wait() -> None:
    answers = iter([False, False, True])
    assert poll(lambda: next(answers), timeout=60, interval=0, stop=threading.Event())
