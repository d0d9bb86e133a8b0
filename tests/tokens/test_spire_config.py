"""SPIRE configs rendered from the shared templates, and the bootstrap's pure decisions."""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flashpods import deployment
from flashpods.spire.binaries import spire_bin_dir
from flashpods.spire.bootstrap import (
    RESUME_MARGIN,
    StoredSvid,
    can_resume,
    desired_entries,
    read_stored_svid,
    wait_for_agent,
)
from flashpods.spire.config import (
    SpireSettings,
    TemplateError,
    render_agent_conf,
    render_server_conf,
    render_template,
    write_configs,
)
from flashpods.spire.server_cli import parse_entries
from flashpods.spire.tools_dir import CONTAINER_SCRIPTS, assemble_tools_dir

REAL = SpireSettings.from_deployment()


def test_real_server_config_binds_loopback_with_sqlite_and_join_token() -> None:
    text = render_server_conf(REAL)
    spire = deployment.values()["spire"]
    assert 'bind_address = "127.0.0.1"' in text
    assert f"bind_port = {spire['serverBindPort']}\n" in text
    assert f'socket_path = "{spire["serverSocketPath"]}"' in text
    assert 'trust_domain = "flashpods.local"' in text
    assert 'default_jwt_svid_ttl = "5m"' in text
    assert 'database_type = "sqlite3"' in text
    assert 'NodeAttestor "join_token"' in text
    # The admin socket must not sit in the directory job containers mount.
    assert Path(spire["serverSocketPath"]).parent != Path(spire["agentSocketPath"]).parent


def test_real_agent_config_uses_podman_url_and_no_regex_matchers() -> None:
    text = render_agent_conf(REAL)
    assert 'docker_socket_path = "unix:///run/flashpods/podman.sock"' in text
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "container_id_cgroup_matchers" not in code
    assert "insecure_bootstrap" not in code and "trust_bundle_url" not in code
    assert 'trust_bundle_path = "/var/lib/spire/agent/bootstrap-bundle.pem"' in text
    assert 'join_token_file = "/var/lib/spire/agent/join-token"' in text
    assert 'socket_path = "/run/spire/sockets/agent.sock"' in text
    assert 'WorkloadAttestor "unix"' in text and 'KeyManager "disk"' in text


def test_no_placeholder_is_left_and_unknown_ones_fail() -> None:
    for text in (render_server_conf(REAL), render_agent_conf(REAL)):
        assert "@" not in "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    with pytest.raises(TemplateError):
        render_template('x = "@NOPE@"\n', {})
    assert render_template("# @DOC@ in a comment\n", {}) == "# @DOC@ in a comment\n"


