"""Artifact rules: names, symlinks, limits, and the in-place collector."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from flashpods.api.runtime.artifacts_copy import (
    ArtifactCopyError,
    ArtifactLimits,
    collect_artifacts,
    name_problem,
    relative_name_problem,
    resolve_in_tree,
)

NOBODY = pwd.getpwnam("nobody")


@pytest.mark.parametrize(
    "name",
    ["", "a" * 256, "a\\b", "a/b", "..", "x..y", "nul\0", " lead", "trail ", "tab\t", "."],
)
def test_bad_names(name: str) -> None:
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", ["report.txt", ".hidden", "a" * 255, "with space.txt", "ü.md"])
def test_good_names(name: str) -> None:
    assert name_problem(name) is None


def test_relative_names() -> None:
    assert relative_name_problem("sub/dir/file.txt") is None
    assert relative_name_problem("sub/../etc/passwd") is not None
    assert relative_name_problem("/abs") is not None
    assert relative_name_problem("") is not None


def test_resolve_in_tree(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    os.symlink("d/f", tmp_path / "rel")
    os.symlink("/artifacts/d/f", tmp_path / "abs")
    os.symlink("../../etc/passwd", tmp_path / "d" / "up")
    os.symlink("/etc/passwd", tmp_path / "host")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    os.symlink("d", tmp_path / "dirlink")
    os.symlink("dirlink/f", tmp_path / "via")
    assert resolve_in_tree(tmp_path, ("rel",)) == ("d", "f")
    assert resolve_in_tree(tmp_path, ("abs",)) == ("d", "f")
    assert resolve_in_tree(tmp_path, ("via",)) == ("d", "f")
    assert resolve_in_tree(tmp_path, ("d", "up")) is None
    assert resolve_in_tree(tmp_path, ("host",)) is None
    assert resolve_in_tree(tmp_path, ("loop1",)) is None
    os.symlink("nope", tmp_path / "dangling")
    assert resolve_in_tree(tmp_path, ("dangling",)) is None


def test_collector_applies_every_rule(tmp_path: Path) -> None:
    root = tmp_path / "job"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "data.bin").write_bytes(b"1234")
    (root / "report.txt").write_text("ok")
    (root / ".hidden").write_text("h")
    (root / "trailing ").write_text("bad name")
    os.symlink("/etc/shadow", root / "escape")
    os.symlink("../report.txt", root / "sub" / "inside")
    os.mkfifo(root / "fifo")
    (root / "locked").mkdir()
    (root / "locked" / "kept.txt").write_text("k")
    (root / "locked").chmod(0)  # the job may leave a directory unreadable
    warnings: list[str] = []
    records = collect_artifacts(root, ArtifactLimits(), warnings.append)
    names = sorted(r.name for r in records)
    assert names == [
        ".hidden",
        "locked/kept.txt",
        "report.txt",
        "sub/deeper/data.bin",
        "sub/inside",
    ]
    assert {r.name: r.size_bytes for r in records}["sub/inside"] == 2
    # What broke a rule is gone from the directory; the link is now a plain file.
    assert not (root / "escape").exists() and not (root / "escape").is_symlink()
    assert not (root / "trailing ").exists()
    assert not (root / "fifo").exists()
    assert not (root / "sub" / "inside").is_symlink()
    assert (root / "sub" / "inside").read_text() == "ok"
    assert (root / "locked").stat().st_mode & 0o777 == 0o755
    text = "\n".join(warnings)
    assert "'escape' skipped: symlink dangles or resolves outside /artifacts" in text
    assert "'.hidden' has a leading '.'" in text
    assert "'trailing ' skipped" in text
    assert "'fifo' skipped" in text


def test_collector_limits(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(b"x" * 10)
    (root / "huge").write_bytes(b"x" * 100)
    warnings: list[str] = []
    limits = ArtifactLimits(max_file_bytes=50, max_total_bytes=35, max_files=4)
    records = collect_artifacts(root, limits, warnings.append)
    assert [r.name for r in records] == ["f0", "f1", "f2"]  # the 4th would pass 35 bytes
    assert sorted(p.name for p in root.iterdir()) == ["f0", "f1", "f2"]
    assert any("'huge' skipped: larger than 50 bytes" in w for w in warnings)
    limits = ArtifactLimits(max_files=2)
    for i in range(5):
        (root / f"g{i}").write_bytes(b"y")
    records = collect_artifacts(root, limits, warnings.append)
    assert len(records) == 2
    assert any("more than 2 files" in w for w in warnings)


def test_collector_maps_a_vanished_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactCopyError) as raised:
        collect_artifacts(tmp_path / "gone", ArtifactLimits(), lambda _: None)
    assert raised.value.code == "artifact_copy_container_gone"


def test_collector_maps_an_unreadable_directory_to_permission() -> None:
    # The API runs as `flashpods`, not root: a directory a job made unreadable to it must
    # end the copy with artifact_copy_permission. Run the collector as `nobody` (a fork).
    base = Path(tempfile.mkdtemp(prefix="fp-artifacts-"))
    try:
        base.chmod(0o755)
        root = base / "artifacts"
        (root / "private").mkdir(parents=True)
        (root / "private" / "secret.txt").write_text("x")
        (root / "public.txt").write_text("y")
        root.chmod(0o755)
        (root / "private").chmod(0o700)  # owned by root
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            code = "no error"
            try:
                os.setgid(NOBODY.pw_gid)
                os.setuid(NOBODY.pw_uid)
                collect_artifacts(root, ArtifactLimits(), lambda _: None)
            except ArtifactCopyError as exc:
                code = exc.code
            finally:
                os.write(write_end, code.encode())
                os._exit(0)
        os.close(write_end)
        os.waitpid(child, 0)
        with os.fdopen(read_end) as result:
            assert result.read() == "artifact_copy_permission"
        assert (root / "private" / "secret.txt").exists()  # nothing removed on the way out
    finally:
        shutil.rmtree(base)
