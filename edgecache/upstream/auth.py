"""Registry authentication, sans-IO: WWW-Authenticate challenges, token responses, scopes.

Registries answer an unauthenticated request with 401 and one or more RFC 7235 challenges,
e.g. Docker Hub's ``Bearer realm="https://auth.docker.io/token",service="registry.docker.io",
scope="repository:library/nginx:pull"``. Several challenges may share one header, separated by
the same commas that separate parameters, so the parser works on tokens rather than splitting
on ",". Nothing here does I/O; `tokens.py` fetches and caches, `session.py` sends.

Secrets (passwords, tokens) are kept in fields excluded from repr, so an object printed into
a log or an exception message cannot leak them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from edgecache.oci.jsontext import loads

# RFC 7230 tchar: what a scheme or a parameter name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 7235 token68: an opaque credential-like blob (base64 with optional '=' padding).
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_WS = " \t"

# The spec's default when a token response has no expires_in.
DEFAULT_TOKEN_LIFETIME = 60
# Reuse a token for at most a day whatever the server claims: it can be revoked.
MAX_TOKEN_LIFETIME = 86400


class ChallengeError(ValueError):
    """A WWW-Authenticate header that cannot be parsed; says what and where."""


class TokenResponseError(ValueError):
    """A token server answer without a usable token."""


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: scheme (lowercase) and its parameters (lowercase keys)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    def token_realm(self) -> str:
        """The realm of a Bearer challenge as an absolute http(s) URL to fetch tokens from."""
        realm = self.realm
        if not realm:
            raise ChallengeError("Bearer challenge has no realm to fetch a token from")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ChallengeError(f"Bearer realm {realm!r} is not an absolute http(s) URL")
        return realm


class _Cursor:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> ChallengeError:
        return ChallengeError(f"WWW-Authenticate {self.text!r}: {what} at position {self.pos}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WS:
            self.pos += 1

    def skip_separators(self) -> bool:
        """Skip whitespace and commas; True if at least one comma was skipped."""
        saw_comma = False
        while self.pos < len(self.text) and self.text[self.pos] in _WS + ",":
            saw_comma = saw_comma or self.text[self.pos] == ","
            self.pos += 1
        return saw_comma

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def match(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    def quoted_string(self) -> str:
        assert self.peek() == '"'
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "\\":
                if self.pos + 1 >= len(self.text):
                    break
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif c == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(c)
                self.pos += 1
        self.pos = start
        raise self.error("unterminated quoted string")

    def param_ahead(self) -> bool:
        """Whether the next thing is ``name = ...`` (a parameter, not a new scheme)."""
        m = _TOKEN.match(self.text, self.pos)
        if m is None:
            return False
        rest = self.text[m.end() :].lstrip(_WS)
        # "name==" would be a token68 ending in padding, not a parameter.
        return rest.startswith("=") and not rest.startswith("==")


def parse_www_authenticate(headers: str | Sequence[str]) -> list[Challenge]:
    """All challenges in one or several WWW-Authenticate header values, in order."""
    values = [headers] if isinstance(headers, str) else list(headers)
    challenges: list[Challenge] = []
    for value in values:
        challenges.extend(_parse_one(value))
    if not challenges:
        raise ChallengeError("WWW-Authenticate header is empty")
    return challenges


def _parse_one(value: str) -> list[Challenge]:
    cur = _Cursor(value)
    out: list[Challenge] = []
    cur.skip_separators()
    while not cur.at_end():
        scheme = cur.match(_TOKEN)
        if scheme is None:
            raise cur.error(f"expected an auth scheme, found {cur.peek()!r}")
        params: dict[str, str] = {}
        token68: str | None = None
        if not cur.at_end() and cur.peek() not in _WS + ",":
            raise cur.error(f"unexpected {cur.peek()!r} after scheme {scheme!r}")
        cur.skip_ws()
        if not cur.at_end() and cur.peek() != "," and not cur.param_ahead():
            token68 = cur.match(_TOKEN68)
            if token68 is None:
                raise cur.error(f"expected parameters after scheme {scheme!r}")
        else:
            _parse_params(cur, params)
        out.append(Challenge(scheme.lower(), params, token68))
        if not cur.skip_separators() and not cur.at_end():
            raise cur.error(f"expected ',' before {cur.peek()!r}")
    return out


def _parse_params(cur: _Cursor, params: dict[str, str]) -> None:
    while True:
        cur.skip_ws()
        if not cur.param_ahead():
            return
        name = cur.match(_TOKEN)
        assert name is not None
        cur.skip_ws()
        cur.pos += 1  # the "=" that param_ahead saw
        cur.skip_ws()
        if cur.peek() == '"':
            val = cur.quoted_string()
        else:
            bare = cur.match(_TOKEN)
            if bare is None:
                raise cur.error(f"parameter {name!r} has no value")
            val = bare
        key = name.lower()
        if key in params:
            raise cur.error(f"parameter {name!r} given twice")
        params[key] = val
        cur.skip_ws()
        if cur.at_end():
            return
        if cur.peek() != ",":
            raise cur.error(f"expected ',' after parameter {name!r}, found {cur.peek()!r}")
        # A comma either separates parameters or ends this challenge: look past it.
        save = cur.pos
        cur.skip_separators()
        if not cur.param_ahead():
            cur.pos = save
            return


def choose_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """The challenge we answer: Bearer when offered (scoped, short-lived), else Basic."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def pull_scope(repo: str) -> str:
    """The token scope for reading a repository (manifests, blobs, tags, referrers)."""
    return f"repository:{repo}:pull"


@dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str = field(repr=False)

    def header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class IssuedToken:
    """A bearer token and how long the server said it lives (seconds from issue)."""

    token: str = field(repr=False)
    expires_in: float = DEFAULT_TOKEN_LIFETIME

    def reuse_for(self) -> float:
        """Seconds to reuse it: stop a little early so a request never carries a token that
        expires in flight (a quarter of its life, at most 30 s)."""
        return self.expires_in - min(30.0, self.expires_in / 4)


def parse_token_response(body: bytes) -> IssuedToken:
    """The token server's JSON: ``token`` (Docker) or ``access_token`` (OAuth2), ``expires_in``."""
    try:
        doc = loads(body)
    except ValueError as exc:  # JSONInvalid: also too deep, or a 5000-digit number
        raise TokenResponseError(f"token response is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TokenResponseError("token response is not a JSON object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenResponseError("token response has no 'token' or 'access_token' string")
    expires = doc.get("expires_in")
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
        expires = DEFAULT_TOKEN_LIFETIME
    # A 400-digit integer would overflow float() and infinity would keep a token for ever.
    return IssuedToken(token, float(min(expires, MAX_TOKEN_LIFETIME)))
