"""Every .nix file of the repository parses (nix-instantiate --parse, no nixpkgs needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nix_support import REPO


def nix_files() -> list[Path]:
    return sorted(
        path
        for path in REPO.rglob("*.nix")
        if not any(part.startswith(".") or part.startswith("result") for part in path.parts)
    )


def parse(nix_instantiate: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nix_instantiate, "--parse", str(path)], capture_output=True, text=True, check=False
    )


def test_the_nixos_side_is_all_there() -> None:
    names = {str(p.relative_to(REPO)) for p in nix_files()}
    expected = {
        "flake.nix",
        "configuration.nix",
        "modules/wireguard.nix",
        "modules/firewall.nix",
        "modules/podman.nix",
        "modules/rsyncd.nix",
        "modules/spire.nix",
        "modules/flashpods-api.nix",
        "modules/token-service.nix",
        "modules/data/flashpods.nix",
        "nix/flashpods.nix",
        "nix/py-spiffe.nix",
        "vm-tests/network.nix",
        "vm-tests/jobs.nix",
    }
    assert expected <= names, sorted(expected - names)


def test_every_nix_file_parses(nix_instantiate: str) -> None:
    failures = {
        str(path.relative_to(REPO)): proc.stderr.strip()
        for path in nix_files()
        if (proc := parse(nix_instantiate, path)).returncode != 0
    }
    assert failures == {}


def test_a_syntax_error_is_reported(nix_instantiate: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.nix"
    broken.write_text("{ a = 1; b = ; }\n")
    proc = parse(nix_instantiate, broken)
    assert proc.returncode != 0
    assert "syntax error" in proc.stderr
