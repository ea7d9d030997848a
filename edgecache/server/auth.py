"""Client authentication: HTTP Basic against bcrypt hashes ([auth.users] or an htpasswd file),
and bearer tokens this server issued (server/tokens.py), scoped to repositories and actions.

bcrypt is slow on purpose (~0.25 s at cost 12), which makes every password check a piece of
our CPU that any client can ask for. Run on trio's default thread limiter, 50 connections
sending wrong passwords held every worker thread, and anonymous pulls, which open their files
on those same threads, went from 3 ms to 8 s. So a check has to get past four things first:

- outcomes are remembered, keyed by an HMAC of user, password and hash under a per-process
  key (the password itself is never kept): a verified credential for SUCCESS_TTL, a refused
  one for FAILURE_TTL, each in a bounded LRU. A client repeating a wrong password costs no
  bcrypt, and concurrent checks of one credential share a single bcrypt run;
- refusals are counted per client address (`FailureLimiter`, a token bucket: FAILURE_BURST
  refusals, then one more every FAILURE_REFILL seconds); an address past it is answered 429
  with Retry-After for any credentials, without a check, so guessing is slow whatever the
  caches say. Its table of addresses is bounded (an IPv6 client counts by its /64);
- checks run on their own CapacityLimiter (a thread per two cores), never on the default one
  that file I/O uses, and at most MAX_WAITING wait for it: past that the answer is 429 with
  Retry-After rather than a queue without end;
- an unknown user is checked against a dummy hash of the users' cost, so answering takes as
  long as for a wrong password: response times do not tell which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import bcrypt
import trio

from ..bounded import BoundedCache
from ..config import AuthConfig
from ..oci import errors
from .tokens import SERVICE, TokenIssuer

# Methods that change the registry; everything else is a pull.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# A legitimate client sends one credential and then hits the success cache; these bound what
# a client sending many can make us hold or compute.
SUCCESS_TTL = 3600.0
SUCCESS_ENTRIES = 4096
FAILURE_TTL = 600.0
FAILURE_ENTRIES = 4096
FAILURE_BURST = 10
FAILURE_REFILL = 6.0  # seconds per further attempt once the burst is spent (10 a minute)
TRACKED_CLIENTS = 10_000
MAX_WAITING = 16
# Half the cores: bcrypt releases the GIL, so each check thread is a core the event loop and
# the file threads do not get.
CHECK_THREADS = max(1, (os.cpu_count() or 2) // 2)


def _too_many(message: str, retry_after: float) -> errors.TooManyRequests:
    error = errors.TooManyRequests(message)
    error.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return error


class FailureLimiter:
    """Refused credentials per client address, as a token bucket (pure; the clock is injected).

    Each address may fail `burst` times, then once per `refill` seconds. An entry untouched
    for `burst * refill` seconds is full again, which is how the bounded table forgets it.
    """

    def __init__(
        self,
        burst: int = FAILURE_BURST,
        refill: float = FAILURE_REFILL,
        max_clients: int = TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill = refill
        self._clock = clock
        # client -> tokens left when last updated (the cache keeps the time of that update).
        self._buckets: BoundedCache[str, float] = BoundedCache(
            max_clients, ttl=burst * refill, clock=clock
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, client: str) -> float:
        tokens = self._buckets.get(client)
        if tokens is None:
            return float(self.burst)
        age = self._buckets.age(client) or 0.0
        return min(float(self.burst), tokens + age / self.refill)

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may now."""
        tokens = self._tokens(client)
        if tokens >= 1.0:
            return None
        return (1.0 - tokens) * self.refill

    def failed(self, client: str) -> None:
        self._buckets.put(client, max(0.0, self._tokens(client) - 1.0))


def client_key(client: tuple[str, int] | list[object] | None) -> str:
    """The address failures are counted by: the host, or its /64 for IPv6 (one host may own
    a whole /64, and would otherwise get a fresh budget per address)."""
    if not client:
        return ""
    host = str(client[0])
    if ":" in host:
        try:
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return host


