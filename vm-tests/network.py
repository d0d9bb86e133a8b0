# Test script of vm-tests/network.nix (run by the NixOS test driver; `host`, `laptop`,
# `internet`, `start_all` and `subtest` are the driver's globals).
import json

start_all()

data = json.loads(host.succeed("cat /etc/flashpods-test/deployment.json"))
wg = data["wireguard"]
tunnel_ip = wg["hostAddress"]
api_port = data["api"]["port"]
rsync_port = data["rsync"]["port"]
module = data["rsync"]["module"]
image = "localhost/flashpods-job:latest"


def eth1_address(machine: Machine) -> str:
    out = machine.succeed("ip -4 -o addr show dev eth1")
    return out.split()[3].split("/")[0]


def refused(machine: Machine, command: str) -> None:
    """`command` fails because the connection fails, not because a tool is missing."""
    status, out = machine.execute(command)
    assert status not in (0, 126, 127), f"{machine.name}: {command!r} -> {status}: {out}"


host_lan_ip = eth1_address(host)
internet_ip = eth1_address(internet)

host.wait_for_unit("wireguard-wg0.service")
laptop.wait_for_unit("wireguard-wg0.service")
internet.wait_for_unit("nginx.service")
host.wait_for_unit("rsync.service")
host.wait_for_unit("flashpods-image-load.service")
host.wait_for_unit("flashpods-api.service")
# The podman the API drives: the flashpods user's own podman.socket (modules/podman.nix).
api_env = host.succeed("systemctl show -p Environment --value flashpods-api.service").split()
podman_socket = next(
    v.split("=", 1)[1] for v in api_env if v.startswith("FLASHPODS_PODMAN_SOCKET=")
)
podman = f"podman --url unix://{podman_socket}"

with subtest("WireGuard handshake between laptop and host"):
    laptop.wait_until_succeeds(f"ping -c1 -W2 {tunnel_ip}", timeout=60)
    peers = host.succeed(f"wg show {wg['interface']} latest-handshakes").split()
    assert len(peers) == 2 and int(peers[1]) > 0, f"no handshake: {peers}"

with subtest("API and rsync answer the laptop over wg0"):
    laptop.wait_until_succeeds(
        f"curl -sf --max-time 5 http://{tunnel_ip}:{api_port}/health", timeout=120
    )
    health = json.loads(laptop.succeed(f"curl -sf http://{tunnel_ip}:{api_port}/health"))
    assert health["status"] == "healthy", health
    listing = laptop.succeed(f"rsync --contimeout=10 rsync://{tunnel_ip}/")
    assert module in listing, listing

with subtest("Neither answers over eth1, even for the tunnel address"):
    refused(laptop, f"curl -s --max-time 5 http://{host_lan_ip}:{api_port}/health")
    # rsyncd listens on every address (rsync ignores `address` under [global]): the
    # firewall decides.
    host.succeed(f"ss -Hltn 'sport = :{rsync_port}' | grep -F '0.0.0.0:{rsync_port}'")
    refused(laptop, f"rsync --contimeout=5 rsync://{host_lan_ip}/")
    laptop.succeed(f"ip route replace {tunnel_ip}/32 via {host_lan_ip} dev eth1")
    refused(laptop, f"curl -s --max-time 5 http://{tunnel_ip}:{api_port}/health")
    refused(laptop, f"rsync --contimeout=5 rsync://{tunnel_ip}/")
    laptop.succeed(f"ip route replace {tunnel_ip}/32 dev {wg['interface']}")
    laptop.succeed(f"curl -sf --max-time 10 http://{tunnel_ip}:{api_port}/health")

with subtest("The host itself and the internet node are refused"):
    refused(host, f"curl -s --max-time 5 http://{tunnel_ip}:{api_port}/health")
    refused(host, "rsync --contimeout=5 rsync://127.0.0.1/")
    refused(internet, f"curl -s --max-time 5 http://{host_lan_ip}:{api_port}/health")
    refused(internet, f"rsync --contimeout=5 rsync://{host_lan_ip}/")

with subtest("A container in podman's default (rootless) network reaches only the internet"):
    # One container probes every target, so a container that fails to start cannot pass
    # for a blocked port.
    targets = [
        f"{tunnel_ip}/{api_port}",
        f"{tunnel_ip}/{rsync_port}",
        f"{host_lan_ip}/{api_port}",
        f"{host_lan_ip}/{rsync_port}",
        f"127.0.0.1/{api_port}",
        f"127.0.0.1/{rsync_port}",
        f"host.containers.internal/{api_port}",
        f"host.containers.internal/{rsync_port}",
    ]
    probe = "; ".join(
        f"if timeout 5 bash -c 'echo > /dev/tcp/{t}' 2>/dev/null; "
        f"then echo 'open {t}'; else echo 'closed {t}'; fi"
        for t in targets
    )
    probe += f"; curl -sf --max-time 10 http://{internet_ip}/ && echo"
    out = host.succeed(f'{podman} run --rm {image} bash -c "{probe}"')
    print(out)
    for t in targets:
        assert f"closed {t}" in out, f"a container reached {t}:\n{out}"
    assert "internet-ok" in out, f"the container could not reach the internet:\n{out}"

with subtest("Paths, sockets and secrets have the seed's modes and owners"):
    host.wait_for_unit("flashpods-token-service.service")
    host.wait_for_unit("spire-agent.service")
    host.wait_until_succeeds(f"test -S {data['spire']['agentSocketPath']}", timeout=120)
    # The seed's podman path is a link to the user's socket (stat -L follows it).
    seed_podman = data["apiEnvironment"]["FLASHPODS_PODMAN_SOCKET"]
    assert host.succeed(f"readlink {seed_podman}").strip() == podman_socket
    for entry in data["paths"]:
        path = entry["path"]
        kind = host.succeed(f"stat -L -c %F {path}").strip()
        expected_kind = {"d": "directory", "f": "regular", "socket": "socket"}[entry["kind"]]
        assert kind.startswith(expected_kind), f"{path}: {kind}, want {expected_kind}"
        got = host.succeed(f"stat -L -c '%a %U %G' {path}").strip()
        want = f"{int(entry['mode'], 8):o} {entry['user']} {entry['group']}"
        assert got == want, f"{path}: {got}, want {want}"
    # The token file stays root-only; the API gets it as a credential.
    host.fail("runuser -u flashpods -- cat /etc/flashpods/api-token")
    host.fail("runuser -u flashpods -- cat /etc/flashpods/secrets.json")

with subtest("The token socket keeps its inode and mode across service restarts"):
    sock = data["tokenServiceEnvironment"]["FLASHPODS_SOCKET_PATH"]
    before = host.succeed(f"stat -c '%i %a %U %G' {sock}")
    host.succeed("systemctl restart flashpods-token-service.service")
    host.wait_for_unit("flashpods-token-service.service")
    assert host.succeed(f"stat -c '%i %a %U %G' {sock}") == before

with subtest("systemd-analyze security: exposure of the two services stays low"):
    # Measured offline from the same units in .ci/run (systemd 252) plus a margin for
    # nixos-24.05's systemd 255 (tests/nix/test_nix_security.py).
    limits = json.loads(host.succeed("cat /etc/flashpods-test/security-limits.json"))
    for unit, limit in limits.items():
        report = host.succeed(f"systemd-analyze security --no-pager {unit}")
        last = report.strip().splitlines()[-1]
        print(last)
        exposure = float(last.split(":")[1].split()[0])
        assert exposure <= limit, f"{unit}: exposure {exposure} > {limit}\n{report}"
