"""`python -m flashpods.spire {render,bootstrap,tools-dir}` for the lab and the NixOS unit.

Without --base-dir the real host paths of system.md are used (the lab, NixOS).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pwd
import sys
from pathlib import Path

from flashpods import deployment
from flashpods.spire.binaries import spire_bin_dir
from flashpods.spire.bootstrap import bootstrap
from flashpods.spire.config import SpireSettings, write_configs
from flashpods.spire.tools_dir import assemble_tools_dir


def _workload_uid(raw: str) -> int | None:
    if raw == "none":
        return None
    if raw == "auto":
        try:
            return pwd.getpwnam(deployment.values()["user"]).pw_uid
        except KeyError:
            return None
    return int(raw)


def settings_from_args(args: argparse.Namespace) -> SpireSettings:
    settings = SpireSettings.from_deployment()
    uid = _workload_uid(args.workload_uid)
    if args.base_dir:
        podman = Path(args.podman_socket or Path(args.base_dir) / "podman.sock")
        return settings.under(
            Path(args.base_dir),
            port=args.port or settings.server_bind_port,
            podman_socket=podman,
            workload_uid=uid,
        )
    if args.podman_socket:
        raise SystemExit("--podman-socket needs --base-dir (the real path is fixed)")
    return dataclasses.replace(settings, workload_uid=uid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashpods.spire")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("render", "bootstrap"):
        p = sub.add_parser(name)
        p.add_argument("--base-dir", help="put every SPIRE path under this directory")
        p.add_argument("--port", type=int, help="server port (with --base-dir)")
        p.add_argument("--podman-socket", help="podman API socket path (with --base-dir)")
        p.add_argument(
            "--workload-uid",
            default="auto",
            help="uid of job containers for unix:uid selectors: N, auto (the flashpods "
            "user if it exists) or none",
        )
    tools = sub.add_parser("tools-dir", help="assemble the /opt/flashpods tools directory")
    tools.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s flashpods-spire: %(message)s")

    if args.command == "tools-dir":
        version = SpireSettings.from_deployment().version
        print(assemble_tools_dir(args.dest, spire_bin_dir(version)))
        return 0
    settings = settings_from_args(args)
    if args.command == "render":
        write_configs(settings)
        print(settings.server_conf_path)
        print(settings.agent_conf_path)
        return 0
    result = bootstrap(settings, spire_bin_dir(settings.version))
    print(
        f"join_token_issued={str(result.join_token_issued).lower()} "
        f"resumed={result.resumed_agent_id or '-'} "
        f"created={','.join(result.entries_created) or '-'} "
        f"updated={','.join(result.entries_updated) or '-'} "
        f"aliases_pruned={result.aliases_pruned}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
