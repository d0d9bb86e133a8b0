"""Configuration: environment over ~/.config/flashpods/config.{toml,json} over defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flashpods.client.config import load_config
from flashpods.client.errors import FlashpodsError


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), **extra}


def test_defaults_are_the_seed_addresses(tmp_path: Path) -> None:
    config = load_config(_env(tmp_path, FLASHPODS_API_TOKEN="abc"))
    assert config.base_url == "http://10.0.0.1:8080"
    assert config.rsync_url == "rsync://10.0.0.1/uploads"
    assert config.token == "abc"


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    directory = tmp_path / ".config" / "flashpods"
    directory.mkdir(parents=True)
    (directory / "config.toml").write_text('host = "10.9.9.9"\nport = 9000\ntoken = "filetok"\n')
    from_file = load_config(_env(tmp_path))
    assert (from_file.base_url, from_file.token) == ("http://10.9.9.9:9000", "filetok")
    assert from_file.rsync_url == "rsync://10.9.9.9/uploads"
    env = _env(
        tmp_path,
        FLASHPODS_HOST="127.0.0.1",
        FLASHPODS_PORT="18080",
        FLASHPODS_API_TOKEN="envtok",
        FLASHPODS_RSYNC_PORT="18873",
    )
    config = load_config(env)
    assert (config.base_url, config.token) == ("http://127.0.0.1:18080", "envtok")
    assert config.rsync_url == "rsync://127.0.0.1:18873/uploads"


def test_json_config_and_xdg_config_home(tmp_path: Path) -> None:
    directory = tmp_path / "xdg" / "flashpods"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(
        json.dumps({"token": "j", "rsync_url": "rsync://h:1/uploads/"})
    )
    config = load_config({"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": "/nonexistent"})
    assert (config.token, config.rsync_url) == ("j", "rsync://h:1/uploads")


def test_token_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("  deadbeef\n")
    config = load_config(_env(tmp_path, FLASHPODS_API_TOKEN_FILE=str(token_file)))
    assert config.token == "deadbeef"


@pytest.mark.parametrize(
    ("env", "file_text", "code"),
    [
        ({}, None, "missing_token"),
        ({"FLASHPODS_API_TOKEN_FILE": "/nonexistent/token"}, None, "missing_token"),
        ({"FLASHPODS_API_TOKEN": "x", "FLASHPODS_PORT": "http"}, None, "invalid_config"),
        ({"FLASHPODS_API_TOKEN": "x", "FLASHPODS_PORT": "70000"}, None, "invalid_config"),
        ({"FLASHPODS_API_TOKEN": "x", "FLASHPODS_RSYNC_URL": "ssh://h/x"}, None, "invalid_config"),
        ({"FLASHPODS_API_TOKEN": "x"}, "hots = 'typo'\n", "invalid_config"),
        ({"FLASHPODS_API_TOKEN": "x"}, "host = \n", "invalid_config"),
    ],
)
def test_bad_configuration_is_one_clear_error(
    tmp_path: Path, env: dict[str, str], file_text: str | None, code: str
) -> None:
    if file_text is not None:
        directory = tmp_path / ".config" / "flashpods"
        directory.mkdir(parents=True)
        (directory / "config.toml").write_text(file_text)
    with pytest.raises(FlashpodsError) as err:
        load_config(_env(tmp_path, **env))
    assert err.value.code == code
    assert err.value.status is None
