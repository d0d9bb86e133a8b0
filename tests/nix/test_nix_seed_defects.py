"""The seed's known defects (system.md) stay fixed in the modules: static checks.

Each test names the defect and reads the module that fixes it; the VM tests show the same
fixes at run time (vm-tests/), these keep them from regressing where no VM can run.
"""

from __future__ import annotations

import re

from nix_support import MODULES, REPO, module_files, strip_nix_comments


def code(name: str) -> str:
    return strip_nix_comments((MODULES / name).read_text())


def all_module_code() -> str:
    return "\n".join(strip_nix_comments(p.read_text()) for p in module_files())


def block(text: str, key: str) -> str:
    """The value of the first `key = { ... }` or `key = [ ... ]` in `text`, brackets included."""
    # `key = lib.mkIf (cond) { ... }` counts too.
    match = re.search(
        rf"(?<![\w.-]){re.escape(key)}\s*=\s*(?:lib\.mkIf \([^\n]*\)\s*)?([{{\[])", text
    )
    assert match, f"no `{key} = ...` found"
    opener = match.group(1)
    closer = "}" if opener == "{" else "]"
    depth = 0
    for j in range(match.start(1), len(text)):
        depth += {opener: 1, closer: -1}.get(text[j], 0)
        if depth == 0:
            return text[match.start(1) : j + 1]
    raise AssertionError(f"unbalanced value of {key!r}")


def test_api_token_reaches_the_api_as_a_systemd_credential() -> None:
    api = code("flashpods-api.nix")
    service = block(api, "systemd.services.flashpods-api")
    assert 'LoadCredential = [ "api-token:${api.tokenFile}" ]' in service
    assert "User = data.user" in service
    # The service user never gets to read /etc/flashpods (seed: ReadOnlyPaths it).
    assert "ReadOnlyPaths" not in service
    assert 'InaccessiblePaths = [ "-${dirOf api.tokenFile}" ]' in service


def test_token_socket_comes_from_a_socket_unit_without_a_chown_race() -> None:
    text = all_module_code()
    assert "sleep 1" not in text and "chown" not in text and "postStart" not in text
    tokens = code("token-service.nix")
    socket = block(tokens, "systemd.sockets.flashpods-token-service")
    assert "listenStreams = [ env.FLASHPODS_SOCKET_PATH ]" in socket
    for line in ("SocketUser = data.user", "SocketGroup = data.group", 'SocketMode = "0660"'):
        assert line in socket, line
    service = block(tokens, "systemd.services.flashpods-token-service")
    assert 'Sockets = [ "flashpods-token-service.socket" ]' in service
    assert '"flashpods-token-service.socket"' in block(service, "requires")


def test_podman_socket_is_the_users_own_socket_unit() -> None:
    """No system unit runs rootless podman with User= (podman does not support it)."""
    podman = code("podman.nix")
    assert "podman system service" not in all_module_code()
    assert 'socket = "/run/user/${toString cfg.uid}/podman/podman.sock";' in podman
    assert 'default = "user@${toString cfg.uid}.service";' in podman


def test_api_and_rsync_are_opened_in_the_nixos_firewall_for_wg0_only() -> None:
    fw = code("firewall.nix")
    assert "networking.nftables.enable = true" in fw
    firewall = block(fw, "networking.firewall")
    assert "interfaces.${wg.interface}.allowedTCPPorts = [" in firewall
    assert re.search(r"allowedTCPPorts = \[\s*cfg\.api\.port\s*data\.rsync\.port\s*\]", firewall)
    # Nothing opens them on every interface.
    assert re.search(r"^\s*allowedTCPPorts", firewall, re.M) is None
    assert "allowedUDPPorts = [ wg.listenPort ]" in firewall


