"""A minimal Debian root holding exactly scripts/setup.sh's packages (no Recommends),
and which of flashpods.host_programs it lacks: what a brand-new machine would lack.

Cached outside the repository, in deployment.cache_dir()/debian-roots: the bookworm
minbase (debootstrap, once), the downloaded .debs (shared by every list) and one root
per package list, keyed by a hash of the sorted list. The programs are looked up again
on every call, so a change of either list is checked for real; a warm check is one
chroot. Needs root and the Debian mirror.

    python -m flashpods_testing.debian_root [--without PACKAGE ...]

prints what such a root lacks (exit 1 if anything), e.g. `--without catatonit`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from flashpods import deployment, host_programs
from flashpods.common.programs import ProgramFailure, run_program

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SETUP_SCRIPT = deployment.repo_root() / "scripts" / "setup.sh"
KEEP_ROOTS = 2  # the current list's root and one other (e.g. a --without experiment)
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Prints each argument that is not an executable: a name looked up on PATH, or a path.
_LOOKUP = (
    'for p in "$@"; do case "$p" in'
    ' /*) [ -x "$p" ] || echo "$p" ;;'
    ' *) command -v "$p" >/dev/null || echo "$p" ;;'
    " esac; done"
)
_ARRAY = re.compile(r"^DEB_PACKAGES=\(([^)]*)\)", re.MULTILINE)


class DebianRootError(Exception):
    """Building the root failed; the message carries the failing tool's output."""


def setup_packages(script: Path = SETUP_SCRIPT) -> tuple[str, ...]:
    """The words of setup.sh's `DEB_PACKAGES=(...)` (comments allowed inside)."""
    found = _ARRAY.search(script.read_text())
    if found is None:
        raise DebianRootError(f"no DEB_PACKAGES=(...) in {script}")
    lines = (line.split("#", 1)[0] for line in found.group(1).splitlines())
    return tuple(word for line in lines for word in line.split())


def root_key(packages: Sequence[str]) -> str:
    text = "\n".join([SUITE, *sorted(set(packages))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(argv: list[str], what: str) -> None:
    env = {"PATH": ROOT_PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}

    def failed(failure: ProgramFailure) -> DebianRootError:
        return DebianRootError(f"{what}: {failure.reason}: {failure.output[-3000:]}")

    # debootstrap and apt-get download: an hour is a hung mirror, not a slow one.
    run_program(argv, fail=failed, env=env, timeout=3600)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time (the lead's suite and a helper's run may overlap)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _mounts_under(path: Path) -> list[str]:
    points = (line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines())
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def _remove(path: Path) -> None:
    """rm -rf, but never through a mount an interrupted debootstrap left (its /proc)."""
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    if _mounts_under(path):
        raise DebianRootError(f"cannot unmount what is mounted under {path}")
    shutil.rmtree(path, ignore_errors=True)


def _minbase(cache: Path) -> Path:
    base = cache / f"minbase-{SUITE}"
    if (base / ".complete").exists():
        return base
    _remove(base)
    _run(["debootstrap", "--variant=minbase", SUITE, str(base), MIRROR], "debootstrap")
    (base / ".complete").touch()
    return base


def _install(root: Path, packages: Sequence[str], archives: Path) -> None:
    """apt-get install inside the root, the .debs kept in `archives` for the next list."""
    root_archives = root / "var/cache/apt/archives"
    archives.mkdir(exist_ok=True)
    for deb in archives.glob("*.deb"):
        shutil.copy2(deb, root_archives / deb.name)
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    # No daemon of a package may start during the install (invoke-rc.d honours this).
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _run(["chroot", str(root), "apt-get", "-qq", "update"], "apt-get update")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    _run(["chroot", str(root), *install], "apt-get install")
    for deb in root_archives.glob("*.deb"):
        if not (archives / deb.name).exists():
            shutil.copy2(deb, archives / deb.name)
    _run(["chroot", str(root), "apt-get", "clean"], "apt-get clean")


def _prune(cache: Path) -> None:
    roots = sorted(
        (p for p in cache.glob("root-*") if (p / ".complete").exists()),
        key=lambda p: (p / ".complete").stat().st_mtime,
        reverse=True,
    )
    for old in roots[KEEP_ROOTS:]:
        _remove(old)


def root_for(packages: Sequence[str], cache: Path | None = None) -> Path:
    """The minimal root with exactly `packages` installed, built on first use."""
    cache = cache or deployment.cache_dir() / "debian-roots"
    root = cache / f"root-{root_key(packages)}"
    with _locked(cache):
        if not (root / ".complete").exists():
            partial = root.with_name(root.name + ".partial")
            _remove(partial)
            _run(["cp", "-a", str(_minbase(cache)), str(partial)], "copying the minbase")
            (partial / ".complete").unlink()
            _install(partial, packages, cache / "archives")
            (partial / ".complete").touch()
            partial.rename(root)
        (root / ".complete").touch()  # most recently used: kept by _prune
        _prune(cache)
    return root


def missing_programs(root: Path, programs: Sequence[str] = host_programs.ALL) -> list[str]:
    """Which of `programs` the root lacks, looked up inside it (its PATH, its symlinks)."""
    argv = ["chroot", str(root), "/bin/sh", "-c", _LOOKUP, "sh", *programs]
    result = subprocess.run(
        argv, capture_output=True, text=True, env={"PATH": ROOT_PATH}, check=True
    )
    return result.stdout.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashpods_testing.debian_root")
    parser.add_argument("--without", action="append", default=[], metavar="PACKAGE")
    args = parser.parse_args(argv)
    packages = [p for p in setup_packages() if p not in args.without]
    missing = missing_programs(root_for(packages))
    print("missing: " + " ".join(missing) if missing else "nothing missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
