"""The role table of identity.md and the secrets file format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flashpods import deployment
from flashpods.common.polling import wait_until
from flashpods.tokens import secrets_file
from flashpods.tokens.policy import Policy, Secrets, SecretsError, parse_secrets
from flashpods.tokens.secrets_file import SecretsFile
from hypothesis import given
from hypothesis import strategies as st
from token_support import AGENT, WORKER

SECRETS = Secrets(anthropic_api_key="sk-ant-x", github_token="ghp_x")


def test_policy_matches_the_deployment_data() -> None:
    spire = deployment.values()["spire"]
    policy = Policy.for_trust_domain(spire["trustDomain"])
    assert (policy.worker_id, policy.agent_id) == (spire["workerSpiffeId"], spire["agentSpiffeId"])


def test_agent_gets_both_worker_only_github() -> None:
    policy = Policy.for_trust_domain("flashpods.local")
    assert policy.grant(AGENT, SECRETS) == {
        "ANTHROPIC_API_KEY": "sk-ant-x",
        "GITHUB_TOKEN": "ghp_x",
    }
    assert policy.grant(WORKER, SECRETS) == {"ANTHROPIC_API_KEY": None, "GITHUB_TOKEN": "ghp_x"}


@given(st.text(max_size=40))
def test_any_other_id_gets_nothing(path: str) -> None:
    policy = Policy.for_trust_domain("flashpods.local")
    spiffe_id = f"spiffe://flashpods.local/{path}"
    if spiffe_id in (AGENT, WORKER):
        return
    assert policy.grant(spiffe_id, SECRETS) is None
    assert policy.grant(f"spiffe://other.example/{path}", SECRETS) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not valid JSON"),
        ("{not json", "not valid JSON"),
        ('["a"]', "not a JSON object"),
        ('{"github_token": "g"}', "anthropic_api_key"),
        ('{"anthropic_api_key": "a"}', "github_token"),
        ('{"anthropic_api_key": "a", "github_token": ""}', "github_token"),
        ('{"anthropic_api_key": 5, "github_token": "g"}', "anthropic_api_key"),
    ],
)
def test_bad_secrets_files(text: str, reason: str) -> None:
    with pytest.raises(SecretsError) as info:
        parse_secrets(text)
    assert reason in str(info.value)


def test_parse_error_never_echoes_the_document() -> None:
    with pytest.raises(SecretsError) as info:
        parse_secrets('{"anthropic_api_key": "sk-ant-SECRET", "github_token": ghp_SECRET}')
    assert "SECRET" not in str(info.value)


@given(st.text(min_size=1).filter(str.strip), st.text(min_size=1).filter(str.strip))
def test_valid_secrets_round_trip(anthropic: str, github: str) -> None:
    text = json.dumps({"anthropic_api_key": anthropic, "github_token": github, "extra": 1})
    assert parse_secrets(text) == Secrets(anthropic, github)


def write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data if isinstance(data, str) else json.dumps(data))
    os.replace(tmp, path)


def test_secrets_file_follows_changes_and_failures(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    write(path, {"anthropic_api_key": "a1", "github_token": "g1"})
    store = SecretsFile(path)
    assert store.load() == Secrets("a1", "g1")

    write(path, {"anthropic_api_key": "a2", "github_token": "g2"})
    assert store.current() == Secrets("a2", "g2")

    write(path, "{broken")
    with pytest.raises(SecretsError):
        store.current()
    path.unlink()
    with pytest.raises(SecretsError, match="cannot read"):
        store.current()

    write(path, {"anthropic_api_key": "a3", "github_token": "g3"})
    assert store.current() == Secrets("a3", "g3")


def test_in_place_rewrite_with_same_size_is_seen(tmp_path: Path) -> None:
    """Editors that rewrite in place keep the inode; mtime/ctime still change."""
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"anthropic_api_key": "aaaa", "github_token": "gggg"}))
    store = SecretsFile(path)
    store.load()
    # The rewrite gets another mtime once the filesystem's clock (coarse: a tick) has moved.
    loaded, probe = path.stat().st_mtime_ns, tmp_path / "clock"

    def clock_moved() -> bool:
        probe.touch()
        return probe.stat().st_mtime_ns > loaded

    wait_until(clock_moved, 5, "the filesystem's clock to move")
    path.write_text(json.dumps({"anthropic_api_key": "bbbb", "github_token": "hhhh"}))
    assert store.current() == Secrets("bbbb", "hhhh")


def test_force_reload_reads_the_file_even_when_it_looks_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """current() re-reads only when the file's stamp changed; force_reload (SIGHUP) always."""
    path = tmp_path / "secrets.json"
    write(path, {"anthropic_api_key": "a", "github_token": "g"})
    reads: list[Path] = []
    real_load = secrets_file.load_secrets

    def counting_load(p: Path) -> Secrets:
        reads.append(p)
        return real_load(p)

    monkeypatch.setattr(secrets_file, "load_secrets", counting_load)
    store = SecretsFile(path)
    store.load()
    assert store.current() == Secrets("a", "g")
    assert len(reads) == 1  # unchanged: served from memory
    store.force_reload()
    assert len(reads) == 2
    assert store.current() == Secrets("a", "g")
