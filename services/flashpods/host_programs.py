"""Every program a Flashpods machine (the lab host, CI) runs, in one place.

Two users of this list: `flashpods-lab up` refuses to start while one of RUNTIME or
PODMAN is missing (lab/preflight.py), and integration/setup checks that
scripts/setup.sh's Debian packages alone provide ALL on a minimal Debian root.
tests/deployment/test_host_programs.py keeps it in step with what the code runs.
A name is looked up on PATH; an absolute path must be that executable.
"""

from __future__ import annotations

# What our own code runs (services/: the lab, its units and probes, the API's podman).
RUNTIME = (
    "bash",
    "curl",
    "groupadd",
    "ip",
    "nft",
    "nix-instantiate",
    "nsenter",
    "ping",
    "podman",
    "prlimit",
    "rsync",
    "setpriv",
    "sh",
    "ss",
    "sysctl",
    "useradd",
    "wg",
    "wireguard-go",
)

# What podman runs for us. Its monitor and OCI runtime (setup.sh's containers.conf picks
# runc); `--init`'s binary at containers.conf's default init_path (podman 4.3:
# "container-init binary not found on the host" without it); the CNI plugins of its
# default bridge network (/etc/cni/net.d/87-podman-bridge.conflist) and the iptables its
# masquerading needs; rootless podman (NixOS, the rootless test): the setuid id mappers
# and slirp4netns, its user-mode network.
PODMAN = (
    "conmon",
    "runc",
    "/usr/libexec/podman/catatonit",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/portmap",
    "/usr/lib/cni/firewall",
    "/usr/lib/cni/tuning",
    "iptables",
    "newuidmap",
    "newgidmap",
    "slirp4netns",
)

# What only the test suite (integration/, bench/) and the set-up scripts run.
# /usr/bin/python3 also runs the rootless test's job side; setup.sh makes the venv with it.
TESTS_AND_SETUP = (
    "chown",
    "chroot",
    "cp",
    "debootstrap",
    "git",
    "mount",
    "nginx",  # bench/api_http.py's yardstick
    "python3",
    "sleep",
    # tests/nix: the measured hardening exposure, rsync in a private network namespace
    "systemd-analyze",
    "tar",
    "umount",
    "unshare",
    "userdel",
    "usermod",
)

ALL = RUNTIME + PODMAN + TESTS_AND_SETUP
