"""Bearer tokens (server/tokens.py): what a token grants, and what is refused."""

from __future__ import annotations

import jwt
import pytest

from edgecache.oci import errors
from edgecache.server.tokens import TokenIssuer, parse_scopes

KEY = b"k" * 32


def test_a_token_grants_exactly_the_actions_and_repositories_it_names() -> None:
    issuer = TokenIssuer(KEY, 300)
    answer = issuer.issue("alice", {"team/app": {"pull"}, "team/lib": {"pull", "push"}})
    assert answer["access_token"] == answer["token"] and answer["expires_in"] == 300
    grant = issuer.verify(answer["token"])
    assert grant.subject == "alice"
    assert grant.allows("team/app", "pull") and not grant.allows("team/app", "push")
    assert grant.allows("team/lib", "push")
    assert not grant.allows("team/other", "pull")
    assert grant.allows(None, "pull")  # GET /v2/: any valid token


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: TokenIssuer(KEY, 300, clock=lambda: 1_000.0).issue("a", {})["token"], "expired"),
        (lambda: TokenIssuer(b"x" * 32, 300).issue("a", {})["token"], "not one this server"),
        (lambda: jwt.encode({"sub": "a"}, KEY, algorithm="HS256"), "not one this server"),
        (
            lambda: jwt.encode(
                {"iss": "edgecache", "aud": "edgecache", "exp": 2**40, "iat": 0},
                "",
                algorithm="none",
            ),
            "not one this server",
        ),
        (lambda: "not.a.token", "not one this server"),
    ],
)
def test_foreign_expired_or_unsigned_tokens_are_refused(make, why: str) -> None:  # type: ignore[no-untyped-def]
    token = make()
    with pytest.raises(ValueError, match=why) as caught:
        TokenIssuer(KEY, 300).verify(token)
    assert token not in str(caught.value)


def test_a_tampered_grant_is_refused() -> None:
    issuer = TokenIssuer(KEY, 300)
    token = issuer.issue("bob", {"team/app": {"pull"}})["token"]
    head, _body, sig = token.split(".")
    claims = jwt.decode(token, KEY, algorithms=["HS256"], audience="edgecache")
    claims["access"][0]["name"] = "team/secret"
    forged = jwt.encode(claims, b"guess" * 8, algorithm="HS256").split(".")[1]
    with pytest.raises(ValueError):
        issuer.verify(f"{head}.{forged}.{sig}")


def test_scopes() -> None:
    assert parse_scopes(["repository:a/b:pull,push,delete", "registry:catalog:*"]) == {
        "a/b": {"pull", "push"}
    }
    for bad in ("repository:", "repository::pull", "repository:UPPER:pull"):
        with pytest.raises((errors.BadRequest, errors.NameInvalid)):
            parse_scopes([bad])
    with pytest.raises(errors.BadRequest, match="more than"):
        parse_scopes([" ".join(f"repository:r{i}:pull" for i in range(17))])


def test_a_program_token_names_the_manifests_it_was_made_for() -> None:
    issuer = TokenIssuer(KEY, 300)
    digest = "sha256:" + "a" * 64
    grant = issuer.verify(issuer.pull_token("edgecache:scanner", "team/app", 60, [digest]))
    assert grant.subject == "edgecache:scanner" and grant.digests == frozenset({digest})
    assert grant.allows("team/app", "pull") and not grant.allows("team/other", "pull")
    assert issuer.verify(issuer.issue("alice", {"team/app": ["pull"]})["token"]).digests == set()
