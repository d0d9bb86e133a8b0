"""Fixtures of the client's unit tests (the scripted server lives in client_stub.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_stub import Stub, running_stub


@pytest.fixture
def stub() -> Iterator[Stub]:
    with running_stub() as server:
        yield server
