"""Short-lived bearer tokens: the distribution token flow, served by edgecache itself.

A client that is challenged with `Bearer realm="<this server>/_edgecache/token",service=...,
scope=...` (`[auth] token_auth`), or a program edgecache hands a pull credential to (the
preheat providers and scanners of later issues), exchanges its credentials at the token
endpoint for a JWT that grants named actions on named repositories and expires after
`[auth] token_ttl` seconds; it then sends `Authorization: Bearer <token>`. The token format is
the distribution spec's (https://distribution.github.io/distribution/spec/auth/jwt/): an
`access` claim of {type: repository, name, actions}. A token for repository A does not read B.

Signed with HS256 (PyJWT) under a key made when the server starts, shared by its serving
processes through <data>/run/token-key (mode 0600): nothing is stored per token, and a restart
invalidates every token (clients ask for a new one on the 401). Tokens are never logged: the
access log keeps no Authorization header and no token-endpoint query but the scope.
"""

from __future__ import annotations

import datetime
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jwt

from ..oci import errors
from ..oci.names import validate_repository

if TYPE_CHECKING:
    from .app import App
    from .http import Request

ISSUER = "edgecache"
SERVICE = "edgecache"
ENDPOINT = "/_edgecache/token"
ACTIONS = ("pull", "push")
DIGESTS_CLAIM = "edgecache_digests"
MAX_SCOPES = 16  # scopes one token request may name (each a repository)
KEY_BYTES = 32


@dataclass(frozen=True)
class Grant:
    subject: str  # the user, or "" for anonymous
    access: Mapping[str, frozenset[str]]  # repository -> actions
    # The manifests a token edgecache handed a program was made for (a scanner's: the one it
    # scans); empty for users' tokens.
    digests: frozenset[str] = frozenset()

    def allows(self, repo: str | None, action: str) -> bool:
        """`action` on `repo`; repo None (GET /v2/): any valid token."""
        return repo is None or action in self.access.get(repo, frozenset())


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def parse_scopes(values: Iterable[str]) -> dict[str, set[str]]:
    """`repository:<name>:<action>[,<action>]` scopes (others ignored, as registries do);
    a malformed one is a 400 naming it."""
    wanted: dict[str, set[str]] = {}
    for value in values:
        for scope in value.split(" "):
            if not scope:
                continue
            kind, _, rest = scope.partition(":")
            if kind != "repository":
                continue
            name, sep, actions = rest.rpartition(":")
            if not sep or not name:
                raise errors.BadRequest(
                    f"scope {scope[:200]!r}: expected repository:<name>:<actions>"
                )
            validate_repository(name)
            wanted.setdefault(name, set()).update(a for a in actions.split(",") if a in ACTIONS)
            if len(wanted) > MAX_SCOPES:
                raise errors.BadRequest(f"more than {MAX_SCOPES} repositories in one token")
    return wanted


class TokenIssuer:
    def __init__(self, key: bytes, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.ttl = ttl
        self._clock = clock

    def issue(
        self,
        subject: str,
        access: Mapping[str, Iterable[str]],
        ttl: float | None = None,
        digests: Iterable[str] = (),
    ) -> dict[str, Any]:
        """The token endpoint's JSON answer for a grant; `ttl` (at most a day) instead of the
        configured one for a credential edgecache hands to a slower consumer (a P2P engine)."""
        lifetime = int(min(ttl, 86400.0)) if ttl is not None else int(self.ttl)
        now = int(self._clock())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            "access": [
                {"type": "repository", "name": name, "actions": sorted(actions)}
                for name, actions in sorted(access.items())
            ],
        }
        if digests:
            claims[DIGESTS_CLAIM] = sorted(digests)
        token = jwt.encode(claims, self.key, algorithm="HS256")
        issued = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
        return {
            "token": token,
            "access_token": token,
            "expires_in": lifetime,
            "issued_at": issued.replace("+00:00", "Z"),
        }

    def pull_token(
        self, subject: str, repository: str, ttl: float, digests: Iterable[str] = ()
    ) -> str:
        """A token for pull on one repository, for a program edgecache hands it to (a P2P
        engine, a scanner adapter); `subject` names that program, `digests` the manifests it
        is for (what the pull gate lets a scanner read: scan/gate.py)."""
        answer = self.issue(subject, {repository: ["pull"]}, ttl=ttl, digests=digests)
        token: str = answer["token"]
        return token

    def verify(self, token: str) -> Grant:
        """The grant of a token this server issued and that has not expired; ValueError
        says why not (never the token)."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=["HS256"],
                audience=SERVICE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "aud", "iss"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise ValueError(
                "the token has expired; ask the token endpoint for a new one"
            ) from None
        except jwt.PyJWTError:
            raise ValueError("the token is not one this server issued") from None
        access: dict[str, frozenset[str]] = {}
        for entry in claims.get("access") or []:
            if isinstance(entry, dict) and entry.get("type") == "repository":
                actions = entry.get("actions") or []
                access[str(entry.get("name"))] = frozenset(str(a) for a in actions)
        digests = claims.get(DIGESTS_CLAIM) or []
        bound = frozenset(str(d) for d in digests) if isinstance(digests, list) else frozenset()
        return Grant(str(claims.get("sub", "")), access, bound)


async def endpoint(app: App, req: Request) -> None:
    """GET /_edgecache/token?service=edgecache&scope=repository:<name>:pull[,push]...

    With Basic credentials of a user: pull and push on the repositories named. Without: what
    anonymous clients may do ([auth] anonymous_pull / anonymous_push), or 401 with the Basic
    challenge when they may do nothing asked. Answered by any serving process."""
    if req.method not in ("GET", "HEAD"):
        error = errors.MethodNotAllowed(f"{req.method} is not allowed on the token endpoint")
        error.headers["Allow"] = "GET, HEAD"
        raise error
    query = parse_qsl(req.scope.get("query_string", b"").decode("latin-1"), True)
    service = [v for k, v in query if k == "service"]
    if any(v != SERVICE for v in service):
        raise errors.BadRequest(f"service {service[0][:100]!r}: this server is {SERVICE!r}")
    wanted = parse_scopes(v for k, v in query if k == "scope")
    auth = app.auth
    authorization = req.headers.get("authorization")
    if authorization is not None and not _anonymous(authorization):
        user = await auth.login(authorization, req.scope.get("client"))
        allowed = set(ACTIONS)
    else:
        user = ""
        allowed = {a for a, ok in (("pull", auth.config.anonymous_pull),
                                   ("push", auth.config.anonymous_push)) if ok}  # fmt: skip
        if any(actions - allowed for actions in wanted.values()):
            refused = errors.Unauthorized("these scopes need a user's credentials")
            refused.headers["WWW-Authenticate"] = f'Basic realm="{auth.config.realm}"'
            raise refused
    assert app.auth.tokens is not None
    granted = {name: actions & allowed for name, actions in wanted.items()}
    await req.respond_json(200, app.auth.tokens.issue(user, granted), {"Cache-Control": "no-store"})


def _anonymous(authorization: str) -> bool:
    scheme, _, token = authorization.strip().partition(" ")
    return scheme.lower() == "basic" and token.strip() in ("", "Og==", "Og")
