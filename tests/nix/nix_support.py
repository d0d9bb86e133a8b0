"""Helpers shared by the tests of tests/nix (pure functions over the repository's files)."""

from __future__ import annotations

from pathlib import Path

from flashpods import deployment

REPO = deployment.repo_root()
MODULES = REPO / "modules"


def module_files() -> list[Path]:
    """The NixOS modules (not the shared data, not the pure helpers)."""
    return sorted(MODULES.glob("*.nix"))


def strip_nix_comments(text: str) -> str:
    """Drop `#` comments (whole lines and trailing ones outside double-quoted strings)."""
    kept: list[str] = []
    for line in text.splitlines():
        in_string = False
        cut = len(line)
        for i, ch in enumerate(line):
            if ch == '"' and (i == 0 or line[i - 1] != "\\"):
                in_string = not in_string
            elif ch == "#" and not in_string:
                cut = i
                break
        kept.append(line[:cut])
    return "\n".join(kept)
