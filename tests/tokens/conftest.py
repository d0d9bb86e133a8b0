"""Session-wide signing keys and the trust bundle holding their public halves."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle
from spiffe.spiffe_id.spiffe_id import TrustDomain
from token_support import TRUST_DOMAIN, Signer


@pytest.fixture(scope="session")
def ec_signer() -> Signer:
    return Signer("ec-kid-1", ec.generate_private_key(ec.SECP256R1()), "ES256")


@pytest.fixture(scope="session")
def rsa_signer() -> Signer:
    return Signer(
        "rsa-kid-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
    )


@pytest.fixture(scope="session")
def bundle(ec_signer: Signer, rsa_signer: Signer) -> JwtBundle:
    return JwtBundle(
        TrustDomain(TRUST_DOMAIN),
        {ec_signer.kid: ec_signer.key.public_key(), rsa_signer.kid: rsa_signer.key.public_key()},
    )
