"""Signatures of test_driver.machine (nixos-24.05) that vm-tests/*.py use."""

from __future__ import annotations

from collections.abc import Callable

class Machine:
    name: str

    def succeed(self, *commands: str, timeout: int | None = None) -> str: ...
    def fail(self, *commands: str, timeout: int | None = None) -> str: ...
    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: int | None = 900,
    ) -> tuple[int, str]: ...
    def wait_for_unit(self, unit: str, user: str | None = None, timeout: int = 900) -> None: ...
    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str: ...

def retry(fn: Callable[[bool], bool], timeout: int = 900) -> None: ...
