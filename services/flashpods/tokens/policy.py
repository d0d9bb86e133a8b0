"""Which secrets each SPIFFE ID gets (identity.md), and the secrets file itself."""

from __future__ import annotations

import json
from dataclasses import dataclass

ANTHROPIC = "ANTHROPIC_API_KEY"
GITHUB = "GITHUB_TOKEN"


class SecretsError(ValueError):
    """The secrets file is unusable; the message never contains a secret."""


@dataclass(frozen=True)
class Secrets:
    anthropic_api_key: str
    github_token: str


def parse_secrets(text: str) -> Secrets:
    """`{"anthropic_api_key": "...", "github_token": "..."}`, both non-empty strings."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # err.msg/pos only: the document itself (secrets) must not reach a log.
        raise SecretsError(f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise SecretsError("not a JSON object")
    values = {}
    for key in ("anthropic_api_key", "github_token"):
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise SecretsError(f"{key} is missing or not a non-empty string")
        values[key] = value
    return Secrets(**values)


@dataclass(frozen=True)
class Policy:
    trust_domain: str
    worker_id: str
    agent_id: str

    @classmethod
    def for_trust_domain(cls, trust_domain: str) -> Policy:
        return cls(
            trust_domain=trust_domain,
            worker_id=f"spiffe://{trust_domain}/worker",
            agent_id=f"spiffe://{trust_domain}/agent",
        )

    def grant(self, spiffe_id: str, secrets: Secrets) -> dict[str, str | None] | None:
        """The response body for this identity, or None when it is not in the policy."""
        if spiffe_id == self.agent_id:
            return {ANTHROPIC: secrets.anthropic_api_key, GITHUB: secrets.github_token}
        if spiffe_id == self.worker_id:
            return {ANTHROPIC: None, GITHUB: secrets.github_token}
        return None
