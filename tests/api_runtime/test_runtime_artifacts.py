"""Artifact rules: names, symlinks, limits, and the in-place collector."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from flashpods.api.runtime import ArtifactRecord, artifacts_collect
from flashpods.api.runtime.artifacts_collect import (
    MAX_DEPTH,
    MAX_WARNINGS,
    ArtifactCollectionError,
    ArtifactLimits,
    collect_artifacts,
    resolve_in_tree,
)
from flashpods.common.artifact_names import artifact_name_problem, component_problem
from hypothesis import given, settings
from hypothesis import strategies as st

NOBODY = pwd.getpwnam("nobody")


def copied(root: Path) -> Path:
    """Where collect() copies what `root` keeps (the job's host directory)."""
    return root.parent / f"{root.name}.copied"


def collect(
    root: Path,
    limits: ArtifactLimits,
    warn: Callable[[str], None],
    seconds: float = artifacts_collect.COLLECT_SECONDS,
) -> list[ArtifactRecord]:
    """The collector on `root` given by descriptor, as the pin gives the tmpfs."""
    copied(root).mkdir(exist_ok=True)
    source = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        return collect_artifacts(source, copied(root), limits, warn, seconds)
    finally:
        os.close(source)


@pytest.mark.parametrize(
    "name",
    ["", "a" * 256, "a\\b", "a/b", "..", "x..y", "nul\0", " lead", "trail ", "tab\t", "."],
)
def test_bad_names(name: str) -> None:
    assert component_problem(name) is not None


@pytest.mark.parametrize("name", ["report.txt", ".hidden", "a" * 255, "with space.txt", "ü.md"])
def test_good_names(name: str) -> None:
    assert component_problem(name) is None


def resolved(root: Path, *parts: str) -> Path | None:
    """resolve_in_tree's answer as a path (for asserting), its descriptor closed."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        answer = resolve_in_tree(root_fd, parts)
        if answer is None:
            return None
        directory, name = answer
        try:
            return Path(os.readlink(f"/proc/self/fd/{directory}")) / name
        finally:
            os.close(directory)
    finally:
        os.close(root_fd)


def test_resolve_in_tree(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    os.symlink("d/f", tmp_path / "rel")
    os.symlink("/artifacts/d/f", tmp_path / "abs")
    os.symlink("../../etc/passwd", tmp_path / "d" / "up")
    os.symlink("/etc/passwd", tmp_path / "host")
    os.symlink("/", tmp_path / "slash")
    os.symlink("slash/etc/passwd", tmp_path / "via_slash")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    os.symlink("d", tmp_path / "dirlink")
    os.symlink("dirlink/f", tmp_path / "via")
    (tmp_path / "f").write_text("top")
    os.symlink("../f", tmp_path / "d" / "sibling")
    os.symlink(".", tmp_path / "self")
    os.symlink("self/" * 50 + "d/f", tmp_path / "many_hops")
    assert resolved(tmp_path, "rel") == tmp_path / "d" / "f"
    assert resolved(tmp_path, "abs") == tmp_path / "d" / "f"
    assert resolved(tmp_path, "via") == tmp_path / "d" / "f"
    assert resolved(tmp_path, "d", "sibling") == tmp_path / "f"
    assert resolved(tmp_path, "d", "up") is None
    assert resolved(tmp_path, "host") is None
    assert resolved(tmp_path, "slash") is None
    assert resolved(tmp_path, "via_slash") is None
    assert resolved(tmp_path, "loop1") is None
    assert resolved(tmp_path, "many_hops") is None  # more than 40 links on the way
    os.symlink("nope/x", tmp_path / "dangling")
    assert resolved(tmp_path, "dangling") is None


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
    records = collect(root, ArtifactLimits(), warnings.append)
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
    assert (root / "locked").stat().st_mode & 0o777 == 0o700
    # Exactly what is kept is copied out: same bytes and mtime, ours alone.
    out = copied(root)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == names
    for record in records:
        kept, copy = root / record.name, out / record.name
        assert copy.read_bytes() == kept.read_bytes()
        assert copy.stat().st_mtime_ns == kept.stat().st_mtime_ns
        assert copy.stat().st_mode & 0o777 == 0o600 and not copy.is_symlink()
        assert copy.stat().st_ino != kept.stat().st_ino
    assert (out / "sub").stat().st_mode & 0o777 == 0o700
    text = "\n".join(warnings)
    assert "'escape' skipped: symlink dangles, loops or resolves outside /artifacts" in text
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
    records = collect(root, limits, warnings.append)
    assert [r.name for r in records] == ["f0", "f1", "f2"]  # the 4th would pass 35 bytes
    assert sorted(p.name for p in root.iterdir()) == ["f0", "f1", "f2"]
    assert any("'huge' skipped: larger than 50 bytes" in w for w in warnings)
    limits = ArtifactLimits(max_files=2)
    for i in range(5):
        (root / f"g{i}").write_bytes(b"y")
    records = collect(root, limits, warnings.append)
    assert len(records) == 2
    assert any("more than 2 files" in w for w in warnings)


def test_a_second_collection_replaces_the_first_copy(tmp_path: Path) -> None:
    # The API stopped half-way through a copy: the next collection starts over.
    root = tmp_path / "job"
    root.mkdir()
    (root / "a").write_text("new")
    copied(root).mkdir()
    (copied(root) / "a").write_text("half")
    (copied(root) / "stale").mkdir()
    records = collect(root, ArtifactLimits(), lambda _: None)
    assert [r.name for r in records] == ["a"]
    assert sorted(p.name for p in copied(root).iterdir()) == ["a"]
    assert (copied(root) / "a").read_text() == "new"


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
        copied(root).mkdir()
        os.chown(copied(root), NOBODY.pw_uid, NOBODY.pw_gid)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            code = "no error"
            try:
                os.setgid(NOBODY.pw_gid)
                os.setuid(NOBODY.pw_uid)
                collect(root, ArtifactLimits(), lambda _: None)
            except ArtifactCollectionError as exc:
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


def test_the_service_user_opens_up_what_it_owns_without_privileges() -> None:
    """As `nobody` (no CAP_DAC_OVERRIDE, like the API's user): a job's `chmod 000` on
    /artifacts, a subdirectory and a file it owns is undone through O_PATH descriptors."""
    base = Path(tempfile.mkdtemp(prefix="fp-artifacts-"))
    try:
        base.chmod(0o755)
        root = base / "artifacts"
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "f.txt").write_text("x")
        for path in (root, root / "sub", root / "sub" / "f.txt"):
            os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
        for path in (root / "sub" / "f.txt", root / "sub", root):
            path.chmod(0)
        copied(root).mkdir()
        os.chown(copied(root), NOBODY.pw_uid, NOBODY.pw_gid)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            answer = "error"
            try:
                os.setgid(NOBODY.pw_gid)
                os.setuid(NOBODY.pw_uid)
                records = collect(root, ArtifactLimits(), lambda _: None)
                answer = ",".join(r.name for r in records)
            finally:
                os.write(write_end, answer.encode())
                os._exit(0)
        os.close(write_end)
        os.waitpid(child, 0)
        with os.fdopen(read_end) as result:
            assert result.read() == "sub/f.txt"
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert stat.S_IMODE((root / "sub").stat().st_mode) == 0o700
        assert stat.S_IMODE((root / "sub" / "f.txt").stat().st_mode) == 0o600
        assert (copied(root) / "sub" / "f.txt").read_text() == "x"
    finally:
        shutil.rmtree(base)


# --- hostile trees ----------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def leftovers(root: Path) -> set[str]:
    """Every non-directory left under root, relative, '/'-separated."""
    found = set()
    for base, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(base, d))]:
            found.add(os.path.relpath(os.path.join(base, name), root))
    return found


def test_a_700_deep_tree_ends_and_keeps_only_max_depth(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(700):  # by descriptor: the path would be too long for mkdir -p
        os.mkdir("x", dir_fd=fd)
        child = os.open("x", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as fh:
        fh.write("hi")
    os.close(fd)
    (root / "top.txt").write_text("kept")
    before = open_fds()
    warnings: list[str] = []
    records = collect(root, ArtifactLimits(), warnings.append)
    assert [r.name for r in records] == ["top.txt"]
    assert open_fds() == before
    assert any(f"deeper than {MAX_DEPTH} directory levels" in w for w in warnings)
    depth = 0
    here = root
    while (here / "x").is_dir():
        here, depth = here / "x", depth + 1
    assert depth == MAX_DEPTH


def test_names_that_are_not_utf8_are_removed_and_never_reported(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    (root / "ok.txt").write_text("x")
    with open(bytes(root) + b"/bad\xff", "w") as fh:
        fh.write("x")
    os.mkdir(bytes(root) + b"/dir\xfe")
    with open(bytes(root) + b"/dir\xfe/inner", "w") as fh:
        fh.write("x")
    warnings: list[str] = []
    records = collect(root, ArtifactLimits(), warnings.append)
    assert [r.name for r in records] == ["ok.txt"]
    assert os.listdir(bytes(root)) == [b"ok.txt"]
    assert sum("name is not valid UTF-8" in w for w in warnings) == 2
    for warning in warnings:
        warning.encode("utf-8")  # what reaches the job log (or SQLite) is valid UTF-8


def test_fifo_socket_and_links_out_are_removed_without_touching_the_host(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host data")
    os.mkfifo(root / "fifo")  # opening it would block: the walk never opens files
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock"))
    server.close()
    os.symlink("/", root / "slash")
    os.symlink(outside, root / "out_dir")
    os.symlink(outside / "precious", root / "out_file")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.symlink(".", root / "self")
    os.symlink("../outside/precious", root / "up")
    (root / "keep.txt").write_text("k")
    warnings: list[str] = []
    records = collect(root, ArtifactLimits(), warnings.append)
    assert [r.name for r in records] == ["keep.txt"]
    assert os.listdir(root) == ["keep.txt"]
    assert (outside / "precious").read_text() == "host data"
    assert len(warnings) == 9


def test_a_directory_made_unreadable_by_the_job_at_the_root_is_opened_up(tmp_path: Path) -> None:
    """...for the service user alone: artifacts are nobody else's to read."""
    root = tmp_path / "job"
    root.mkdir()
    (root / "r.txt").write_text("x")
    (root / "r.txt").chmod(0)
    (root / "wide").write_text("w")
    (root / "wide").chmod(0o666)  # the job's own umask: opened to all
    root.chmod(0)  # `chmod 000 /artifacts` inside the job: same uid as the API
    records = collect(root, ArtifactLimits(), lambda _: None)
    assert [r.name for r in records] == ["r.txt", "wide"]
    assert (root / "wide").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / "r.txt").stat().st_mode & 0o777 == 0o600


def test_wide_directories_are_read_in_sorted_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts_collect, "CHUNK", 7)
    root = tmp_path / "job"
    names = [f"d{i:03}" for i in range(40)]
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "f").write_text(name)
    (root / "empty_dirs").mkdir()
    for i in range(30):
        (root / "empty_dirs" / f"e{i}").mkdir()
    records = collect(root, ArtifactLimits(max_files=25), lambda _: None)
    assert [r.name for r in records] == [f"{name}/f" for name in names[:25]]
    assert leftovers(root) == {f"{name}/f" for name in names[:25]}


