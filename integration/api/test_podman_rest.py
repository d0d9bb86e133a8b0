"""PodmanApi (podman's REST API) against a real podman service: every operation the
runtime uses, what each does with a container that is not there, and the errors.

Containers are made through PodmanApi.create from small bodies (the runtime's full one,
podman_spec.container_spec, is exercised by the runtime's tests) and carry this
session's instance label (the session removes whatever is left)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flashpods.api.runtime import ContainerError
from flashpods.api.runtime.podman_rest import PodmanApi
from flashpods.deployment import JOB_IMAGE
from flashpods_testing.localhost import podman
from podman_support import INSTANCE


@pytest.fixture
def api(podman_socket: Path) -> PodmanApi:
    return PodmanApi(podman_socket)


def body(name: str, *argv: str, label: str = "rest", init: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"flashpods-instance": INSTANCE, "probe": label},
        "init": init,
        "image": JOB_IMAGE,
        "command": list(argv),
    }


@pytest.fixture
def create(api: PodmanApi) -> Iterator[object]:
    """create(*argv, label=..., init=...) → the new container's name; all go at the end."""
    made: list[str] = []

    def make(*argv: str, label: str = "rest", init: bool = True) -> str:
        name = f"rest_{uuid.uuid4().hex[:12]}"
        made.append(name)
        container_id = api.create(body(name, *argv, label=label, init=init))
        assert podman("inspect", "--format", "{{.Id}}", name).stdout.strip() == container_id
        return name

    yield make
    if made:
        podman("rm", "--force", "--ignore", "--time", "0", *made)


def exists(name: str) -> bool:
    return podman("container", "exists", name).returncode == 0


def state(api: PodmanApi, name: str) -> tuple[str, int]:
    found = api.inspect(name)
    assert found is not None
    return found["State"]["Status"], found["State"]["ExitCode"]


def test_rootless_is_what_podman_info_says(api: PodmanApi) -> None:
    said = podman("info", "--format", "{{.Host.Security.Rootless}}").stdout.strip()
    assert api.rootless() is (said == "true")


def test_start_wait_inspect_remove(api: PodmanApi, create) -> None:
    name = create("sh", "-c", "echo hi; exit 3")
    found = api.inspect(name)
    assert found is not None and found["Name"] == name and found["State"]["Status"] == "created"
    api.start(name)
    assert api.wait(name) == 3
    status, code = state(api, name)
    assert (status, code) == ("exited", 3)
    assert api.remove(name) is True
    assert not exists(name)
    assert api.inspect(name) is None
    assert api.remove(name) is False  # gone already: not an error
    assert api.wait(name) is None


def test_start_of_a_running_container_is_fine(api: PodmanApi, create) -> None:
    name = create("sleep", "300")
    api.start(name)
    api.start(name)
    found = api.inspect(name)
    assert found is not None and found["State"]["Status"] == "running"
    assert found["State"]["Pid"] > 0


def test_stop_returns_once_down_and_twice_is_fine(api: PodmanApi, create) -> None:
    name = create("sleep", "300")
    api.start(name)
    api.stop(name, 10)  # --init forwards SIGTERM: sleep ends at once, long before 10 s
    assert state(api, name) == ("exited", 143)
    api.stop(name, 10)


def test_stop_kills_after_the_grace(api: PodmanApi, create) -> None:
    name = create("sh", "-c", "trap '' TERM; sleep 300 & wait; wait")
    api.start(name)
    api.stop(name, 1)
    assert state(api, name) == ("exited", 137)


def test_remove_kills_a_running_container(api: PodmanApi, create) -> None:
    name = create("sleep", "300")
    api.start(name)
    assert api.remove(name) is True
    assert not exists(name)