def test_our_table_keeps_its_drops() -> None:
    text = (MODULES / "data" / "firewall.nft").read_text()
    input_chain = text[text.index("chain input {") :].split("\n}", 1)[0]
    rules = [
        line.strip()
        for line in input_chain.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    body = [r for r in rules if not r.startswith(("chain", "type", "}"))]
    catch_all = body.index("tcp dport { @API_PORT@, @RSYNC_PORT@ } drop")
    # Before the API/rsync drop, only the laptop over WireGuard is accepted.
    accepts = [r for r in body[:catch_all] if r.endswith("accept")]
    assert accepts and all(
        r.startswith('iifname "@WG_IFACE@" ip saddr @LAPTOP_ADDR@ tcp dport') for r in accepts
    )
    assert 'iifname "podman*" tcp dport { @API_PORT@, @RSYNC_PORT@ } drop' in body
    # Job containers get no other host service (egress policy, docs/trust.md).
    assert body[-1] == 'iifname { "podman*", "cni-*" } drop'
    # `iif wg0` would fail nft --check in the build sandbox (no such interface there).
    assert not any(re.search(r"\biif\b", r) for r in body)


def test_images_are_not_pulled_in_an_activation_script() -> None:
    assert "activationScripts" not in all_module_code()
    podman = code("podman.nix")
    prepull = block(podman, "systemd.services.flashpods-image-prepull")
    assert '"network-online.target"' in block(prepull, "after")
    assert 'Type = "oneshot"' in prepull
    # Best effort: every pull may fail without failing the unit.
    assert "|| echo" in prepull


def test_spire_agent_config_has_no_regex_matcher() -> None:
    agent = (MODULES / "data" / "spire-agent.conf").read_text()
    config = strip_nix_comments(agent)  # same comment syntax as HCL's `#`
    assert "container_id_cgroup_matchers" not in config
    assert "libpod-(" not in agent and "\\.scope" not in agent
    assert 'docker_socket_path = "@PODMAN_SOCKET_URL@"' in config


def test_a_bootstrap_unit_creates_join_token_and_entries() -> None:
    spire = code("spire.nix")
    bootstrap = block(spire, "systemd.services.spire-bootstrap")
    assert 'Type = "oneshot"' in bootstrap
    assert "/bin/flashpods-spire bootstrap" in bootstrap
    assert '"spire-agent.service"' in block(bootstrap, "before")
    agent = block(spire, "systemd.services.spire-agent")
    assert '"spire-bootstrap.service"' in block(agent, "requires")
    assert "cfg.podman.userManager" in block(agent, "requires")


def test_units_run_the_packaged_entry_points() -> None:
    text = all_module_code()
    assert "/usr/local" not in text
    for name, binary in (
        ("flashpods-api.nix", "flashpods-api"),
        ("token-service.nix", "flashpods-token-service"),
    ):
        assert f'ExecStart = "${{cfg.package}}/bin/{binary}";' in code(name)
    flake = (REPO / "flake.nix").read_text()
    assert "buildPythonApplication" in (REPO / "nix" / "flashpods.nix").read_text()
    assert "packages.${system}" in flake


def test_hardened_units_start_after_their_paths_exist() -> None:
    """ReadWritePaths= of a missing path fails a unit with 226/NAMESPACE."""
    for name, unit in (
        ("flashpods-api.nix", "systemd.services.flashpods-api"),
        ("token-service.nix", "systemd.services.flashpods-token-service"),
        ("spire.nix", "systemd.services.spire-server"),
        ("spire.nix", "systemd.services.spire-agent"),
        ("spire.nix", "systemd.services.spire-bootstrap"),
        ("rsyncd.nix", "systemd.services.rsync"),
    ):
        service = block(code(name), unit)
        assert '"flashpods-paths.service"' in block(service, "after"), unit
        if "ReadWritePaths" in service or unit.endswith("rsync"):
            assert '"flashpods-paths.service"' in block(service, "requires"), unit


def test_rootless_podman_has_linger_and_subuids() -> None:
    common = code("common.nix")
    user = block(common, "users.users.${data.user}")
    # isNormalUser gets subuid/subgid ranges automatically in nixos-24.05; linger starts
    # the user's manager (and with it podman.socket) at boot.
    assert "isNormalUser = true" in user and "linger = true" in user


def test_secrets_never_enter_the_store() -> None:
    text = all_module_code()
    for option in ("secretsFile", "tokenFile", "privateKeyFile"):
        assert re.search(rf"{option} = mkOption \{{\s*type = types\.str;", text), option
    # Only the test fixtures are ever copied into a store (vm-tests/fixtures).
    assert "builtins.readFile" not in re.sub(r"render\.nix", "", text)
    for path in (REPO / "vm-tests").glob("*.nix"):
        body = path.read_text()
        for secret in re.findall(r"\./fixtures/[\w.-]+", body):
            assert (path.parent / secret).exists(), secret


def test_the_block_helper_finds_balanced_values() -> None:
    text = 'x.a = { b = { c = 1; }; l = [ "p" [ "q" ] ]; }; a = 2;'
    assert block(text, "x.a") == '{ b = { c = 1; }; l = [ "p" [ "q" ] ]; }'
    assert block(text, "l") == '[ "p" [ "q" ] ]'
