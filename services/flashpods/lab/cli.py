"""`flashpods-lab up | down | status | demo | shell` (root)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from flashpods.lab import lab
from flashpods.lab.proc import LabError


def _up(_: argparse.Namespace) -> int:
    report = lab.up()
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in report.steps.items())
    print(f"lab up in {report.seconds:.1f} s ({steps})")
    print("  laptop: flashpods-lab shell   (FLASHPODS_HOST and FLASHPODS_API_TOKEN set)")
    return 0


def _down(_: argparse.Namespace) -> int:
    lab.down()
    left = lab.leftovers()
    if not left.empty():
        print(f"flashpods-lab: left behind: {left}", file=sys.stderr)
        return 1
    print("lab down: no namespaces, processes, containers, mounts, interfaces or job network left")
    return 0


def _status(args: argparse.Namespace) -> int:
    data = lab.status()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0 if data.get("supervisor_running") else 3
    if not data.get("supervisor_running"):
        if any(data.get("namespaces", {}).values()):
            print("lab is broken: its supervisor is not running; run flashpods-lab up")
        else:
            print("lab is down")
        return 3
    for name, info in data.get("units", {}).items():
        print(
            f"{name:28} {info['state']:10} pid {info['pid'] or '-':>7}  restarts {info['restarts']}"
        )
    age = handshake_age(data.get("wireguard_last_handshake"), time.time())
    print(f"wireguard last handshake: {age}")
    return 0


def handshake_age(last_handshake: int | None, now: float) -> str:
    """`wg show latest-handshakes` (epoch seconds; 0 = none yet) as an age: "12 s ago"."""
    if not last_handshake:
        return "never"
    seconds = max(0, int(now) - last_handshake)  # clamped: the clock may step back
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s ago"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"


def _shell(args: argparse.Namespace) -> int:
    argv = lab.shell_argv(args.netns, args.command)
    os.execvpe(argv[0], argv, lab.shell_env(args.netns))
    return 1  # not reached


def _demo(args: argparse.Namespace) -> int:
    from flashpods.lab import demo

    return demo.main(agent=args.agent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flashpods-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="bring the lab up (idempotent)").set_defaults(func=_up)
    sub.add_parser("down", help="tear it down, leaving nothing behind").set_defaults(func=_down)
    st = sub.add_parser("status", help="units, pids, WireGuard")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)
    demo = sub.add_parser("demo", help="a real job end to end from the laptop")
    demo.add_argument(
        "--agent", action="store_true", help="a sub-agent (real Claude Code CLI) pushing a branch"
    )
    demo.set_defaults(func=_demo)
    sh = sub.add_parser("shell", help="a shell in a lab namespace (default: laptop)")
    sh.add_argument("netns", nargs="?", default="laptop", choices=("laptop", "host", "internet"))
    sh.add_argument("command", nargs=argparse.REMAINDER, help="run this instead of a shell")
    sh.set_defaults(func=_shell)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except LabError as exc:
        print(f"flashpods-lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