def test_list_ids_filters_on_every_label(api: PodmanApi, create) -> None:
    mine = create("true", label="list-a")
    other = create("true", label="list-b")
    ids = {name: podman("inspect", "--format", "{{.Id}}", name).stdout.strip()
           for name in (mine, other)}  # fmt: skip
    assert api.list_ids({"flashpods-instance": INSTANCE, "probe": "list-a"}) == [ids[mine]]
    assert api.list_ids({"flashpods-instance": "nobody", "probe": "list-a"}) == []
    both = api.list_ids({"flashpods-instance": INSTANCE})
    assert {ids[mine], ids[other]} <= set(both)


@pytest.mark.parametrize("operation", ["start", "stop"])
def test_a_missing_container_is_an_error_for(api: PodmanApi, operation: str) -> None:
    name = f"rest_missing_{uuid.uuid4().hex[:8]}"
    call = {"start": api.start, "stop": lambda n: api.stop(n, 1)}[operation]
    with pytest.raises(ContainerError) as raised:
        call(name)
    assert str(raised.value) == (
        f'podman {operation} failed: no container with name or ID "{name}" found: no such container'
    )
    assert raised.value.cause.startswith(f"podman {operation} answered 404: ")


def test_a_failed_start_says_why_without_host_paths(api: PodmanApi, create) -> None:
    name = create("/nonexistent/binary", init=False)  # the OCI runtime itself cannot exec it
    with pytest.raises(ContainerError) as raised:
        api.start(name)
    message = str(raised.value)
    assert message.startswith("podman start failed: ")
    assert "/nonexistent" not in message and "<path>" in message
    assert "/nonexistent/binary" in raised.value.cause
    assert raised.value.cause.startswith("podman start answered 500: ")


def test_an_unreachable_podman_is_an_error_without_its_path(tmp_path: Path) -> None:
    api = PodmanApi(tmp_path / "no-podman.sock")
    for call in (api.rootless, lambda: api.inspect("x"), lambda: api.wait("x")):
        with pytest.raises(ContainerError) as raised:
            call()
        assert "no answer from podman (FileNotFoundError)" in str(raised.value)
        assert str(tmp_path) not in str(raised.value)
        assert str(tmp_path) in raised.value.cause


def test_a_create_that_podman_refuses_says_why_without_host_paths(api: PodmanApi) -> None:
    """The words the CLI's `podman create` printed (after its "Error: "), scrubbed."""
    name = f"rest_{uuid.uuid4().hex[:12]}"
    missing = body(name, "true")
    missing["mounts"] = [
        {"destination": "/x", "type": "bind", "source": "/nonexistent/dir", "options": ["ro"]}
    ]
    with pytest.raises(ContainerError) as raised:
        api.create(missing)
    assert str(raised.value) == "podman create failed: statfs <path>: no such file or directory"
    assert raised.value.cause == (
        "podman create answered 500: statfs /nonexistent/dir: no such file or directory"
    )
    unknown = {**body(name, "true"), "image": "localhost/does-not-exist:latest"}
    with pytest.raises(ContainerError) as raised:
        api.create(unknown)
    assert str(raised.value) == (
        "podman create failed: localhost/does-not-exist:latest: image not known"
    )
    assert not exists(name)


def test_pull_applies_the_policy(api: PodmanApi) -> None:
    for policy in ("missing", "never"):
        api.pull(JOB_IMAGE, policy)  # present: nothing to do
    # The failure comes in podman's progress stream after a 200.
    with pytest.raises(ContainerError) as raised:
        api.pull("localhost/does-not-exist:latest", "never")
    assert str(raised.value) == (
        "podman create failed: localhost/does-not-exist:latest: image not known"
    )
    assert raised.value.cause == (
        "pulling localhost/does-not-exist:latest (policy never): podman create answered 200:"
        " localhost/does-not-exist:latest: image not known"
    )
    with pytest.raises(ContainerError) as raised:
        api.pull(JOB_IMAGE, "sometimes")
    assert str(raised.value) == 'podman create failed: unsupported pull policy "sometimes"'
