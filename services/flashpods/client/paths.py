"""Where downloaded files may land: strictly inside the directory the caller chose.

Artifact names come from the server and save_to paths from an agent; neither is
trusted. A name is a relative path of plain components (api.md allows
subdirectories); absolute paths, `..`, `.`, empty components, backslashes and NUL
are refused, and after creating parent directories the real (symlink-resolved)
parent must still be inside the root, so a symlink planted in the target directory
cannot redirect a write either.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from flashpods.client.errors import FlashpodsError
from flashpods.common.artifact_names import artifact_name_problem


def _refuse(what: str, why: str) -> FlashpodsError:
    return FlashpodsError("invalid_artifact_path", f"refusing {what}: {why}")


def check_relative(name: str, what: str = "artifact name") -> PurePosixPath:
    """Pure validation of a relative path; returns it as components."""
    if not name or "\x00" in name:
        raise _refuse(what, "empty or contains NUL")
    if "\\" in name:
        raise _refuse(what, f"{name!r} contains a backslash")
    if name.startswith("/"):
        raise _refuse(what, f"{name!r} is absolute")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise _refuse(what, f"{name!r} has an empty, '.' or '..' component")
    return PurePosixPath(*parts)


def check_artifact_name(name: str) -> PurePosixPath:
    """A name the server gave or an agent asked for, by the API's own rule."""
    problem = artifact_name_problem(name)
    if problem is not None:
        raise _refuse("artifact name", f"{name!r}: {problem}")
    return PurePosixPath(*name.split("/"))


def destination(root: Path, name: str, what: str = "artifact name") -> Path:
    """root/name after validation; creates the parent directories and checks that,
    symlinks resolved, the parent is still inside root."""
    rel = check_relative(name, what)
    real_root = root.resolve()
    target = real_root.joinpath(*rel.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    real_parent = target.parent.resolve()
    if not real_parent.is_relative_to(real_root):
        raise _refuse(what, f"{name!r} resolves outside {real_root}")
    final = real_parent / target.name
    if final.is_dir() and not final.is_symlink():
        raise _refuse(what, f"{final} is an existing directory")
    return final


def save_to_relative(root: Path, save_to: str) -> str:
    """An MCP `save_to` as a path relative to root: absolute paths are accepted only
    when they lie (lexically) inside root; the result is then checked like a name."""
    if "\x00" in save_to:
        raise _refuse("save_to", "contains NUL")
    if os.path.isabs(save_to):
        real_root = root.resolve()
        normal = Path(os.path.normpath(save_to))
        if not normal.is_relative_to(real_root) or normal == real_root:
            raise _refuse("save_to", f"{save_to!r} is outside {real_root}")
        return normal.relative_to(real_root).as_posix()
    return save_to
