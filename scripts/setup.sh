#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs, idempotent and cached: Debian packages,
# container config, the Python venv with this package, SPIRE v1.13.3 and the job image.
source "$(dirname "$0")/lib.sh"

# Exactly what a brand-new machine gets (--no-install-recommends), so every program the
# project or podman runs (flashpods.host_programs) must come from here: integration/setup
# checks that on a minimal Debian root. nginx: bench/api_http.py's yardstick for artifact
# downloads (the bench starts its own, on loopback).
DEB_PACKAGES=(podman catatonit runc uidmap slirp4netns wireguard-go wireguard-tools nftables rsync
  iproute2 iputils-ping curl jq git nix-bin busybox-static debootstrap procps psmisc openssl
  python3 python3-venv nodejs systemd nginx)
# npm installs the agent CLI into the job image (build-image.sh). Debian's comes as its own
# package; a nodejs from elsewhere (e.g. NodeSource) brings its own npm.
command -v npm >/dev/null || DEB_PACKAGES+=(npm)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" nginx "* ]]; then
    # Debian starts and enables a system nginx on port 80 where an init system lets it;
    # only the benchmark's own instance is wanted.
    if [ -d /run/systemd/system ]; then
      systemctl disable --now nginx.service >/dev/null 2>&1 || true
    else
      service nginx stop >/dev/null 2>&1 || true
      update-rc.d nginx disable >/dev/null 2>&1 || true
    fi
  fi
fi
command -v go >/dev/null || die "Go (>= 1.25.3) is needed to build SPIRE; install it first"

# Rootless podman's network helper (slirp4netns) opens /dev/net/tun as the job's user.
# udev makes it 0666 (systemd's 50-udev-default.rules; the kernel's tuntap.rst: no harm,
# creating or attaching an interface still needs CAP_NET_ADMIN). Machines without udev
# (CI sandboxes, containers) get a 0600 node, and every rootless job then fails to start:
# `slirp4netns failed: "open(\"/dev/net/tun\"): Permission denied"`.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  log "making /dev/net/tun 0666 (as udev would) for rootless podman's slirp4netns"
  chmod 0666 /dev/net/tun
fi

# Rootful podman with runc: crun fails on this cgroup-v1 hybrid host, and podman 4.3's
# default ulimits are refused in this sandbox (lab.md).
mkdir -p /etc/containers
if ! grep -qs 'flashpods-lab' /etc/containers/containers.conf; then
  cat > /etc/containers/containers.conf <<'CONF'
# written by flashpods scripts/setup.sh (flashpods-lab)
[containers]
default_ulimits = []
[engine]
runtime = "runc"
CONF
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating Python venv in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
log "installing flashpods (editable, host side and tests) into the venv"
"$VENV/bin/pip" install -q -e "$REPO[host,test]"

bash "$REPO/scripts/build-spire.sh"
bash "$REPO/scripts/build-image.sh"
log "setup complete"
