"""JWT-SVID validation with py-spiffe, mapped onto the error codes of identity.md.

py-spiffe checks the header (alg must be RS/ES/PS*, so `none` and HS* are refused), finds
the signing key by `kid` in the trust domain's JWT bundle, verifies signature, `exp`,
`nbf` and `aud` (PyJWT), and that the subject is in the bundle's trust domain. PyJWT
verifies the signature before the claims, so `expired_jwt` and `invalid_audience` are
only ever reported for tokens our trust domain really signed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import jwt
from spiffe.bundle.jwt_bundle.errors import AuthorityNotFoundError
from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle
from spiffe.errors import PySpiffeError
from spiffe.svid.errors import InvalidAlgorithmError, InvalidTokenError, InvalidTypeError
from spiffe.svid.jwt_svid import JwtSvid

from flashpods.common.errors import ServiceError
from flashpods.common.jsonhttp import bearer_credential

# SPIRE's JWT-SVIDs are a few hundred bytes; anything this large is not one of them.
MAX_TOKEN_LENGTH = 16 * 1024
# The JWT-SVID standard's algorithms (py-spiffe refuses every other `alg`).
SVID_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def invalid_jwt(reason: str) -> ServiceError:
    return ServiceError(401, "invalid_jwt", f"JWT-SVID rejected: {reason}")


def bearer_token(header: str | None) -> str:
    """The JWT-SVID of `Authorization: Bearer <token>` (the API's rules: jsonhttp)."""
    token = bearer_credential(header, "JWT-SVID")
    if len(token) > MAX_TOKEN_LENGTH:
        raise invalid_jwt(f"token longer than {MAX_TOKEN_LENGTH} bytes")
    return token


def _json_segment(segment: str) -> dict[str, object] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_face(token: str) -> None:
    """Refuse what no JWT-SVID can be, before asking SPIRE for anything: not three
    base64url segments of a JSON header and JSON claims, an `alg` outside the standard's
    (none, HS*), no `kid`, or no `sub`/`exp`. A caller then gets 401 at once rather
    than 503 while SPIRE is down (a hopeless token is not worth retrying)."""
    segments = token.split(".")
    if len(segments) != 3 or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise invalid_jwt("malformed token")
    header, claims = _json_segment(segments[0]), _json_segment(segments[1])
    if header is None or claims is None:
        raise invalid_jwt("malformed token")
    if header.get("alg") not in SVID_ALGORITHMS:
        raise invalid_jwt(f"unsupported header: alg {str(header.get('alg'))[:20]!r}")
    if header.get("typ") not in (None, "JWT", "JOSE"):
        raise invalid_jwt("unsupported header: typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise invalid_jwt("no kid in the header")
    # `aud` is left to validate_svid: a signed token without it is `invalid_audience`.
    if "sub" not in claims or "exp" not in claims:
        raise invalid_jwt("missing sub or exp")


def _claims_error(err: InvalidTokenError) -> ServiceError:
    cause = err.__cause__
    if isinstance(cause, jwt.ExpiredSignatureError):
        return ServiceError(401, "expired_jwt", "JWT-SVID has expired")
    if isinstance(cause, jwt.InvalidAudienceError) or (
        isinstance(cause, jwt.MissingRequiredClaimError) and cause.claim == "aud"
    ):
        return ServiceError(401, "invalid_audience", "JWT-SVID is not for this audience")
    if isinstance(cause, jwt.ImmatureSignatureError):
        return invalid_jwt("not valid yet (nbf in the future)")
    if isinstance(cause, jwt.InvalidSignatureError):
        return invalid_jwt("bad signature")
    if isinstance(cause, jwt.DecodeError):
        return invalid_jwt("malformed token")
    return invalid_jwt(str(err) or "invalid token")


def validate_svid(token: str, bundle: JwtBundle, audience: str) -> str:
    """The verified SPIFFE ID of `token`, or ServiceError with the precise code."""
    try:
        svid = JwtSvid.parse_and_validate(token, bundle, {audience})
    except AuthorityNotFoundError:
        raise invalid_jwt("signing key (kid) not in the trust bundle") from None
    except (InvalidAlgorithmError, InvalidTypeError) as err:
        raise invalid_jwt(f"unsupported header: {err}") from None
    except InvalidTokenError as err:
        raise _claims_error(err) from None
    except (PySpiffeError, jwt.PyJWTError, KeyError, TypeError, ValueError):
        # e.g. a token without `exp` (PyJWT does not require it; py-spiffe then fails).
        raise invalid_jwt("malformed token") from None
    # py-spiffe >= 0.3 checks this itself; 0.2.2 (the version the NixOS package set can
    # run, nix/py-spiffe.nix) does not.
    if svid.spiffe_id.trust_domain != bundle.trust_domain:
        raise invalid_jwt(
            f"JWT-SVID subject trust domain '{svid.spiffe_id.trust_domain}' does not match "
            f"the trust domain '{bundle.trust_domain}' of the bundle"
        )
    return str(svid.spiffe_id)
