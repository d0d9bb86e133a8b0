"""`systemd-analyze security` of the two Flashpods services, measured here, not guessed.

The units are rendered from what the modules define (tests/nix/eval-modules.nix) the way
NixOS writes [Service] sections (nixos/lib/systemd-lib.nix: booleans true/false, a list
one line per item) and scored with `systemd-analyze security --offline=true`. The limits
(vm-tests/security-limits.json) are what vm-network asserts on the real host, whose
systemd (255 in nixos-24.05) may score a little differently than .ci/run's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from nix_support import REPO

LIMITS: dict[str, float] = json.loads((REPO / "vm-tests" / "security-limits.json").read_text())


def systemd_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def unit_file(unit: dict[str, Any]) -> str:
    lines = ["[Unit]", f"Description={unit['description']}", "", "[Service]"]
    lines += [f'Environment="{k}={v}"' for k, v in sorted(unit["environment"].items())]
    for key, value in unit["serviceConfig"].items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={systemd_value(item)}")
    return "\n".join(lines) + "\n"


def exposure(unit: dict[str, Any], name: str, tmp_path: Path) -> float:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd (scripts/setup.sh)")
    path = tmp_path / name
    path.write_text(unit_file(unit))
    out = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "→ Overall exposure level for NAME: 1.8 OK 🙂"
    return float(out.strip().splitlines()[-1].split(":")[1].split()[0])


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_exposure_is_within_the_vm_tests_limit(
    units: dict[str, Any], name: str, tmp_path: Path
) -> None:
    measured = exposure(units[name.removesuffix(".service")], name, tmp_path)
    # The limit keeps 0.5 for systemd 255's scoring (nixos-24.05), no more: a change of
    # the unit's sandbox moves the limit with it (vm-tests/security-limits.json).
    assert round(LIMITS[name] - measured, 1) == 0.5, f"measured {measured}, limit {LIMITS[name]}"


def test_a_weaker_unit_exceeds_the_limit(units: dict[str, Any], tmp_path: Path) -> None:
    """The token service without its network sandbox scores worse than its limit."""
    name = "flashpods-token-service.service"
    unit = units["flashpods-token-service"]
    weaker = {
        **unit,
        "serviceConfig": {
            k: v
            for k, v in unit["serviceConfig"].items()
            if k not in ("PrivateNetwork", "IPAddressDeny", "RestrictAddressFamilies")
        },
    }
    assert exposure(weaker, name, tmp_path) > LIMITS[name]
