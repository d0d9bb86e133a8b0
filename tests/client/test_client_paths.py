"""Downloads land strictly inside the chosen directory, whatever names arrive."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flashpods.client import paths
from flashpods.client.errors import FlashpodsError
from flashpods.common.artifact_names import artifact_name_problem

ESCAPES = [
    "../evil",
    "a/../../evil",
    "/etc/passwd",
    "a\\..\\evil",
    "",
    ".",
    "a//b",
    "a/./b",
    "x\x00y",
    "..",
]


@pytest.mark.parametrize("name", ESCAPES)
def test_names_that_could_escape_are_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "dl"
    with pytest.raises(FlashpodsError) as err:
        paths.destination(root, name)
    assert err.value.code == "invalid_artifact_path"
    assert not root.exists()  # nothing was created for a refused name


@pytest.mark.parametrize("name", ["report.txt", ".hidden", "sub/dir/out.bin", "..dots", "a..b"])
def test_plain_relative_names_are_accepted(tmp_path: Path, name: str) -> None:
    target = paths.destination(tmp_path / "dl", name)
    assert target == (tmp_path / "dl").resolve() / name
    assert target.parent.is_dir()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a..b", "name contains '..'"),
        ("sub/ lead", "name has leading or trailing whitespace"),
        ("x" * 256, "name longer than 255 characters"),
        ("sub/./x", "name is '.'"),
        ("a\\b", "name contains a slash or backslash"),
        ("a//b", "empty name"),
    ],
)
def test_artifact_names_follow_the_apis_rule_and_words(name: str, problem: str) -> None:
    """The client refuses what the API's validation refuses, saying the same thing."""
    with pytest.raises(FlashpodsError) as err:
        paths.check_artifact_name(name)
    assert err.value.code == "invalid_artifact_path"
    assert err.value.message.endswith(f": {problem}")
    assert artifact_name_problem(name) == problem


def test_artifact_names_the_api_accepts_pass() -> None:
    for name in ("report.txt", ".hidden", "sub/dir/out.bin", "ü.md", "with space.txt"):
        assert paths.check_artifact_name(name).as_posix() == name


def test_a_symlinked_subdirectory_cannot_redirect_a_write(tmp_path: Path) -> None:
    root, outside = tmp_path / "dl", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "sub")
    with pytest.raises(FlashpodsError) as err:
        paths.destination(root, "sub/x.txt")
    assert err.value.code == "invalid_artifact_path"
    assert list(outside.iterdir()) == []


def test_an_existing_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "dl" / "thing").mkdir(parents=True)
    with pytest.raises(FlashpodsError):
        paths.destination(tmp_path / "dl", "thing")


def test_save_to_absolute_only_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "dl"
    assert paths.save_to_relative(root, str(root / "a" / "b.txt")) == "a/b.txt"
    assert paths.save_to_relative(root, "rel/x") == "rel/x"
    for bad in ("/etc/passwd", str(root / ".." / "x"), str(root), str(tmp_path / "dl2" / "x")):
        with pytest.raises(FlashpodsError) as err:
            paths.save_to_relative(root, bad)
        assert err.value.code == "invalid_artifact_path"
