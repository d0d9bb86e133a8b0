"""What `nix flake check` and `nixos-rebuild` would reject, caught without nixpkgs.

tests/nix/standin models nixos-24.05's option types and merges, its module system and the
nixpkgs options the modules set, and a stub of its package set; these tests evaluate the
flake's real module lists and package expressions against it, and show that the stand-in
rejects what nixpkgs rejects (each test breaks one thing on purpose).
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nix_support import REPO

CONCERNS = [
    "wireguard",
    "firewall",
    "podman",
    "rsyncd",
    "spire",
    "flashpods-api",
    "token-service",
    "default",
]


def nix_error(nix_instantiate: str, expr: str) -> str:
    """The error of an evaluation that must fail."""
    proc = subprocess.run(
        [nix_instantiate, "--eval", "--strict", "--json", "--expr", expr],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0, f"{expr!r} evaluated:\n{proc.stdout[:500]}"
    return proc.stderr


def modules_with(settings: str) -> str:
    return f"import ./tests/nix/eval-modules.nix {{ settings = {settings}; }}"


def test_the_flake_names_every_concern(nix_eval: Callable[[str], Any]) -> None:
    names = nix_eval("builtins.attrNames (import ./tests/nix/standin/flake.nix).flake.nixosModules")
    assert sorted(names) == sorted(CONCERNS)


def test_every_pair_of_nixos_modules_imports_together(nix_eval: Callable[[str], Any]) -> None:
    """A user may import any two of nixosModules (or `default` and one more)."""
    pairs = list(itertools.combinations(CONCERNS, 2))
    expr = (
        "[ "
        + " ".join(
            f'(let r = import ./tests/nix/eval-modules.nix {{ nixosModules = [ "{a}" "{b}" ]; }}; '
            "in builtins.deepSeq r (builtins.attrNames r.config.systemd.services))"
            for a, b in pairs
        )
        + " ]"
    )
    units = dict(zip(pairs, nix_eval(expr), strict=True))
    # Each concern still brings its own units along.
    assert "rsync" in units[("wireguard", "rsyncd")]
    assert "spire-agent" in units[("firewall", "spire")]
    assert "flashpods-token-service" in units[("token-service", "default")]


def test_importing_two_concerns_used_to_define_the_spire_package_twice(
    nix_instantiate: str,
) -> None:
    """The same anonymous module twice (no `key`): a package option takes one definition."""
    spire = "lib.mkDefault (import ./tests/nix/standin/flake.nix).stub.spireRecent"
    twice = (
        "{ lib, ... }: { imports = [ "
        f"{{ services.flashpods.spire.package = {spire}; }} "
        f"{{ services.flashpods.spire.package = {spire}; }} "
        "]; }"
    )
    error = nix_error(nix_instantiate, modules_with(twice))
    assert "`services.flashpods.spire.package' is defined multiple times" in error, error


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        # types.ints.between: a string is not an int
        ('{ services.flashpods.uid = "2000"; }', "`services.flashpods.uid' is not of type"),
        # types.str (mergeEqualOption): two different values at the same priority
        (
            '{ imports = [ { services.flashpods.api.defaultImage = "a"; } '
            '{ services.flashpods.api.defaultImage = "b"; } ]; }',
            "`services.flashpods.api.defaultImage' has conflicting definition values",
        ),
        # a typo: nixpkgs has no such option
        ("{ services.flashpods.api.prot = 1; }", "`services.flashpods.api.prot' does not exist"),
        ("{ networking.firewal.enable = true; }", "`networking.firewal' does not exist"),
        # systemd unit names and Type= values are checked
        (
            '{ systemd.services.flashpods-api.after = [ "spire-agent" ]; }',
            "`systemd.services.flashpods-api.after.[definition 2-entry 1]' is not of type",
        ),
        (
            '{ systemd.services.flashpods-api.serviceConfig.Type = "daemon"; }',
            "`systemd.services.flashpods-api.serviceConfig' is not of type",
        ),
        # a unit option that nixpkgs' module already sets differently (rsyncd.nix)
        (
            "{ systemd.services.rsync.serviceConfig.RestartSec = 5; }",
            "`systemd.services.rsync.serviceConfig.RestartSec' has conflicting definition values",
        ),
        # enum
        (
            '{ networking.nftables.tables.flashpods.family = "inet6"; }',
            "`networking.nftables.tables.flashpods.family' is not of type",
        ),
    ],
)
def test_the_stand_in_rejects_what_nixpkgs_rejects(
    nix_instantiate: str, settings: str, message: str
) -> None:
    error = nix_error(nix_instantiate, f"builtins.deepSeq ({modules_with(settings)}) true")
    assert message in error, error


def test_mkdefault_yields_and_mkforce_wins(eval_modules: Callable[[str], dict[str, Any]]) -> None:
    config = eval_modules(
        "{ lib, ... }: { imports = ["
        ' { services.flashpods.api.defaultImage = lib.mkDefault "weak"; }'
        ' { services.flashpods.api.defaultImage = "plain"; }'
        ' { services.flashpods.api.agentCommand = "plain"; }'
        ' { services.flashpods.api.agentCommand = lib.mkForce "forced"; } ]; }'
    )["config"]
    env = config["systemd"]["services"]["flashpods-api"]["environment"]
    assert env["FLASHPODS_DEFAULT_IMAGE"] == "plain"
    assert env["FLASHPODS_AGENT_COMMAND"] == "forced"


# --- package expressions against a stub of nixos-24.05's package set -----------------


def test_every_package_and_check_evaluates(nix_eval: Callable[[str], Any]) -> None:
    built = nix_eval("import ./tests/nix/eval-packages.nix")
    assert set(built) == {
        "default",
        "flashpods",
        "spiffe",
        "sqlite-utils",
        "tools",
        "claude-code",
        "job-image",
        "package-default",
        "package-flashpods",
        "package-spiffe",
        "package-sqlite-utils",
        "package-tools",
        "package-claude-code",
        "package-job-image",
        "python-unit",
        "python-format",
        "nix-static",
    }
    assert all(path.startswith("/nix/store/") for path in built.values())


def package_error(nix_instantiate: str, body: str, tmp_path: Path) -> str:
    expr_file = tmp_path / "package.nix"
    expr_file.write_text(body)
    return nix_error(
        nix_instantiate,
        f"(import ./tests/nix/standin/flake.nix).stub.pkgs.callPackage {expr_file} {{ }}",
    )


def test_the_stub_has_only_nixos_24_05_attributes(nix_instantiate: str, tmp_path: Path) -> None:
    # The MCP SDK is not packaged in nixos-24.05 (nix/flashpods.nix drops it).
    error = package_error(
        nix_instantiate, "{ python3Packages }: python3Packages.mcp.outPath", tmp_path
    )
    assert "attribute 'mcp' missing" in error, error
    error = package_error(nix_instantiate, "{ spire-static }: spire-static", tmp_path)
    assert "`spire-static' is not an attribute of nixos-24.05's package set" in error, error


def test_a_go_build_without_cgo_must_not_run_its_checks(
    nix_instantiate: str, tmp_path: Path
) -> None:
    body = """{ }: ((import ./tests/nix/standin/flake.nix).stub.spireRecent.overrideAttrs (old: {
      env = old.env // { CGO_ENABLED = "0"; };
    })).outPath"""
    expr_file = tmp_path / "static.nix"
    expr_file.write_text(body.replace("./tests", f"{REPO}/tests"))
    error = nix_error(nix_instantiate, f"import {expr_file} {{ }}")
    assert "CGO_ENABLED=0 but doCheck is not false" in error, error


def test_relaxed_python_dependencies_need_the_hook(nix_instantiate: str, tmp_path: Path) -> None:
    error = package_error(
        nix_instantiate,
        """{ python3Packages }: (python3Packages.buildPythonPackage {
             pname = "x"; version = "1"; pythonRelaxDeps = [ "click" ];
           }).outPath""",
        tmp_path,
    )
    assert "pythonRelaxDeps without pythonRelaxDepsHook" in error, error


def test_the_vm_tests_host_evaluates(nix_eval: Callable[[str], Any]) -> None:
    """vm-tests/nodes.nix's host node, with the test's defaults, against the stand-in."""
    result = nix_eval("import ./tests/nix/eval-modules.nix { vmHost = true; }")
    assert result["failedAssertions"] == [] and result["warnings"] == []
    config = result["config"]
    units = config["systemd"]["services"]
    env = units["flashpods-api"]["environment"]
    assert env["FLASHPODS_DEFAULT_IMAGE"] == "localhost/flashpods-job:latest"
    assert env["FLASHPODS_PULL_POLICY"] == "never"
    assert "flashpods-image-prepull" not in units
    assert "load --input /nix/store/" in units["flashpods-image-load"]["script"]
    # What the test scripts read from /etc.
    assert {
        "flashpods-test/deployment.json",
        "flashpods-test/secrets.json",
        "flashpods-test/security-limits.json",
    } <= set(config["environment"]["etc"])
    assert config["virtualisation"]["memorySize"] == 3072
