"""The pure parts of flashpods_testing.debian_root: which packages setup.sh installs and
when a cached root is reused."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashpods_testing import debian_root


def test_setup_packages_reads_the_array_as_bash_would(tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "OTHER=(not-this)\n"
        "DEB_PACKAGES=(podman catatonit  # podman's --init\n"
        "  rsync\n"
        "  # a whole comment line\n"
        "\tnftables)\n"
        'for p in "${DEB_PACKAGES[@]}"; do :; done\n'
    )
    assert debian_root.setup_packages(script) == ("podman", "catatonit", "rsync", "nftables")


def test_setup_packages_of_the_real_script_include_podmans_init() -> None:
    packages = debian_root.setup_packages()
    assert {"podman", "catatonit", "uidmap", "slirp4netns"} <= set(packages)


def test_no_array_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "setup.sh"
    script.write_text("apt-get install podman\n")
    with pytest.raises(debian_root.DebianRootError, match="no DEB_PACKAGES"):
        debian_root.setup_packages(script)


def test_the_root_is_reused_for_the_same_list_only() -> None:
    key = debian_root.root_key(["podman", "rsync"])
    assert debian_root.root_key(["rsync", "podman", "rsync"]) == key  # order, repeats
    assert debian_root.root_key(["podman"]) != key
    assert debian_root.root_key(["podman", "rsync", "catatonit"]) != key
