"""The few `spire-server` admin commands the bootstrap needs (JSON output, v1.13)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.common.polling import poll
from flashpods.common.programs import ProgramFailure, run_program


class SpireCommandError(RuntimeError):
    pass


@dataclass(frozen=True)
class Entry:
    entry_id: str
    spiffe_id: str
    parent_id: str
    selectors: frozenset[str]


def _spiffe_id(obj: dict[str, Any]) -> str:
    return f"spiffe://{obj['trust_domain']}{obj['path']}"


def parse_entries(payload: dict[str, Any]) -> list[Entry]:
    return [
        Entry(
            entry_id=raw["id"],
            spiffe_id=_spiffe_id(raw["spiffe_id"]),
            parent_id=_spiffe_id(raw["parent_id"]),
            selectors=frozenset(f"{s['type']}:{s['value']}" for s in raw.get("selectors", [])),
        )
        for raw in payload.get("entries", [])
    ]


@dataclass(frozen=True)
class SpireServerCli:
    binary: Path
    socket_path: Path
    timeout: float = 30.0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), *args, "-socketPath", str(self.socket_path)]

        def failed(failure: ProgramFailure) -> SpireCommandError:
            return SpireCommandError(
                f"spire-server {' '.join(args[:2])} failed ({failure.reason}): "
                f"{failure.output.strip()}"
            )

        return run_program(cmd, fail=failed, check=check, timeout=self.timeout)

    def _json(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._run(*args, "-output", "json").stdout)
        return result

    def healthy(self) -> bool:
        return self._run("healthcheck", check=False).returncode == 0

    def wait_healthy(self, timeout: float) -> None:
        if not poll(self.healthy, timeout, interval=0.3):
            raise SpireCommandError(
                f"SPIRE server not healthy on {self.socket_path} after {timeout:.0f} s"
            )

    def bundle_pem(self) -> str:
        return self._run("bundle", "show").stdout

    def generate_token(self, spiffe_id: str, ttl_seconds: int) -> str:
        out = self._json("token", "generate", "-spiffeID", spiffe_id, "-ttl", str(ttl_seconds))
        return str(out["value"])

    def agent_ids(self) -> set[str]:
        return {_spiffe_id(a["id"]) for a in self._json("agent", "list").get("agents", [])}

    def agent_known(self, agent_id: str) -> bool:
        proc = self._run("agent", "show", "-spiffeID", agent_id, "-output", "json", check=False)
        if proc.returncode == 0:
            banned = json.loads(proc.stdout).get("banned", False)
            return not banned
        if "NotFound" in proc.stderr:
            return False
        raise SpireCommandError(f"spire-server agent show failed: {proc.stderr.strip()}")

    def entries(self, spiffe_id: str) -> list[Entry]:
        return parse_entries(self._json("entry", "show", "-spiffeID", spiffe_id))

    def create_entry(self, spiffe_id: str, parent_id: str, selectors: frozenset[str]) -> None:
        args = ["entry", "create", "-spiffeID", spiffe_id, "-parentID", parent_id]
        for selector in sorted(selectors):
            args += ["-selector", selector]
        self._run(*args, "-output", "json")

    def update_entry(self, entry: Entry, selectors: frozenset[str]) -> None:
        args = ["entry", "update", "-entryID", entry.entry_id, "-spiffeID", entry.spiffe_id]
        args += ["-parentID", entry.parent_id]
        for selector in sorted(selectors):
            args += ["-selector", selector]
        self._run(*args, "-output", "json")

    def delete_entry(self, entry_id: str) -> None:
        self._run("entry", "delete", "-entryID", entry_id, "-output", "json")
