"""Fixtures: a config in a temporary directory, the server in-process with a fake runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fakes import FakeRuntime
from api_harness import Api, make_env, start_api
from flashpods.api.config import Config, load_config


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(make_env(tmp_path))


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def api(config: Config, runtime: FakeRuntime) -> Iterator[Api]:
    running = start_api(config, runtime)
    yield running
    running.session.close()
    running.server.stop(grace=5)
