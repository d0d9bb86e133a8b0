"""Keys and JWT-SVIDs made locally, signed for real (PyJWT + cryptography), so
the token service's validation runs unchanged against them without a SPIRE agent."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

TRUST_DOMAIN = "flashpods.local"
AUDIENCE = "flashpods-token-service"
WORKER = "spiffe://flashpods.local/worker"
AGENT = "spiffe://flashpods.local/agent"


@dataclass
class Signer:
    """Signs JWTs like SPIRE does (ES256 with a `kid` present in the bundle)."""

    kid: str
    key: Any
    alg: str

    def token(
        self,
        sub: str = WORKER,
        aud: Any = AUDIENCE,
        exp_in: float | None = 300,
        extra: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        kid: str | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "aud": aud, "iat": now}
        if exp_in is not None:
            claims["exp"] = now + int(exp_in)
        claims.update(extra or {})
        return jwt.encode(
            claims,
            self.key,
            algorithm=self.alg,
            headers={"kid": kid or self.kid, **(headers or {})},
        )