def test_the_file_limit_then_drains_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    for i in range(3000):
        (root / f"f{i:05}").write_bytes(b"")
    (root / "zz").mkdir()
    (root / "zz" / "late").write_text("x")
    warnings: list[str] = []
    records = collect(root, ArtifactLimits(), warnings.append)
    assert [r.name for r in records] == [f"f{i:05}" for i in range(200)]
    assert len(os.listdir(root)) == 200
    # Bounded: the first MAX_WARNINGS, then one line counting the rest.
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[-1] == f"{2801 - MAX_WARNINGS} more artifact warnings not shown"


def peak_memory(root: Path, files: int) -> int:
    root.mkdir()
    for i in range(files):
        (root / f"f{i:06}").write_bytes(b"")
    tracemalloc.start()
    try:
        collect(root, ArtifactLimits(), lambda _: None)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_files(tmp_path: Path) -> None:
    # Both above one CHUNK of names: what is held per directory is bounded by it.
    small = peak_memory(tmp_path / "small", 2_000)
    large = peak_memory(tmp_path / "large", 8_000)
    assert large < small + 64 * 1024, (small, large)


def test_the_walk_gives_up_at_its_deadline(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    (root / "f").write_text("x")
    with pytest.raises(ArtifactCollectionError) as raised:
        collect(root, ArtifactLimits(), lambda _: None, seconds=-1)
    assert raised.value.code == "artifact_copy_timeout"


def test_past_the_deadline_with_the_records_settled_the_removal_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "job"
    root.mkdir()
    for i in range(50):
        (root / f"f{i:02}").write_text("x")
    monkeypatch.setattr(artifacts_collect, "CHUNK", 5)
    clock = iter(range(1000))  # one "second" per look at the clock
    monkeypatch.setattr(artifacts_collect.time, "monotonic", lambda: float(next(clock)))
    warnings: list[str] = []
    records = collect(root, ArtifactLimits(max_files=3), warnings.append, seconds=5)
    assert [r.name for r in records] == ["f00", "f01", "f02"]
    assert "stopped after" in warnings[-1]
    assert len(os.listdir(root)) > 3  # the cleanup loop removes the rest with the directory


ENTRY_NAMES = st.binary(min_size=1, max_size=6).filter(lambda b: b"/" not in b and b"\0" not in b)


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> dict[bytes, object]:
    """name -> bytes (file), dict (directory), str (symlink target) or None (FIFO)."""
    kinds = [
        st.binary(max_size=20),
        st.none(),
        st.sampled_from(["/", "..", ".", "a", "/artifacts/a", "../../x", "b/a"]),
    ]
    if depth < 3:
        kinds.append(trees(depth + 1))  # type: ignore[arg-type]
    return draw(st.dictionaries(ENTRY_NAMES, st.one_of(*kinds), max_size=5))


def build(root: bytes, tree: dict[bytes, object]) -> None:
    for name, value in tree.items():
        path = root + b"/" + name
        if name in (b".", b".."):
            continue
        if isinstance(value, bytes):
            with open(path, "wb") as fh:
                fh.write(value)
        elif isinstance(value, dict):
            os.mkdir(path)
            build(path, value)
        elif isinstance(value, str):
            os.symlink(value, path)
        else:
            os.mkfifo(path)


@given(tree=trees())
@settings(max_examples=150, deadline=None)
def test_any_tree_ends_with_only_valid_reported_files(tree: dict[bytes, object]) -> None:
    base = Path(tempfile.mkdtemp(prefix="fp-walk-"))
    try:
        root = base / "job"
        root.mkdir()
        outside = base / "outside"
        outside.write_text("host")
        build(bytes(root), tree)
        limits = ArtifactLimits(max_file_bytes=15, max_total_bytes=40, max_files=6)
        warnings: list[str] = []
        records = collect(root, limits, warnings.append)
        names = [r.name for r in records]
        assert len(names) <= 6 and sum(r.size_bytes for r in records) <= 40
        assert set(names) == leftovers(root)  # nothing unreported stays, nothing else
        for name in names:
            name.encode("utf-8")
            assert artifact_name_problem(name) is None
            assert (root / name).is_file() and not (root / name).is_symlink()
        assert outside.read_text() == "host"
        for warning in warnings:
            warning.encode("utf-8")
    finally:
        shutil.rmtree(base)
