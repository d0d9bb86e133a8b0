"""The lab's units, built from the deployment data (what the NixOS modules run).

Environments, users, paths and the start order come from flashpods.nix; the only
lab differences are named here and in docs/lab.md: podman is rootful (cgroup v1, see
lab.md), the API gets the lab's image/pull/tools/instance settings and the scripted model
service (with few retries and a short timeout, so a failing agent fails fast), restarts come
after 1 s instead of 5 s, and rsyncd also honours `address` (nixos-24.05 ignores it;
the firewall carries that restriction there) by --address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods.deployment import JOB_IMAGE
from flashpods.lab.jobnet import LAB_JOB_NETWORK
from flashpods.lab.proc import as_user, in_netns
from flashpods.lab.topology import GIT_DIR, INSTANCE, STATE_DIR, Topology
from flashpods.lab.units import FileMode, Readiness, Unit

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LabInputs:
    """What the builder needs that is not in the deployment data."""

    service_bin: Path  # the service venv's bin directory (console scripts, python)
    spire_bin: Path
    tools_dir: Path
    credentials_dir: Path
    rsyncd_conf: Path
    www_dir: Path


def _path_mode(values: dict[str, Any], path: str) -> FileMode:
    for entry in values["paths"]:
        if entry["path"] == path:
            return FileMode(path, entry["user"], entry["group"], entry["mode"])
    raise KeyError(f"{path} is not in flashpods.nix paths")


def _user_env(user: str, home: str) -> dict[str, str]:
    """What systemd sets for a unit with User= (HOME, USER, LOGNAME, PATH)."""
    return {"HOME": home, "USER": user, "LOGNAME": user, "PATH": BASE_PATH}


def build(values: dict[str, Any], topo: Topology, inputs: LabInputs) -> list[Unit]:
    user, group = values["user"], values["group"]
    spire = values["spire"]
    host = topo.host_ns
    py = str(inputs.service_bin / "python")
    order: dict[str, list[str]] = values["serviceOrder"]
    podman_sock = values["apiEnvironment"]["FLASHPODS_PODMAN_SOCKET"]
    token_sock = values["tokenServiceEnvironment"]["FLASHPODS_SOCKET_PATH"]
    root_env = _user_env("root", "/root")

    def spire_unit(part: str, **extra: Any) -> Unit:
        """spire-server or spire-agent: `run` with its config, ready once `healthcheck`
        passes on its socket."""
        binary = str(inputs.spire_bin / f"spire-{part}")
        return Unit(
            name=f"spire-{part}",
            argv=tuple(in_netns(host, [binary, "run", "-config", f"/etc/spire/{part}.conf"])),
            env=root_env,
            after=tuple(order[f"spire-{part}"]),
            ready=Readiness(
                "command", argv=(binary, "healthcheck", "-socketPath", spire[f"{part}SocketPath"])
            ),
            **extra,
        )

    def internet_unit(name: str, description: str, port: int, argv: list[str]) -> Unit:
        """A lab-only server in the internet namespace, ready once it listens on `port`."""
        return Unit(
            name=name,
            description=description,
            argv=tuple(in_netns(topo.internet_ns, argv)),
            env=root_env,
            after=("network.target",),
            ready=Readiness("listen", netns=topo.internet_ns, port=port),
        )

    podman = Unit(
        name="podman-socket-flashpods",
        description="Podman API socket (lab: rootful podman, cgroup v1)",
        argv=tuple(
            in_netns(host, ["podman", "system", "service", "--time=0", f"unix://{podman_sock}"])
        ),
        env=root_env,
        after=tuple(order["podman-socket-flashpods"]),
        ready=Readiness("unix", path=podman_sock),
        post_start=(_path_mode(values, podman_sock),),
    )
    spire_server = spire_unit("server")
    # The bootstrap (join token when the agent cannot resume, entries) before each start.
    spire_agent = spire_unit("agent", pre_start=((py, "-m", "flashpods.spire", "bootstrap"),))
    token_service = Unit(
        name="flashpods-token-service",
        argv=tuple(in_netns(host, [str(inputs.service_bin / "flashpods-token-service")])),
        env={**root_env, **values["tokenServiceEnvironment"]},
        after=tuple(order["flashpods-token-service"]),
        socket=_path_mode(values, token_sock),
        ready=Readiness(
            "command",
            argv=(
                "curl",
                "-sf",
                "--max-time",
                "2",
                "--unix-socket",
                token_sock,
                "http://localhost/health",
            ),
        ),
    )
    api_env = {
        **_user_env(user, "/var/lib/flashpods"),
        **values["apiEnvironment"],
        "CREDENTIALS_DIRECTORY": str(inputs.credentials_dir),
        "FLASHPODS_DEFAULT_IMAGE": JOB_IMAGE,
        "FLASHPODS_PULL_POLICY": "never",
        "FLASHPODS_TOOLS_DIR": str(inputs.tools_dir),
        "FLASHPODS_INSTANCE": INSTANCE,
        "FLASHPODS_JOB_NETWORK": LAB_JOB_NETWORK.name,
        "FLASHPODS_MODEL_BASE_URL": topo.model_url,
        "FLASHPODS_MODEL_MAX_RETRIES": "1",
        "FLASHPODS_MODEL_TIMEOUT_MS": "30000",
    }
    api = Unit(
        name="flashpods-api",
        user=user,
        argv=tuple(
            in_netns(
                host,
                as_user(
                    user, group, [str(inputs.service_bin / "flashpods-api")], no_new_privs=True
                ),
            )
        ),
        env=api_env,
        after=tuple(order["flashpods-api"]),
        ready=Readiness("listen", netns=host, port=int(values["api"]["port"])),
    )
    rsyncd = Unit(
        name="rsyncd",
        # rsync reads `address` from its config only outside [global] sections, and
        # nixos-24.05 renders it inside one (so there the firewall alone restricts it);
        # the lab honours the setting with --address.
        argv=tuple(
            in_netns(
                host,
                [
                    # LimitFSIZE= of the NixOS unit (modules/rsyncd.nix).
                    "prlimit",
                    f"--fsize={values['rsync']['maxFileBytes']}",
                    "--",
                    "rsync",
                    "--daemon",
                    "--no-detach",
                    f"--address={values['rsyncd']['global']['address']}",
                    f"--config={inputs.rsyncd_conf}",
                ],
            )
        ),
        # The module's pre-xfer exec, flashpods-rsync-watch, comes from the service venv
        # (the NixOS unit's `path`).
        env={**root_env, "PATH": f"{inputs.service_bin}:{root_env['PATH']}"},
        after=("network.target",),
        ready=Readiness("listen", netns=host, port=int(values["rsync"]["port"])),
    )
    internet = internet_unit(
        "internet-http",
        "lab only: an HTTP server standing in for the internet",
        topo.http_port,
        [
            py,
            "-m",
            "http.server",
            # `::`: http.server's dual-stack server (IPV6_V6ONLY off), so the internet
            # answers on 198.51.100.2 and 2001:db8:2::2 (the namespace has no other).
            "--bind",
            "::",
            "--directory",
            str(inputs.www_dir),
            str(topo.http_port),
        ],
    )
    model = internet_unit(
        "internet-model",
        "lab only: the scripted stand-in for the model service",
        topo.model_port,
        [
            py,
            "-m",
            "flashpods.lab.model_endpoint",
            "--bind",
            topo.up_inet_addr,
            "--port",
            str(topo.model_port),
            "--secrets-file",
            values["tokenServiceEnvironment"]["FLASHPODS_SECRETS_FILE"],
        ],
    )
    git = internet_unit(
        "internet-git",
        "lab only: a git server (fetch and push) for agents' branches",
        topo.git_port,
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--informative-errors",
            f"--listen={topo.up_inet_addr}",
            f"--port={topo.git_port}",
            f"--base-path={GIT_DIR}",
            str(GIT_DIR),
        ],
    )
    return [internet, model, git, rsyncd, podman, spire_server, spire_agent, token_service, api]


def default_inputs(service_bin: Path, spire_bin: Path) -> LabInputs:
    return LabInputs(
        service_bin=service_bin,
        spire_bin=spire_bin,
        tools_dir=Path("/var/lib/flashpods-lab/tools"),
        credentials_dir=STATE_DIR / "credentials" / "flashpods-api",
        rsyncd_conf=STATE_DIR / "rsyncd.conf",
        www_dir=STATE_DIR / "www",
    )
