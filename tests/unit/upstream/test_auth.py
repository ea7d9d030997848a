"""WWW-Authenticate challenges as real registries send them, and token responses."""

from __future__ import annotations

import pytest

from edgecache.upstream.auth import (
    BasicCredentials,
    Challenge,
    ChallengeError,
    IssuedToken,
    TokenResponseError,
    choose_challenge,
    parse_token_response,
    parse_www_authenticate,
    pull_scope,
)


def one(header: str) -> Challenge:
    challenges = parse_www_authenticate(header)
    assert len(challenges) == 1, challenges
    return challenges[0]


def test_docker_hub() -> None:
    c = one(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.scope == "repository:library/nginx:pull"
    assert c.token_realm() == "https://auth.docker.io/token"


def test_ghcr() -> None:
    c = one('Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:o/i:pull"')
    assert (c.realm, c.service, c.scope) == (
        "https://ghcr.io/token",
        "ghcr.io",
        "repository:o/i:pull",
    )


def test_quay_without_scope() -> None:
    c = one('Bearer realm="https://quay.io/v2/auth",service="quay.io"')
    assert c.scope is None and c.service == "quay.io"


def test_ecr_public_and_distribution_error_param() -> None:
    c = one('Bearer realm="https://public.ecr.aws/token/",service="public.ecr.aws",scope="aws"')
    assert c.realm == "https://public.ecr.aws/token/"
    c = one(
        'Bearer realm="http://127.0.0.1:5001/token",service="reg",'
        'scope="repository:a/b:pull",error="insufficient_scope"'
    )
    assert c.params["error"] == "insufficient_scope"


def test_basic_from_distribution_htpasswd() -> None:
    c = one('Basic realm="test"')
    assert c.scheme == "basic" and c.realm == "test"


def test_scheme_and_param_names_are_case_insensitive() -> None:
    c = one('BEARER Realm="https://x/token", SERVICE="x"')
    assert c.scheme == "bearer" and c.realm == "https://x/token" and c.service == "x"


def test_spaces_around_equals_and_commas() -> None:
    c = one('Bearer realm = "https://x/token" ,  service = "svc"  ')
    assert (c.realm, c.service) == ("https://x/token", "svc")


def test_unquoted_values() -> None:
    c = one("Basic realm=registry, charset=UTF-8")
    assert c.params == {"realm": "registry", "charset": "UTF-8"}


def test_quoted_commas_and_escaped_quotes() -> None:
    c = one(r'Basic realm="a, \"quoted\" realm", other="x\\y"')
    assert c.realm == 'a, "quoted" realm'
    assert c.params["other"] == "x\\y"


def test_space_separated_scopes() -> None:
    c = one('Bearer realm="https://x/t",scope="repository:a:pull repository:b:pull"')
    assert c.scope == "repository:a:pull repository:b:pull"


def test_several_challenges_in_one_header() -> None:
    cs = parse_www_authenticate(
        'Basic realm="r1", Bearer realm="https://x/t",service="s", Negotiate'
    )
    assert [c.scheme for c in cs] == ["basic", "bearer", "negotiate"]
    assert cs[1].service == "s"
    assert choose_challenge(cs) is cs[1]


def test_several_header_lines() -> None:
    cs = parse_www_authenticate(['Basic realm="r"', 'Bearer realm="https://x/t"'])
    assert [c.scheme for c in cs] == ["basic", "bearer"]


def test_token68() -> None:
    cs = parse_www_authenticate(
        "Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXagGDAWBgkqhkiG9xIBAgIGCSqGSIb3EgECAg==, Basic realm=x"
    )
    assert cs[0].token68 is not None and cs[0].token68.endswith("==")
    assert cs[1].realm == "x"


def test_scheme_without_params() -> None:
    assert one("Basic") == Challenge("basic", {})


def test_choose_prefers_bearer_and_ignores_unknown() -> None:
    assert choose_challenge(parse_www_authenticate("Negotiate, NTLM")) is None
    basic = parse_www_authenticate('Basic realm="x"')
    assert choose_challenge(basic) is basic[0]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("", "empty"),
        ("   ,  ", "empty"),
        ('Bearer realm="https://x/token', "unterminated quoted string at position 13"),
        ('Bearer realm="x" service="y"', "expected ','"),
        ("Bearer realm=", "parameter 'realm' has no value"),
        ('Bearer realm="a",realm="b"', "parameter 'realm' given twice"),
        ('="x"', "expected an auth scheme"),
        ('Bearer; realm="x"', "unexpected ';' after scheme 'Bearer'"),
        ('Bearer realm="x" junk', "expected ','"),
    ],
)
def test_malformed_headers_say_what_and_where(header: str, problem: str) -> None:
    with pytest.raises(ChallengeError, match=problem.replace("(", r"\(")):
        parse_www_authenticate(header)


@pytest.mark.parametrize(
    ("realm", "problem"),
    [(None, "no realm"), ("/token", "not an absolute"), ("ftp://x/t", "not an absolute")],
)
def test_bearer_realm_must_be_an_http_url(realm: str | None, problem: str) -> None:
    params = {"realm": realm} if realm is not None else {}
    with pytest.raises(ChallengeError, match=problem):
        Challenge("bearer", params).token_realm()


def test_token_response_forms() -> None:
    assert parse_token_response(b'{"token":"t1","expires_in":300}') == IssuedToken("t1", 300)
    assert parse_token_response(b'{"access_token":"t2"}') == IssuedToken("t2", 60)
    both = parse_token_response(b'{"token":"t3","access_token":"t3","issued_at":"x"}')
    assert both.token == "t3" and both.expires_in == 60
    assert parse_token_response(b'{"token":"t","expires_in":-5}').expires_in == 60
    assert parse_token_response(b'{"token":"t","expires_in":true}').expires_in == 60


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "no 'token'"),
        (b'{"token":""}', "no 'token'"),
        (b'{"token":5}', "no 'token'"),
    ],
)
def test_bad_token_responses(body: bytes, problem: str) -> None:
    with pytest.raises(TokenResponseError, match=problem):
        parse_token_response(body)


def test_token_reuse_stops_early() -> None:
    assert IssuedToken("t", 60).reuse_for() == 45
    assert IssuedToken("t", 300).reuse_for() == 270
    assert IssuedToken("t", 4).reuse_for() == 3


def test_secrets_not_in_repr() -> None:
    creds = BasicCredentials("alice", "hunter2-secret")
    assert "hunter2-secret" not in repr(creds)
    assert creds.header() == "Basic YWxpY2U6aHVudGVyMi1zZWNyZXQ="
    assert "tok-secret" not in repr(IssuedToken("tok-secret", 60))


def test_pull_scope() -> None:
    assert pull_scope("library/nginx") == "repository:library/nginx:pull"
