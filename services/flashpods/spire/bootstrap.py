"""One idempotent step run before every start of the SPIRE agent (server already up).

1. wait until the server is healthy;
2. write the trust bundle the agent bootstraps from (`bundle show`);
3. decide whether the agent can resume with the SVID in its data dir: it can when that
   SVID is valid for at least `RESUME_MARGIN` more and the server still knows the agent
   (not evicted, not banned). Otherwise drop the stale SVID and issue a fresh join token
   for the node alias (`-spiffeID spiffe://flashpods.local/host`) into the token file;
4. create or correct the registration entries (worker, agent, token service) and drop
   node aliases whose agent no longer exists.

The agent config names the token file (`join_token_file`); an agent that resumes ignores
the (already used) token in it, so the file always holds the latest token.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from flashpods.common.polling import poll
from flashpods.common.programs import ProgramFailure, run_program
from flashpods.spire.config import SpireSettings
from flashpods.spire.server_cli import Entry, SpireServerCli

log = logging.getLogger("flashpods.spire")

RESUME_MARGIN = timedelta(minutes=2)
JOIN_TOKEN_TTL_SECONDS = 600
AGENT_DATA_FILE = "agent-data.json"


@dataclass(frozen=True)
class StoredSvid:
    spiffe_id: str
    not_after: datetime


@dataclass(frozen=True)
class DesiredEntry:
    spiffe_id: str
    parent_id: str
    selectors: frozenset[str]


@dataclass(frozen=True)
class BootstrapResult:
    join_token_issued: bool
    resumed_agent_id: str | None
    entries_created: tuple[str, ...]
    entries_updated: tuple[str, ...]
    aliases_pruned: int


def read_stored_svid(agent_data_dir: Path) -> StoredSvid | None:
    """The agent's own X.509-SVID from `agent-data.json` (PEM certs), if any."""
    path = agent_data_dir / AGENT_DATA_FILE
    try:
        data = json.loads(path.read_text())
        # Go marshals [][]byte as base64 strings of the PEM bytes.
        leaf_pem = base64.b64decode(data["svid"][0])
        cert = x509.load_pem_x509_certificate(leaf_pem)
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (OSError, KeyError, IndexError, TypeError, ValueError, x509.ExtensionNotFound):
        return None
    if not uris:
        return None
    return StoredSvid(spiffe_id=uris[0], not_after=cert.not_valid_after_utc)


def can_resume(svid: StoredSvid | None, now: datetime, agent_known: bool) -> bool:
    """Pure decision: resume only with an SVID that outlives the margin and a known agent."""
    return svid is not None and svid.not_after - now > RESUME_MARGIN and agent_known


def desired_entries(settings: SpireSettings) -> list[DesiredEntry]:
    uid = [] if settings.workload_uid is None else [f"unix:uid:{settings.workload_uid}"]
    label = settings.role_label
    return [
        DesiredEntry(
            settings.worker_spiffe_id,
            settings.node_spiffe_id,
            frozenset([f"docker:label:{label}:worker", *uid]),
        ),
        DesiredEntry(
            settings.agent_spiffe_id,
            settings.node_spiffe_id,
            frozenset([f"docker:label:{label}:agent", *uid]),
        ),
        # The token service validates JWT-SVIDs locally against the bundle it streams from
        # the Workload API, which SPIRE only serves to callers that have an entry. Job
        # containers never run as host uid 0 (rootful: --user flashpods; rootless: keep-id).
        DesiredEntry(
            settings.token_service_spiffe_id,
            settings.node_spiffe_id,
            frozenset([f"unix:uid:{settings.token_service_uid}"]),
        ),
    ]


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _ensure_entry(
    cli: SpireServerCli, want: DesiredEntry, created: list[str], updated: list[str]
) -> None:
    existing = [e for e in cli.entries(want.spiffe_id) if e.parent_id == want.parent_id]
    if not existing:
        cli.create_entry(want.spiffe_id, want.parent_id, want.selectors)
        created.append(want.spiffe_id)
        return
    first, extra = existing[0], existing[1:]
    if first.selectors != want.selectors:
        cli.update_entry(first, want.selectors)
        updated.append(want.spiffe_id)
    for duplicate in extra:
        cli.delete_entry(duplicate.entry_id)


