"""The deployment's values, read from the same files the NixOS modules use.

`modules/data/flashpods.nix` is pure data; we evaluate it with Debian's nix-bin
(`nix-instantiate --eval --strict --json`, no nixpkgs needed), so the lab and the
tests cannot drift from what `nixos-rebuild` deploys.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from flashpods.common.programs import ProgramFailure, run_program

# The job image this repository builds (scripts/build-image.sh; nix/job-image.nix loads
# the same name): what the lab, the real-component tests and the benchmarks run.
JOB_IMAGE = "localhost/flashpods-job:latest"


def repo_root() -> Path:
    override = os.environ.get("FLASHPODS_REPO")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Where slow set-up results live, outside the repository (scripts/lib.sh agrees)."""
    return Path(os.environ.get("FLASHPODS_CACHE_DIR", "/var/cache/flashpods"))


def data_dir() -> Path:
    return repo_root() / "modules" / "data"


class DeploymentError(Exception):
    """The deployment data could not be read."""


def _evaluation_error(failure: ProgramFailure) -> DeploymentError:
    if failure.reason == "not found":
        return DeploymentError("nix-instantiate is missing (Debian's nix-bin: scripts/setup.sh)")
    return DeploymentError(
        f"evaluating modules/data/flashpods.nix failed ({failure.reason}): {failure.last_line}"
    )


@functools.cache
def values() -> dict[str, Any]:
    """modules/data/flashpods.nix as a dict.

    On NixOS the units get FLASHPODS_DEPLOYMENT_JSON: the same file, evaluated by the
    modules at build time (`builtins.toJSON`), so the host needs no nix-instantiate.
    """
    rendered = os.environ.get("FLASHPODS_DEPLOYMENT_JSON")
    if rendered:
        from_nixos: dict[str, Any] = json.loads(Path(rendered).read_text())
        return from_nixos
    out = run_program(
        ["nix-instantiate", "--eval", "--strict", "--json", str(data_dir() / "flashpods.nix")],
        fail=_evaluation_error,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def firewall_table_body(
    data: dict[str, Any] | None = None,
    *,
    job_uid: int | None = None,
    laptop_other_addresses: tuple[str, ...] = (),
) -> str:
    """The `table inet flashpods` body with its placeholders filled, as the module does
    (`job_uid`: the service user's real uid, the lab's is whatever useradd gave it;
    `laptop_other_addresses`: v4 or v6 addresses of the laptop besides its WireGuard one,
    which jobs may never reach, not even on port 53 — the lab's "internet" veth end)."""
    data = data or values()
    text = (data_dir() / "firewall.nft").read_text()
    other_v6 = [a for a in laptop_other_addresses if ":" in a]
    other_v4 = [a for a in laptop_other_addresses if ":" not in a]
    substitutions = {
        "@WG_IFACE@": data["wireguard"]["interface"],
        "@LAPTOP_ADDR@": data["wireguard"]["laptopAddress"],
        "@API_PORT@": str(data["api"]["port"]),
        "@RSYNC_PORT@": str(data["rsync"]["port"]),
        "@JOB_UID@": str(data["uid"] if job_uid is None else job_uid),
        "@EGRESS_DENY_V4@": ", ".join(data["egressDenyV4"]),
        "@LAPTOP_V4@": ", ".join([data["wireguard"]["laptopAddress"], *other_v4]),
        # nft refuses `elements = { }`: no element, no line (as render.nix does).
        "@LAPTOP_V6_ELEMENTS@": f"elements = {{ {', '.join(other_v6)} }}" if other_v6 else "",
    }
    for placeholder, value in substitutions.items():
        text = text.replace(placeholder, value)
    return text


def firewall_ruleset(
    data: dict[str, Any] | None = None,
    *,
    job_uid: int | None = None,
    laptop_other_addresses: tuple[str, ...] = (),
) -> str:
    """A complete ruleset for `nft -f`, the same table NixOS generates."""
    body = firewall_table_body(data, job_uid=job_uid, laptop_other_addresses=laptop_other_addresses)
    return "table inet flashpods {\n" + body + "}\n"
