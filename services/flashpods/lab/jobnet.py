"""The lab's job network: the podman network every job container joins (the API's
FLASHPODS_JOB_NETWORK), made lean so a job starts sooner.

Podman's default CNI network chains four plugins: bridge with ipMasq (iptables rules
added and removed per container), portmap, firewall (more iptables chains per
container) and tuning. A job publishes no ports and the host firewall (`table inet
flashpods`) is what bounds it, so the job network is the bridge plugin alone with
host-local addresses, and the masquerade its traffic needs is one static nft rule for
the whole subnet instead of rules made per container; a second keeps jobs from reaching
each other across the bridge. POST /jobs → running, bench/job_start.py on the 2-core CI
machine (medians): 136 ms on podman's default network, 100 ms on one made like this.

The conflist is written where podman's CNI backend reads its networks (podman 4.3 on
Debian; NixOS runs jobs rootless on slirp4netns/pasta and sets no job network).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.lab.proc import ns_run, run

CNI_CONFIG_DIR = Path("/etc/cni/net.d")
CNI_LEASE_DIR = Path("/var/lib/cni/networks")  # host-local IPAM's address leases


@dataclass(frozen=True)
class JobNetwork:
    name: str  # the podman network's name
    bridge: str  # the bridge interface in the namespace podman runs in
    subnet: str
    gateway: str

    @property
    def conflist_path(self) -> Path:
        return CNI_CONFIG_DIR / f"{self.name}.conflist"

    @property
    def nft_table(self) -> str:
        return self.name.replace("-", "_")

    def conflist(self) -> dict[str, Any]:
        """Pure: the CNI network list (the fields podman 4.3's CNI backend reads)."""
        return {
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,  # ruleset(): one static rule instead
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                    },
                }
            ],
        }

    def ruleset(self) -> str:
        """Pure: nft script for the namespace podman runs in.

        - `ip`: what leaves the subnet other than onto its own bridge goes out with that
          namespace's address (the masquerade);
        - `bridge`: nothing is switched from one container's port to another's, v4, v6
          (link-local) or ARP alike, so jobs never reach each other, as rootless jobs
          (each behind its own slirp4netns/pasta) cannot. `table inet flashpods` sees
          bridged frames only where br_netfilter passes them to the inet hooks; this
          holds without it. This kernel refuses `meta ibrname`, so the rule names the
          ports (podman's CNI veths), not the bridge: it holds for every bridge in the
          namespace, which in the lab's host namespace are podman's alone."""
        return (
            f"table ip {self.nft_table} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {self.subnet} oifname != "{self.bridge}" masquerade\n'
            "  }\n"
            "}\n"
            f"table bridge {self.nft_table} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy accept;\n"
            '    iifname "veth*" oifname "veth*" drop\n'
            "  }\n"
            "}\n"
        )

    def _tables(self) -> str:
        """nft lines that make sure both tables exist, then delete them (idempotent)."""
        return "".join(
            f"table {family} {self.nft_table}\ndelete table {family} {self.nft_table}\n"
            for family in ("ip", "bridge")
        )

    def write_conflist(self) -> None:
        """Atomically, world-readable like podman's own (podman reads it as every user)."""
        CNI_CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.conflist_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.conflist(), indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.conflist_path)

    def ensure(self, netns: str | None) -> None:
        """The network, and its ruleset in `netns` (None: this process's namespace);
        replaced, so idempotent."""
        self.write_conflist()
        _run_in(netns, ["nft", "-f", "-"], input=self._tables() + self.ruleset())

    def files(self) -> list[Path]:
        """What of it exists on disk: the definition and the address leases' directory."""
        return [p for p in (self.conflist_path, CNI_LEASE_DIR / self.name) if p.exists()]

    def remove(self) -> None:
        """Its files (the lab's ruleset and bridge go with its host namespace)."""
        self.conflist_path.unlink(missing_ok=True)
        shutil.rmtree(CNI_LEASE_DIR / self.name, ignore_errors=True)

    def remove_from_namespace(self, netns: str | None) -> None:
        """The ruleset and the bridge, from a namespace that stays (None: this
        process's); the bridge plugin leaves its bridge when the last container goes."""
        _run_in(netns, ["nft", "-f", "-"], input=self._tables())
        _run_in(netns, ["ip", "link", "del", self.bridge], check=False)


def _run_in(
    netns: str | None, argv: list[str], *, input: str | None = None, check: bool = True
) -> None:
    if netns is None:
        run(argv, input=input, check=check)
    else:
        ns_run(netns, argv, input=input, check=check)


LAB_JOB_NETWORK = JobNetwork(
    name="flashpods-jobs", bridge="cni-fpjobs0", subnet="10.89.0.0/24", gateway="10.89.0.1"
)
