"""Bearer JWT verification and grants (no database)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from seedline_server.domain import access
from seedline_server.domain.errors import CredentialsInvalid
from seedline_server.service.identity import JwtVerifier, jwt_grants

SECRET = "unit-secret-unit-secret-unit-secret!"


def claims(**over: Any) -> dict[str, Any]:
    t = int(time.time())
    base = {"sub": "alice", "iss": "seedline", "aud": "seedline", "iat": t, "nbf": t - 1, "exp": t + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def hs() -> JwtVerifier:
    return JwtVerifier(SECRET, None, "seedline", "seedline")


def test_a_valid_hs256_token_verifies(hs: JwtVerifier) -> None:
    assert hs.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))["sub"] == "alice"


# Claims are made when the test runs, not when it is collected: a long suite would otherwise
# reach the "not yet valid" time before this test does.
@pytest.mark.parametrize(
    "bad",
    [
        lambda: {"exp": int(time.time()) - 120},  # expired (beyond the 30 s leeway)
        lambda: {"nbf": int(time.time()) + 120},  # not yet valid
        lambda: {"iss": "someone-else"},
        lambda: {"aud": "another-service"},
        lambda: {"sub": None},  # required
        lambda: {"exp": None},  # required
    ],
    ids=["expired", "not-before", "issuer", "audience", "no-sub", "no-exp"],
)
def test_every_failed_check_is_the_same_opaque_error(
    hs: JwtVerifier, bad: Callable[[], dict[str, Any]]
) -> None:
    with pytest.raises(CredentialsInvalid) as err:
        hs.verify(jwt.encode(claims(**bad()), SECRET, algorithm="HS256"))
    assert err.value.message == "the credential is not valid"


def test_wrong_secret_none_algorithm_and_garbage_are_refused(hs: JwtVerifier) -> None:
    for token in (
        jwt.encode(claims(), "another-secret-another-secret-xx", algorithm="HS256"),
        jwt.encode(claims(), None, algorithm="none"),  # type: ignore[arg-type]
        "not.a.jwt",
        "",
    ):
        with pytest.raises(CredentialsInvalid):
            hs.verify(token)
    # Without a configured secret, HS256 tokens are refused outright.
    with pytest.raises(CredentialsInvalid):
        JwtVerifier(None, None, "seedline", "seedline").verify(
            jwt.encode(claims(), SECRET, algorithm="HS256")
        )


def test_rs256_and_es256_verify_from_a_jwks_file_by_kid(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, key, alg in (("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256")):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": alg})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    verifier = JwtVerifier(None, path, "seedline", "seedline")
    assert (
        verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "r1"}))["sub"]
        == "alice"
    )
    assert (
        verifier.verify(jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "e1"}))["sub"]
        == "alice"
    )
    # A token signed by the RSA key but claiming the EC key's kid, or an unknown kid, fails.
    for kid in ("e1", "zz"):
        with pytest.raises(CredentialsInvalid):
            verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": kid}))


def test_grants_from_claims_and_scopes() -> None:
    grants = jwt_grants({"seedline_grants": {"L1": ["cultivator"], "*": ["viewer"]}})
    assert grants.allows("plant.write", "L1")
    assert not grants.allows("plant.write", "L2")
    assert grants.allows("inventory.read", "L2")  # viewer everywhere
    assert not grants.allows("audit.read", "L2")
    assert jwt_grants({"seedline_grants": "nonsense"}) == access.NONE
    key = access.Grants.from_scopes(["L1"], ["inventory.*", "plant.read"])
    assert key.allows("inventory.write", "L1")
    assert key.allows("plant.read", "L1")
    assert not key.allows("plant.write", "L1")
    assert not key.allows("inventory.read", "L2")


def test_every_role_names_only_known_permissions() -> None:
    for role, perms in access.ROLES.items():
        assert perms <= access.PERMISSIONS, role
    assert access.ROLES["admin"] == access.PERMISSIONS
    assert "registry.admin" not in access.ROLES["owner"]
