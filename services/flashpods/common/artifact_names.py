"""The artifact-name rule (api.md), the one definition the API's validation, the
collector and the client share.

An artifact name is a "/"-separated path relative to the job's /artifacts; each of its
components is a name that is not empty, at most 255 characters, without `/`, `\\`, `..`
or NUL, without leading or trailing whitespace, and not `.` (a leading `.` is fine).
"""

from __future__ import annotations

MAX_ARTIFACT_NAME = 255


def component_problem(name: str) -> str | None:
    """Why one path component is not an acceptable artifact name, or None."""
    if not name:
        return "empty name"
    if len(name) > MAX_ARTIFACT_NAME:
        return f"name longer than {MAX_ARTIFACT_NAME} characters"
    if "/" in name or "\\" in name:
        return "name contains a slash or backslash"
    if ".." in name:
        return "name contains '..'"
    if "\0" in name:
        return "name contains NUL"
    if name != name.strip():
        return "name has leading or trailing whitespace"
    if name == ".":
        return "name is '.'"
    return None


def artifact_name_problem(path: str) -> str | None:
    """Why `path` (components joined by "/") is not a valid artifact name, or None."""
    if not path:
        return "empty name"
    for component in path.split("/"):
        problem = component_problem(component)
        if problem is not None:
            return problem
    return None
