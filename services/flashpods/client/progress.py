"""What the CLI shows on stderr while it works.

On a terminal, long steps (upload, waiting for capacity, download) redraw one status
line in place; elsewhere (pipes, CI logs) only finished steps are printed, one plain
line each, and nothing is redrawn. Quiet mode (--json) prints nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class Progress:
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    live: bool = False  # redraw a status line (a terminal)
    quiet: bool = False
    _drawn: bool = False

    @classmethod
    def for_stream(cls, stream: TextIO, quiet: bool) -> Progress:
        return cls(stream=stream, live=stream.isatty() and not quiet, quiet=quiet)

    def update(self, text: str) -> None:
        """A transient status: redrawn on a terminal, dropped elsewhere."""
        if not self.live:
            return
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn = True

    def done(self, text: str) -> None:
        """A finished step: always one line (unless quiet)."""
        if self.quiet:
            return
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False
