"""The laptop side installs without the host's.

`pip install .` brings only pyproject's `dependencies` (requests, mcp); the host's services
come with the `host` extra. So flashpods.client and flashpods.common may import only the
standard library, themselves and what those dependencies pull in — checked over every
import statement in their sources (a lazy import inside a function counts too) and by
importing them in a fresh interpreter.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = REPO / "services"
LAPTOP_PACKAGES = ("flashpods.client", "flashpods.common")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-")


@functools.cache
def laptop_distributions() -> frozenset[str]:
    """pyproject's base dependencies and all they require (their requested extras too)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    seen: set[tuple[str, str]] = set()
    while todo:
        wanted = todo.pop()
        for extra in {"", *wanted.extras}:
            if (canonical(wanted.name), extra) in seen:
                continue
            seen.add((canonical(wanted.name), extra))
            for spec in importlib.metadata.requires(wanted.name) or []:
                requirement = Requirement(spec)
                if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                    todo.append(requirement)
    return frozenset(name for name, _ in seen)


@functools.cache
def module_owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def allowed(module: str, *, unowned_ok: bool = False) -> bool:
    """Whether a laptop module may import `module`.

    unowned_ok: a module no distribution owns (the interpreter's `__main__`, an extension's
    internals) passes — for what a running interpreter has loaded, not for source imports.
    """
    top = module.split(".")[0]
    if top == "flashpods":
        return module == "flashpods" or module.startswith(
            tuple(p + "." for p in LAPTOP_PACKAGES) + LAPTOP_PACKAGES
        )
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    owners = module_owners().get(top, [])
    if not owners:
        return unowned_ok
    return all(canonical(o) in laptop_distributions() for o in owners)


def laptop_modules() -> list[str]:
    names = []
    for package in LAPTOP_PACKAGES:
        for path in sorted((PACKAGE_ROOT / package.replace(".", "/")).glob("*.py")):
            relative = path.relative_to(PACKAGE_ROOT).with_suffix("")
            names.append(".".join(relative.parts).removesuffix(".__init__"))
    return names


def imported_names(path: Path, module: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return names


def test_the_base_dependencies_are_only_the_laptop_ones() -> None:
    laptop = laptop_distributions()
    assert {"requests", "mcp"} <= laptop
    for host_only in ("sqlite-utils", "spiffe", "grpcio", "protobuf"):
        assert host_only not in laptop


def test_client_sources_import_nothing_of_the_host_side() -> None:
    offenders = []
    for module in laptop_modules():
        path = PACKAGE_ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = PACKAGE_ROOT / module.replace(".", "/") / "__init__.py"
        offenders += [
            f"{module} imports {name}"
            for name in sorted(imported_names(path, module))
            if not allowed(name)
        ]
    assert offenders == []


def test_importing_the_client_loads_nothing_of_the_host_side() -> None:
    script = (
        "import importlib, json, sys\n"
        "at_start = set(sys.modules)\n"  # the interpreter's own, .pth hooks included
        f"for name in {laptop_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - at_start)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(result.stdout)
    assert "flashpods.client.mcp_server" in loaded
    assert [m for m in loaded if not allowed(m, unowned_ok=True)] == []
