"""A brand-new machine has what the project needs: a minimal Debian bookworm root with
exactly scripts/setup.sh's packages, installed without Recommends (as setup.sh does),
provides every program of flashpods.host_programs (ours, podman's, the tests').

The root is cached per package list (flashpods_testing.debian_root); the first run after
the list changes bootstraps and installs for real (a few minutes, Debian mirror needed).
"""

from __future__ import annotations

import os

import pytest
from flashpods import host_programs
from flashpods_testing import debian_root

pytestmark = pytest.mark.slow


def test_setup_packages_provide_every_program_on_a_minimal_debian() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (debootstrap, chroot)")
    packages = debian_root.setup_packages()
    root = debian_root.root_for(packages)
    assert debian_root.missing_programs(root, host_programs.ALL) == []
