"""The exchange itself, independent of HTTP: header in, (status, body, audit) out."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle

from flashpods.common.errors import ServiceError
from flashpods.tokens.policy import Policy, Secrets, SecretsError
from flashpods.tokens.validation import bearer_token, check_face, validate_svid


class BundleProvider(Protocol):
    def bundle(self) -> JwtBundle: ...


class SecretsProvider(Protocol):
    def current(self) -> Secrets: ...


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    spiffe_id: str | None = None
    token_fingerprint: str | None = None
    validate_seconds: float = 0.0
    total_seconds: float = 0.0
    granted: tuple[str, ...] = field(default_factory=tuple)

    def audit_line(self) -> str:
        """One line per exchange: identity or failure reason, never a secret or a JWT."""
        if self.status == 200:
            head = f"exchange granted spiffe_id={self.spiffe_id} secrets={','.join(self.granted)}"
        else:
            head = (
                f"exchange denied status={self.status} reason={self.body.get('error')}"
                f" spiffe_id={self.spiffe_id or '-'}"
            )
        return (
            f"{head} token={self.token_fingerprint or '-'}"
            f" validate_ms={self.validate_seconds * 1000:.2f}"
            f" total_ms={self.total_seconds * 1000:.2f}"
        )


def fingerprint(token: str) -> str:
    """Enough to correlate log lines with a caller's token, useless to replay it."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class Exchange:
    bundles: BundleProvider
    secrets: SecretsProvider
    policy: Policy
    audience: str

    def run(self, authorization: str | None) -> Outcome:
        start = time.perf_counter()
        outcome = Outcome(status=500, body={})
        try:
            token = bearer_token(authorization)
            outcome.token_fingerprint = fingerprint(token)
            check_face(token)
            bundle = self.bundles.bundle()
            validate_start = time.perf_counter()
            try:
                spiffe_id = validate_svid(token, bundle, self.audience)
            finally:
                outcome.validate_seconds = time.perf_counter() - validate_start
            outcome.spiffe_id = spiffe_id
            try:
                secrets = self.secrets.current()
            except SecretsError as err:
                raise ServiceError(
                    500, "secrets_unavailable", f"secrets file unusable: {err}"
                ) from None
            granted = self.policy.grant(spiffe_id, secrets)
            if granted is None:
                raise ServiceError(
                    403, "unknown_identity", f"{spiffe_id} is not allowed any secret"
                )
            outcome.status, outcome.body = 200, dict(granted)
            outcome.granted = tuple(k for k, v in granted.items() if v is not None)
        except ServiceError as err:
            outcome.status, outcome.body = err.status, err.body()
        outcome.total_seconds = time.perf_counter() - start
        return outcome

    def health(self) -> tuple[int, dict[str, Any]]:
        checks: dict[str, str] = {}
        try:
            self.bundles.bundle()
            checks["spire"] = "ok"
        except ServiceError as err:
            checks["spire"] = err.message
        try:
            self.secrets.current()
            checks["secrets"] = "ok"
        except SecretsError as err:
            checks["secrets"] = f"unusable: {err}"
        healthy = all(v == "ok" for v in checks.values())
        return (200 if healthy else 503), {
            "status": "healthy" if healthy else "unhealthy",
            **checks,
        }