def _prune_aliases(cli: SpireServerCli, node_id: str, keep_parent: str | None) -> int:
    """Node alias entries left behind by agents that were evicted or re-attested."""
    agents = cli.agent_ids()
    stale: list[Entry] = [
        e for e in cli.entries(node_id) if e.parent_id not in agents and e.parent_id != keep_parent
    ]
    for entry in stale:
        cli.delete_entry(entry.entry_id)
    return len(stale)


def bootstrap(
    settings: SpireSettings, bin_dir: Path, *, server_wait_seconds: float = 60.0
) -> BootstrapResult:
    cli = SpireServerCli(bin_dir / "spire-server", settings.server_socket_path)
    cli.wait_healthy(server_wait_seconds)
    _write_atomic(settings.trust_bundle_path, cli.bundle_pem(), 0o644)

    svid = read_stored_svid(settings.agent_data_dir)
    known = svid is not None and cli.agent_known(svid.spiffe_id)
    token_parent: str | None = None
    if can_resume(svid, datetime.now(UTC), known) and settings.join_token_file.exists():
        assert svid is not None
        log.info("agent can resume as %s (SVID valid until %s)", svid.spiffe_id, svid.not_after)
        resumed: str | None = svid.spiffe_id
    else:
        if svid is not None:
            log.info(
                "agent cannot resume (%s, SVID until %s, known to server: %s): re-attesting",
                svid.spiffe_id,
                svid.not_after,
                known,
            )
        # A stale SVID would be preferred over the token by the agent: drop it.
        (settings.agent_data_dir / AGENT_DATA_FILE).unlink(missing_ok=True)
        token = cli.generate_token(settings.node_spiffe_id, JOIN_TOKEN_TTL_SECONDS)
        _write_atomic(settings.join_token_file, token + "\n", 0o600)
        token_parent = f"spiffe://{settings.trust_domain}/spire/agent/join_token/{token}"
        log.info(
            "issued a join token for %s (valid %d s)",
            settings.node_spiffe_id,
            JOIN_TOKEN_TTL_SECONDS,
        )
        resumed = None

    created: list[str] = []
    updated: list[str] = []
    for want in desired_entries(settings):
        _ensure_entry(cli, want, created, updated)
    keep = token_parent or (svid.spiffe_id if svid else None)
    pruned = _prune_aliases(cli, settings.node_spiffe_id, keep)
    return BootstrapResult(
        join_token_issued=token_parent is not None,
        resumed_agent_id=resumed,
        entries_created=tuple(created),
        entries_updated=tuple(updated),
        aliases_pruned=pruned,
    )


class _Unhealthy(Exception):
    pass


def _unhealthy(failure: ProgramFailure) -> _Unhealthy:
    return _Unhealthy(f"spire-agent healthcheck {failure.reason}: {failure.output.strip()}")


def wait_for_agent(settings: SpireSettings, bin_dir: Path, timeout: float = 60.0) -> None:
    """Until the agent answers `healthcheck` on its Workload API socket."""
    cmd = [
        str(bin_dir / "spire-agent"),
        "healthcheck",
        "-socketPath",
        str(settings.agent_socket_path),
    ]
    last_error = ""

    def healthy() -> bool:
        nonlocal last_error
        try:
            proc = run_program(cmd, fail=_unhealthy, check=False, timeout=30)
        except _Unhealthy as exc:  # missing or hung: not healthy yet, and say why
            last_error = str(exc)
            return False
        last_error = proc.stderr.strip()
        return proc.returncode == 0

    if not poll(healthy, timeout, interval=0.3):
        raise TimeoutError(
            f"SPIRE agent not healthy on {settings.agent_socket_path} after "
            f"{timeout:.0f} s: {last_error}"
        )
