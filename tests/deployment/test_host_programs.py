"""flashpods.host_programs lists every program the code runs: each literal argv[0] handed
to a process-starting call anywhere in the Python sources is on the list, so a new
`run(["foo", ...])` fails here until `foo` is listed (and then integration/setup checks
that setup.sh's packages provide it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from flashpods import deployment, host_programs

SOURCES = ("services", "testing", "integration", "bench")
# Calls that start a process with their first list argument (our proc/ns helpers included).
STARTERS = {"run", "_run", "ns_run", "in_netns", "Popen", "check_output", "check_call"}


def _starter(func: ast.expr) -> bool:
    """`run(...)` or `subprocess.run(...)`, not some object's own `.run` method."""
    if isinstance(func, ast.Name):
        return func.id in STARTERS
    return (
        isinstance(func, ast.Attribute)
        and func.attr in STARTERS
        and isinstance(func.value, ast.Name)
        and func.value.id == "subprocess"
    )


def _literal_argv0(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.List | ast.Tuple) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def argv0s(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        candidates = [kw.value for kw in node.keywords if kw.arg == "argv"]
        if _starter(node.func):
            candidates += node.args[:2]  # in_netns(ns, [...]) has it second
        for candidate in candidates:
            name = _literal_argv0(candidate)
            if name is not None:
                yield node.lineno, name


def test_every_program_the_code_runs_is_listed() -> None:
    listed = set(host_programs.ALL)
    unlisted = []
    seen = set()
    for top in SOURCES:
        for path in sorted((deployment.repo_root() / top).rglob("*.py")):
            for line, name in argv0s(ast.parse(path.read_text(), str(path))):
                seen.add(name)
                if name not in listed and Path(name).name not in listed:
                    unlisted.append(f"{path.relative_to(deployment.repo_root())}:{line} {name}")
    assert unlisted == []
    assert {"podman", "wg", "nft", "rsync", "ip", "git"} <= seen  # the scan does find calls


def test_the_scan_sees_each_way_of_starting_a_program() -> None:
    source = """
run(["a", "x"])
subprocess.Popen(["b"])
ns_run(ns, ["c"])
in_netns(ns, ["d"])
Readiness("command", argv=("e", "-s"))
self.run(["not-a-program"])
run(argv)
"""
    assert [name for _, name in argv0s(ast.parse(source))] == ["a", "b", "c", "d", "e"]


def test_no_program_is_listed_twice() -> None:
    assert len(set(host_programs.ALL)) == len(host_programs.ALL)
