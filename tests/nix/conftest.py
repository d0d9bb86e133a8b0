"""Checks of the NixOS side that run without nixpkgs (Debian's nix-bin is enough).

`nix flake check` (the VM tests) needs Nix with a binary cache and KVM; these run in
.ci/run: every .nix file parses, the pure data and pure functions evaluate, the VM test
scripts lint, the seed's defects stay fixed and the modules' values equal the lab's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from nix_support import REPO


@pytest.fixture(scope="session")
def nix_instantiate() -> str:
    path = shutil.which("nix-instantiate")
    if path is None:
        pytest.fail("nix-instantiate is missing: install Debian's nix-bin (scripts/setup.sh does)")
    return path


@pytest.fixture(scope="session")
def nix_eval(nix_instantiate: str) -> Callable[[str], Any]:
    """Evaluate a Nix expression (paths relative to the repository) strictly, as JSON."""

    def evaluate(expr: str) -> Any:
        out = subprocess.run(
            [nix_instantiate, "--eval", "--strict", "--json", "--expr", expr],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, f"nix-instantiate failed for {expr!r}:\n{out.stderr}"
        return json.loads(out.stdout)

    return evaluate


@pytest.fixture(scope="session")
def render(nix_eval: Callable[[str], Any]) -> dict[str, Any]:
    """What the modules derive from the shared data (modules/lib/render.nix), evaluated."""
    result: dict[str, Any] = nix_eval(
        """
        let r = import ./modules/lib/render.nix; in {
          firewallTable = r.firewallTable { };
          spireServer = r.spireConfig "server";
          spireAgent = r.spireConfig "agent";
          spirePlaceholders = r.spirePlaceholders;
          tmpfilesRules = r.tmpfilesRules;
          apiEnvironment = r.apiEnvironment { };
          tokenServiceEnvironment = r.tokenServiceEnvironment { };
          rsyncdSettings = r.rsyncdSettings;
        }
        """
    )
    return result


@pytest.fixture(scope="session")
def eval_modules(nix_eval: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    """The modules evaluated by tests/nix/eval-modules.nix with extra `settings` (Nix)."""

    def evaluate(settings: str = "{ }") -> dict[str, Any]:
        result: dict[str, Any] = nix_eval(
            f"import ./tests/nix/eval-modules.nix {{ settings = {settings}; }}"
        )
        return result

    return evaluate


@pytest.fixture(scope="session")
def deployed(eval_modules: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The configuration nixosConfigurations.flashpods defines (our modules' part)."""
    return eval_modules()


@pytest.fixture(scope="session")
def units(deployed: dict[str, Any]) -> dict[str, Any]:
    """Its systemd services."""
    result: dict[str, Any] = deployed["config"]["systemd"]["services"]
    return result
