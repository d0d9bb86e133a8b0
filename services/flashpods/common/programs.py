"""The one way to run a program and turn its failure into the caller's own error.

Output is captured as text; a program that is missing, does not finish in time or exits
non-zero (when `check`) becomes a ProgramFailure, which the caller's `fail` turns into
its error (LabError, SpireCommandError, ContainerError, …) with the words it wants.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgramFailure:
    argv: tuple[str, ...]
    reason: str  # "not found", "timed out after N s", "exit N", or an OSError's name
    returncode: int | None  # None: it did not run to the end
    output: str  # what it said: stderr, else stdout

    @property
    def command(self) -> str:
        return " ".join(self.argv)

    @property
    def last_line(self) -> str:
        lines = self.output.strip().splitlines()
        return lines[-1] if lines else ""


def run_program(
    argv: Sequence[str],
    *,
    fail: Callable[[ProgramFailure], Exception],
    check: bool = True,
    timeout: float,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to the end; raise fail(...) if it could not run, or failed and `check`."""
    command = tuple(argv)
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            env=None if env is None else dict(env),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise fail(ProgramFailure(command, "not found", None, str(exc))) from exc
    except subprocess.TimeoutExpired as exc:
        raise fail(ProgramFailure(command, f"timed out after {timeout:g} s", None, "")) from exc
    except OSError as exc:
        raise fail(ProgramFailure(command, type(exc).__name__, None, str(exc))) from exc
    if check and proc.returncode != 0:
        said = proc.stderr if proc.stderr.strip() else proc.stdout
        raise fail(ProgramFailure(command, f"exit {proc.returncode}", proc.returncode, said))
    return proc
