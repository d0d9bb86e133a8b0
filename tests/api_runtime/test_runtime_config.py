"""The runtime's configuration: from the API's Config and from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashpods.api.config import ConfigError, ModelService, load_config, parse_model_service
from flashpods.api.runtime import JobSpec
from flashpods.api.runtime.podman import PodmanConfig, PodmanRuntime, raw_log_path


def test_from_api_config_carries_every_runtime_knob(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t" * 64)
    env = {
        "FLASHPODS_DB_PATH": str(tmp_path / "db" / "f.db"),
        "FLASHPODS_UPLOADS_PATH": str(tmp_path / "uploads"),
        "FLASHPODS_ARTIFACTS_PATH": str(tmp_path / "artifacts"),
        "FLASHPODS_LOGS_PATH": str(tmp_path / "logs"),
        "FLASHPODS_LISTEN_ADDR": "127.0.0.1:0",
        "FLASHPODS_TOKEN_FILE": str(tmp_path / "token"),
        "FLASHPODS_PODMAN_SOCKET": "/run/x/podman.sock",
        "FLASHPODS_INSTANCE": "lab",
        "FLASHPODS_PULL_POLICY": "never",
        "FLASHPODS_LOG_MAX_BYTES": "4096",
        "FLASHPODS_TOOLS_DIR": "/opt/tools",
        "FLASHPODS_AGENT_COMMAND": "fake-agent",
        "FLASHPODS_ARTIFACT_MAX_FILES": "7",
        "FLASHPODS_MODEL_BASE_URL": "http://198.51.100.2:8001",
        "FLASHPODS_MODEL_MAX_RETRIES": "0",
        "FLASHPODS_MODEL_TIMEOUT_MS": "15000",
        "FLASHPODS_JOB_NETWORK": "flashpods-jobs",
    }
    runtime = PodmanRuntime(load_config(env))
    config = runtime.config
    assert config.socket_path == Path("/run/x/podman.sock")
    assert (config.instance, config.pull_policy, config.log_max_bytes) == ("lab", "never", 4096)
    assert config.tools_dir == Path("/opt/tools")
    assert config.agent_command == "fake-agent"
    assert config.artifact_limits.max_files == 7
    assert config.model_service == ModelService("http://198.51.100.2:8001", 0, 15000)
    assert config.network == "flashpods-jobs"
    assert PodmanConfig.from_api(load_config({**env, "FLASHPODS_JOB_NETWORK": ""})).network is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FLASHPODS_MODEL_BASE_URL", "api.anthropic.com", "must be an http"),
        ("FLASHPODS_MODEL_BASE_URL", "ftp://model.example", "must be an http"),
        ("FLASHPODS_MODEL_BASE_URL", "https://model.example/?k=v", "without a query"),
        ("FLASHPODS_MODEL_MAX_RETRIES", "two", "must be a number"),
        ("FLASHPODS_MODEL_MAX_RETRIES", "-1", "must not be negative"),
        ("FLASHPODS_MODEL_TIMEOUT_MS", "0", "at least 1"),
    ],
)
def test_bad_model_service_settings_stop_the_api(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_model_service({name: value})


def test_no_model_service_settings_keep_the_cli_defaults() -> None:
    assert parse_model_service({}) == ModelService()
    assert set(ModelService().environment().values()) == {""}


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError):
        PodmanConfig(pull_policy="sometimes")
    with pytest.raises(ValueError):
        PodmanConfig(log_max_bytes=10)
    with pytest.raises(ValueError):
        PodmanConfig(tools_dir=Path("/opt/a:b"))


def test_raw_log_sits_hidden_next_to_the_job_log() -> None:
    spec = JobSpec("job_1", "worker", "img", 1, 1, 1, Path("/a/job_1"), Path("/logs/job_1.log"))
    assert raw_log_path(spec) == Path("/logs/.job_1.ctr.log")
