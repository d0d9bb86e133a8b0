"""What the laptop remembers between uploads: each folder's last upload, the base of its
next one (client/bases.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flashpods.client import bases
from flashpods.client.bases import MAX_FOLDERS, UploadBases, folder_key, parse, with_upload
from flashpods.client.config import resolve_config

API = "http://10.0.0.1:8080"


def test_a_folder_is_one_key_however_it_is_spelled(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    os.symlink(tmp_path / "repo", tmp_path / "link")
    key = folder_key(API, tmp_path / "repo")
    assert folder_key(API + "/", tmp_path / "link" / ".") == key
    assert folder_key("http://10.0.0.9:8080", tmp_path / "repo") != key  # another host


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"folders": []}',
        '{"folders": {"k": "upload_a"}}',
        '{"folders": {"k": {"upload_id": 5, "at": 1}}}',
        '{"folders": {"k": {"upload_id": "upload_a", "at": "yesterday"}}}',
    ],
)
def test_a_malformed_file_remembers_nothing(text: str) -> None:
    assert parse(text) == {}


def test_only_the_most_recent_folders_are_kept() -> None:
    folders: dict[str, dict[str, object]] = {}
    for n in range(MAX_FOLDERS + 5):
        folders = with_upload(folders, f"k{n}", f"upload_{n}", at=float(n))
    assert len(folders) == MAX_FOLDERS
    assert "k4" not in folders and "k5" in folders
    again = with_upload(folders, "k5", "upload_new", at=1000.0)
    assert again["k5"] == {"upload_id": "upload_new", "at": 1000.0} and len(again) == MAX_FOLDERS


def test_remember_and_get(tmp_path: Path) -> None:
    store = UploadBases(tmp_path / "cache" / "flashpods")
    assert store.get(API, tmp_path) is None  # no file yet
    store.remember(API, tmp_path, "upload_a")
    store.remember(API, tmp_path / "sub", "upload_b")
    store.remember(API, tmp_path, "upload_c")
    assert store.get(API, tmp_path) == "upload_c"
    assert store.get(API, tmp_path / "sub") == "upload_b"
    assert sorted(os.listdir(tmp_path / "cache" / "flashpods")) == [bases.FILE_NAME]
    saved = json.loads((tmp_path / "cache" / "flashpods" / bases.FILE_NAME).read_text())
    assert set(saved["folders"]) == {folder_key(API, tmp_path), folder_key(API, tmp_path / "sub")}


def test_an_unwritable_cache_costs_the_base_not_the_upload(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the directory should be")
    store = UploadBases(tmp_path / "cache" / "flashpods")
    store.remember(API, tmp_path, "upload_a")  # logged, not raised
    assert store.get(API, tmp_path) is None


def test_the_cache_directory_follows_xdg() -> None:
    env = {"FLASHPODS_API_TOKEN": "t", "HOME": "/home/u"}
    assert resolve_config(env, {}).cache_dir == Path("/home/u/.cache/flashpods")
    env["XDG_CACHE_HOME"] = "/var/cache/u"
    assert resolve_config(env, {}).cache_dir == Path("/var/cache/u/flashpods")
