"""JWT-SVID validation: every rejection with its exact code, and fuzzing for crashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import string
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flashpods.common.errors import ServiceError
from flashpods.tokens.validation import (
    MAX_TOKEN_LENGTH,
    SVID_ALGORITHMS,
    bearer_token,
    check_face,
    validate_svid,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle
from spiffe.spiffe_id.spiffe_id import TrustDomain
from token_support import AGENT, AUDIENCE, WORKER, Signer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    return head + "." + b64url(signature)


def rejected(token: str, bundle: JwtBundle) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        validate_svid(token, bundle, AUDIENCE)
    return info.value


def claims_now(**extra: Any) -> dict[str, Any]:
    import time

    return {"sub": WORKER, "aud": [AUDIENCE], "exp": int(time.time()) + 300, **extra}


# -- the Authorization header ------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header: str | None) -> None:
    with pytest.raises(ServiceError) as info:
        bearer_token(header)
    assert (info.value.status, info.value.code) == (401, "missing_authorization")


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "eyJhbGciOi", "Bearer a b"]
)
def test_malformed_header(header: str) -> None:
    with pytest.raises(ServiceError) as info:
        bearer_token(header)
    assert (info.value.status, info.value.code) == (401, "malformed_authorization")


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"


def test_huge_token_is_invalid_without_parsing() -> None:
    with pytest.raises(ServiceError) as info:
        bearer_token("Bearer " + "A" * (MAX_TOKEN_LENGTH + 1))
    assert (info.value.status, info.value.code) == (401, "invalid_jwt")


# -- signatures and algorithms -----------------------------------------------------------


@pytest.mark.parametrize("signer_name", ["ec_signer", "rsa_signer"])
def test_valid_svid_returns_its_spiffe_id(
    signer_name: str, request: pytest.FixtureRequest, bundle: JwtBundle
) -> None:
    signer: Signer = request.getfixturevalue(signer_name)
    assert validate_svid(signer.token(sub=AGENT), bundle, AUDIENCE) == AGENT


def test_alg_none_is_refused(ec_signer: Signer, bundle: JwtBundle) -> None:
    token = handmade({"alg": "none", "kid": ec_signer.kid, "typ": "JWT"}, claims_now())
    err = rejected(token, bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


def test_hs256_signed_with_the_bundles_public_key_is_refused(
    ec_signer: Signer, bundle: JwtBundle
) -> None:
    """Key confusion: the attacker knows the public key and uses it as an HMAC secret."""
    public_pem = ec_signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": ec_signer.kid, "typ": "JWT"}
    unsigned = handmade(header, claims_now()).rsplit(".", 1)[0]
    mac = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    err = rejected(unsigned + "." + b64url(mac), bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


def test_tampered_payload_fails_the_signature(ec_signer: Signer, bundle: JwtBundle) -> None:
    head, _payload, sig = ec_signer.token(sub=WORKER).split(".")
    forged = b64url(json.dumps(claims_now(sub=AGENT)).encode())
    err = rejected(f"{head}.{forged}.{sig}", bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


def test_unknown_kid(ec_signer: Signer, bundle: JwtBundle) -> None:
    err = rejected(ec_signer.token(kid="no-such-kid"), bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")
    assert "kid" in err.message


def test_missing_kid(ec_signer: Signer, bundle: JwtBundle) -> None:
    import jwt

    token = jwt.encode(claims_now(), ec_signer.key, algorithm="ES256")
    err = rejected(token, bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


def test_another_trust_domains_key(bundle: JwtBundle) -> None:
    """Signed by another trust domain's authority: its key is not in our bundle."""
    other = Signer("other-td-kid", ec.generate_private_key(ec.SECP256R1()), "ES256")
    err = rejected(other.token(sub="spiffe://evil.example/agent"), bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


def test_subject_in_another_trust_domain_even_if_signed_by_us(
    ec_signer: Signer, bundle: JwtBundle
) -> None:
    err = rejected(ec_signer.token(sub="spiffe://evil.example/agent"), bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


# -- claims ------------------------------------------------------------------------------


@pytest.mark.parametrize("aud", ["someone-else", ["a", "b"], ""])
def test_wrong_audience(aud: Any, ec_signer: Signer, bundle: JwtBundle) -> None:
    err = rejected(ec_signer.token(aud=aud), bundle)
    assert (err.status, err.code) == (401, "invalid_audience")


def test_audience_among_several_is_accepted(ec_signer: Signer, bundle: JwtBundle) -> None:
    token = ec_signer.token(aud=["other", AUDIENCE])
    assert validate_svid(token, bundle, AUDIENCE) == WORKER


def test_no_audience_claim(ec_signer: Signer, bundle: JwtBundle) -> None:
    import jwt

    token = jwt.encode(
        {"sub": WORKER, "exp": claims_now()["exp"]},
        ec_signer.key,
        algorithm="ES256",
        headers={"kid": ec_signer.kid},
    )
    err = rejected(token, bundle)
    assert (err.status, err.code) == (401, "invalid_audience")


def test_expired(ec_signer: Signer, bundle: JwtBundle) -> None:
    err = rejected(ec_signer.token(exp_in=-5), bundle)
    assert (err.status, err.code) == (401, "expired_jwt")


def test_expired_with_a_bad_signature_is_just_invalid(ec_signer: Signer, bundle: JwtBundle) -> None:
    """Claims are only judged for tokens we signed: no oracle for forged ones."""
    head, payload, _sig = ec_signer.token(exp_in=-5).split(".")
    _h, _p, other_sig = ec_signer.token().split(".")
    err = rejected(f"{head}.{payload}.{other_sig}", bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


def test_not_yet_valid(ec_signer: Signer, bundle: JwtBundle) -> None:
    import time

    err = rejected(ec_signer.token(extra={"nbf": int(time.time()) + 120}), bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")
    assert "not valid yet" in err.message


def test_missing_expiry(ec_signer: Signer, bundle: JwtBundle) -> None:
    err = rejected(ec_signer.token(exp_in=None), bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


def test_missing_subject(ec_signer: Signer, bundle: JwtBundle) -> None:
    import jwt

    claims = claims_now()
    del claims["sub"]
    token = jwt.encode(claims, ec_signer.key, algorithm="ES256", headers={"kid": ec_signer.kid})
    err = rejected(token, bundle)
    assert (err.status, err.code) == (401, "invalid_jwt")


# -- invalid on its face (no bundle needed) ---------------------------------------------


def face_rejected(token: str) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        check_face(token)
    assert (info.value.status, info.value.code) == (401, "invalid_jwt")
    return info.value


def test_face_refuses_what_no_svid_can_be(ec_signer: Signer) -> None:
    kid = ec_signer.kid
    for token in (
        "garbage",
        "a.b",
        "a.b.c.d",
        "ünïcode.x.y",
        handmade({"alg": "none", "kid": kid}, claims_now()),  # empty signature segment
        handmade({"alg": "none", "kid": kid}, claims_now(), b"x"),
        handmade({"alg": "HS256", "kid": kid}, claims_now(), b"mac"),
        handmade({"alg": "ES256"}, claims_now(), b"sig"),
        handmade({"alg": "ES256", "kid": ""}, claims_now(), b"sig"),
        handmade({"alg": "ES256", "kid": kid, "typ": "xyz"}, claims_now(), b"sig"),
        handmade({"alg": "ES256", "kid": kid}, {"aud": [AUDIENCE], "exp": 1}, b"sig"),
        b64url(b"[1]") + "." + b64url(json.dumps(claims_now()).encode()) + ".c2ln",
        b64url(b'{"alg": "ES256", "kid": "k"}') + "." + b64url(b"not json") + ".c2ln",
    ):
        face_rejected(token)


def test_face_passes_real_svids(ec_signer: Signer) -> None:
    check_face(ec_signer.token(sub=WORKER))
    check_face(ec_signer.token(exp_in=-1))  # expiry is judged after the signature
    check_face(handmade({"alg": "ES256", "kid": "k"}, {"sub": WORKER, "exp": 1}, b"sig"))


def test_face_algorithms_are_py_spiffes() -> None:
    from spiffe.svid.jwt_svid_validator import JwtSvidValidator

    assert set(JwtSvidValidator._SUPPORTED_ALGORITHMS) == SVID_ALGORITHMS


# -- fuzzing -----------------------------------------------------------------------------

URLSAFE = string.ascii_letters + string.digits + "-_."


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.text(alphabet=URLSAFE, max_size=300)))
def test_garbage_is_always_invalid_jwt(garbage: str) -> None:
    bundle = JwtBundle(TrustDomain("flashpods.local"), {})
    if not garbage:
        return
    with pytest.raises(ServiceError) as info:
        validate_svid(garbage, bundle, AUDIENCE)
    assert (info.value.status, info.value.code) == (401, "invalid_jwt")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    claims=st.dictionaries(
        st.sampled_from(["sub", "aud", "exp", "nbf", "iat", "iss", "x"]), json_values, max_size=6
    )
)
def test_any_claims_signed_by_us_never_crash(
    claims: dict[str, Any], ec_signer: Signer, bundle: JwtBundle
) -> None:
    """Whatever our key signs, the outcome is an ID or one of the documented 401s."""
    import jwt

    # PyJWS signs any payload bytes (jwt.encode would refuse some claim types itself).
    payload = json.dumps(claims).encode()
    token = jwt.PyJWS().encode(
        payload, ec_signer.key, algorithm="ES256", headers={"kid": ec_signer.kid}
    )
    try:
        spiffe_id = validate_svid(token, bundle, AUDIENCE)
    except ServiceError as err:
        assert err.status == 401
        assert err.code in {"invalid_jwt", "invalid_audience", "expired_jwt"}
    else:
        assert spiffe_id == claims["sub"]
        assert spiffe_id.startswith("spiffe://flashpods.local/")
