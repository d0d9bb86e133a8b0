"""rsyncd.conf from the deployment's `services.rsyncd.settings` (pure).

Rendered the way nixos-24.05's rsyncd module does: the `global` section first as
`[global]`, then one section per module; `key = value`, booleans true/false
(pkgs.formats.ini).
"""

from __future__ import annotations

from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render(settings: dict[str, Any], *, pid_file: str | None = None) -> str:
    """The config file text; `pid file` is lab-only (so `down` can find the daemon)."""
    lines: list[str] = []
    sections = [("global", settings.get("global", {}))]
    sections += [(name, body) for name, body in settings.items() if name != "global"]
    for name, body in sections:
        lines.append(f"[{name}]")
        items = dict(body)
        if name == "global" and pid_file is not None:
            items["pid file"] = pid_file
        lines.extend(f"{key} = {_value(value)}" for key, value in items.items())
        lines.append("")
    return "\n".join(lines)