class Authenticator:
    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._key = secrets.token_bytes(32)
        self._verified: BoundedCache[bytes, bool] = BoundedCache(
            SUCCESS_ENTRIES, SUCCESS_TTL, clock
        )
        self._refused: BoundedCache[bytes, bool] = BoundedCache(FAILURE_ENTRIES, FAILURE_TTL, clock)
        self._checking: dict[bytes, trio.Event] = {}
        self.failures = FailureLimiter(clock=clock)
        self.limiter = trio.CapacityLimiter(CHECK_THREADS)
        self.cost = _common_cost(config.users.values())
        self._dummy: bytes | None = None
        # Metrics hook: "checked" (bcrypt ran), "cached" (answered from memory), "limited"
        # (429: this address failed too often), "busy" (429: too many checks waiting),
        # "token" (a bearer token was accepted).
        self.on_event: Callable[[str], None] = lambda kind: None
        self.tokens: TokenIssuer | None = None  # set when the server knows its token key

    def cache_sizes(self) -> dict[str, int]:
        return {
            "auth_verified": len(self._verified),
            "auth_refused": len(self._refused),
            "auth_clients": len(self.failures),
        }

    def _challenge(
        self, message: str, realm_url: str | None = None, scope: str | None = None
    ) -> errors.Unauthorized:
        """401 with the challenge clients answer: Basic, or with [auth] token_auth the token
        flow's Bearer (realm = this server's token endpoint, as the client reached it)."""
        error = errors.Unauthorized(message)
        if self.config.token_auth and realm_url and self.tokens is not None:
            challenge = f'Bearer realm="{realm_url}",service="{SERVICE}"'
            if scope:
                challenge += f',scope="{scope}"'
            error.headers["WWW-Authenticate"] = challenge
        else:
            error.headers["WWW-Authenticate"] = f'Basic realm="{self.config.realm}"'
        return error

    def _no_users(self, write: bool, realm_url: str | None = None) -> errors.Unauthorized:
        what, key = ("pushes", "anonymous_push") if write else ("pulls", "anonymous_pull")
        return self._challenge(
            f"{what} need credentials and no users are configured; add [auth.users] or "
            f"[auth] htpasswd_file, or set [auth] {key} = true",
            realm_url,
        )

    async def check(
        self,
        method: str,
        authorization: str | None,
        *,
        base: bool = False,
        client: tuple[str, int] | list[object] | None = None,
        repo: str | None = None,
        realm_url: str | None = None,
        bound: dict[str, Any] | None = None,
    ) -> str | None:
        """The authenticated user (None for anonymous access that is allowed), or raise 401
        (429 when `client`, the ASGI scope's client address, has failed too often).

        `base` is GET /v2/: clients (skopeo, docker) learn from its challenge whether to send
        credentials at all, so it challenges anonymous callers whenever some operation needs
        credentials, even though anonymous pulls of content may be allowed. `repo` and the
        method say what a bearer token must grant; `realm_url` is the token endpoint as the
        client reached the server (for the Bearer challenge). `bound` receives, under
        "digests", the manifests a bearer token was made for (server/tokens.py), if any.
        """
        write = method in WRITE_METHODS
        action = "push" if write else "pull"
        scope = f"repository:{repo}:{'pull,push' if write else 'pull'}" if repo else None
        anonymous_ok = self.config.anonymous_push if write else self.config.anonymous_pull
        if base:
            anonymous_ok = self.config.anonymous_pull and (
                self.config.anonymous_push or not self.config.users
            )
        if authorization is not None and _is_empty_basic(authorization):
            # containers/image sends "Basic Og==" (empty user:password) when it has no
            # credentials for a Basic challenge: that is an anonymous request.
            authorization = None
        if authorization is not None and authorization.strip()[:7].lower() == "bearer ":
            if self.tokens is None:
                raise self._challenge("bearer tokens are not accepted here", realm_url, scope)
            try:
                grant = self.tokens.verify(authorization.strip()[7:].strip())
            except ValueError as exc:
                raise self._challenge(str(exc), realm_url, scope) from None
            if not base and not grant.allows(repo, action):
                error = self._challenge(
                    f"the token does not grant {action} on {repo}", realm_url, scope
                )
                if "Bearer" in error.headers["WWW-Authenticate"]:
                    error.headers["WWW-Authenticate"] += ',error="insufficient_scope"'
                raise error
            self.on_event("token")
            if bound is not None and grant.digests:
                bound["digests"] = grant.digests
            return grant.subject or None
        if authorization is None:
            if anonymous_ok:
                return None
            if not self.config.users:
                raise self._no_users(write or base, realm_url)
            what = "push and delete" if write or base else "pull"
            raise self._challenge(f"authentication required to {what}", realm_url, scope)
        if not self.config.users:
            if anonymous_ok:
                return None  # credentials nobody asked for (a client that always sends some)
            raise self._no_users(write or base, realm_url)
        return await self.login(authorization, client, realm_url, scope)

    async def login(
        self,
        authorization: str,
        client: tuple[str, int] | list[object] | None,
        realm_url: str | None = None,
        scope: str | None = None,
    ) -> str:
        """The user whose Basic credentials these are, or 401 (429: this address failed too
        often, or too many checks are waiting). The token endpoint's check too."""
        if not self.config.users:
            raise errors.Unauthorized("no users are configured; there is nothing to log in as")
        address = client_key(client)
        wait = self.failures.retry_after(address)
        if wait is not None:
            self.on_event("limited")
            raise _too_many("too many failed logins from this address; retry later", wait)
        user, password = self._parse(authorization)
        if not await self._verify(user, password):
            self.failures.failed(address)
            raise self._challenge("invalid username or password", realm_url, scope)
        return user

    def _parse(self, header: str) -> tuple[str, str]:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic" or not token.strip():
            raise self._challenge("Authorization header must use the Basic scheme")
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise self._challenge(
                "Authorization header is not valid base64 user:password"
            ) from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise self._challenge("Authorization header must encode user:password")
        return user, password

    async def _verify(self, user: str, password: str) -> bool:
        hashed = self.config.users.get(user)
        # An unknown user gets a key of its own and the dummy hash's cost (see the docstring).
        key = hmac.new(
            self._key, f"{user}\0{password}\0{hashed or ''}".encode(), hashlib.sha256
        ).digest()
        while True:
            if key in self._verified:
                self.on_event("cached")
                return True
            if key in self._refused:
                self.on_event("cached")
                return False
            pending = self._checking.get(key)
            if pending is None:
                break
            await pending.wait()  # the same credential is being checked: share its answer
        if self.limiter.statistics().tasks_waiting >= MAX_WAITING:
            self.on_event("busy")
            raise _too_many("too many password checks in progress; retry later", 1.0)
        done = self._checking[key] = trio.Event()
        try:
            ok = await trio.to_thread.run_sync(
                self._checkpw, password.encode(), hashed, limiter=self.limiter
            )
            self.on_event("checked")
            (self._verified if ok else self._refused).put(key, True)
            return ok
        finally:
            del self._checking[key]
            done.set()

    def _checkpw(self, password: bytes, hashed: str | None) -> bool:
        """In a check thread: bcrypt against the user's hash, or the dummy for no user."""
        if hashed is None:
            if self._dummy is None:
                # Made once: at the users' cost, making it takes as long as one check.
                self._dummy = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=self.cost))
            _checkpw(password, self._dummy)
            return False
        return _checkpw(password, hashed.encode())


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt 5 refuses passwords over 72 bytes: not a match either way
        return False


def _common_cost(hashes: Iterable[str]) -> int:
    """The cost most users' hashes have (the higher on a tie); 12 when there are none."""
    costs: Counter[int] = Counter()
    for hashed in hashes:
        parts = hashed.split("$")
        if len(parts) > 2 and parts[2].isdigit():
            costs[int(parts[2])] += 1
    if not costs:
        return 12
    return max(costs, key=lambda cost: (costs[cost], cost))


def _is_empty_basic(header: str) -> bool:
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "basic" and token.strip() in ("Og==", "Og")