@pytest.mark.spire
def test_spire_binaries_accept_the_rendered_configs(tmp_path: Path) -> None:
    settings = REAL.under(tmp_path, port=18081, podman_socket=tmp_path / "podman.sock")
    write_configs(settings)
    settings.join_token_file.write_text("token\n")  # the agent reads it at config time
    bins = spire_bin_dir(REAL.version)
    for binary, conf in (
        ("spire-server", settings.server_conf_path),
        ("spire-agent", settings.agent_conf_path),
    ):
        proc = subprocess.run(
            [str(bins / binary), "validate", "-config", str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert oct(settings.server_data_dir.stat().st_mode & 0o777) == "0o700"
    assert oct(settings.server_socket_path.parent.stat().st_mode & 0o777) == "0o700"


def test_entries_pin_label_and_uid() -> None:
    entries = {
        e.spiffe_id: e
        for e in desired_entries(
            REAL.under(Path("/x"), port=1, podman_socket=Path("/p"), workload_uid=985)
        )
    }
    worker = entries["spiffe://flashpods.local/worker"]
    assert worker.parent_id == "spiffe://flashpods.local/host"
    assert worker.selectors == {"docker:label:flashpods-job-type:worker", "unix:uid:985"}
    assert entries["spiffe://flashpods.local/agent"].selectors == {
        "docker:label:flashpods-job-type:agent",
        "unix:uid:985",
    }
    assert entries["spiffe://flashpods.local/token-service"].selectors == {"unix:uid:0"}
    no_uid = {e.spiffe_id: e for e in desired_entries(REAL)}
    assert no_uid["spiffe://flashpods.local/worker"].selectors == {
        "docker:label:flashpods-job-type:worker"
    }


def test_parse_entries_of_spire_server_json() -> None:
    payload = {
        "entries": [
            {
                "id": "e1",
                "spiffe_id": {"trust_domain": "flashpods.local", "path": "/worker"},
                "parent_id": {"trust_domain": "flashpods.local", "path": "/host"},
                "selectors": [{"type": "docker", "value": "label:flashpods-job-type:worker"}],
            }
        ],
        "next_page_token": "",
    }
    (entry,) = parse_entries(payload)
    assert entry.spiffe_id == "spiffe://flashpods.local/worker"
    assert entry.parent_id == "spiffe://flashpods.local/host"
    assert entry.selectors == {"docker:label:flashpods-job-type:worker"}


# -- resume or re-attest -------------------------------------------------------------------


def agent_svid(not_after: datetime, uri: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=2))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def write_agent_data(data_dir: Path, pem: bytes) -> None:
    # As SPIRE's agent storage writes it: [][]byte of PEM, base64 in JSON.
    data = {"svid": [base64.b64encode(pem).decode()], "bundle": [], "reattestable": False}
    (data_dir / "agent-data.json").write_text(json.dumps(data))


AGENT_ID = "spiffe://flashpods.local/spire/agent/join_token/1234"


def test_stored_svid_is_read(tmp_path: Path) -> None:
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=50)
    write_agent_data(tmp_path, agent_svid(expiry, AGENT_ID))
    assert read_stored_svid(tmp_path) == StoredSvid(AGENT_ID, expiry)


@pytest.mark.parametrize("content", [None, "", "{}", '{"svid": []}', '{"svid": ["!!"]}', "[1]"])
def test_missing_or_corrupt_agent_data_means_no_svid(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "agent-data.json").write_text(content)
    assert read_stored_svid(tmp_path) is None


def test_resume_decision() -> None:
    now = datetime.now(UTC)
    fresh = StoredSvid(AGENT_ID, now + timedelta(minutes=30))
    assert can_resume(fresh, now, agent_known=True)
    assert not can_resume(fresh, now, agent_known=False)  # evicted or banned
    expired = StoredSvid(AGENT_ID, now - timedelta(seconds=1))
    assert not can_resume(expired, now, agent_known=True)
    nearly = StoredSvid(AGENT_ID, now + RESUME_MARGIN - timedelta(seconds=1))
    assert not can_resume(nearly, now, agent_known=True)
    assert not can_resume(None, now, agent_known=False)


@pytest.mark.spire
def test_tools_dir_is_assembled_idempotently(tmp_path: Path) -> None:
    dest = assemble_tools_dir(tmp_path / "tools", spire_bin_dir(REAL.version))
    names = sorted(p.name for p in (dest / "bin").iterdir())
    assert names == sorted(["spire-agent", *CONTAINER_SCRIPTS])
    for path in (dest / "bin").iterdir():
        assert path.stat().st_mode & 0o777 == 0o755
    inode = (dest / "bin" / "spire-agent").stat().st_ino
    assemble_tools_dir(dest, spire_bin_dir(REAL.version))
    assert (dest / "bin" / "spire-agent").stat().st_ino == inode


def test_waiting_for_an_agent_whose_binary_is_missing_times_out_saying_so(
    tmp_path: Path,
) -> None:
    with pytest.raises(TimeoutError, match="not found"):
        wait_for_agent(REAL, tmp_path, timeout=0.5)
