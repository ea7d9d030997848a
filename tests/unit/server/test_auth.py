"""The Authenticator's bounds: check threads, waiting checks, failures per address, caches."""

import base64

import bcrypt
import pytest
import trio

from edgecache.config import AuthConfig
from edgecache.oci import errors
from edgecache.server import auth
from edgecache.server.auth import Authenticator, FailureLimiter, client_key

HASH = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=8)).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def config(**users: str) -> AuthConfig:
    return AuthConfig(anonymous_pull=True, anonymous_push=False, realm="r", users=users)


def test_failure_limiter_allows_a_burst_then_one_per_refill() -> None:
    clock = Clock()
    limiter = FailureLimiter(burst=3, refill=10.0, max_clients=100, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(10.0)
    assert limiter.retry_after("b") is None
    clock.now = 10.0
    assert limiter.retry_after("a") is None
    limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(10.0)
    for n in range(1000):
        limiter.failed(f"client {n}")
    assert len(limiter) == 100


def test_ipv6_clients_are_counted_by_their_64() -> None:
    assert client_key(("2001:db8::1", 5)) == client_key(("2001:db8::ffff:2", 6))
    assert client_key(("2001:db8:0:1::1", 5)) != client_key(("2001:db8::1", 5))
    assert client_key(("10.0.0.1", 5)) == "10.0.0.1"
    assert client_key(None) == ""


async def test_outcomes_are_cached_and_an_unknown_user_costs_a_check() -> None:
    events: list[str] = []
    authenticator = Authenticator(config(alice=HASH))
    authenticator.on_event = events.append
    assert await authenticator.check("POST", basic("alice", "right")) == "alice"
    assert await authenticator.check("POST", basic("alice", "right")) == "alice"
    for _ in range(3):
        with pytest.raises(errors.Unauthorized):
            await authenticator.check("POST", basic("alice", "wrong"))
    with pytest.raises(errors.Unauthorized):
        await authenticator.check("POST", basic("nobody", "right"))
    assert events == ["checked", "cached", "checked", "cached", "cached", "checked"]
    assert authenticator.cost == 8


async def test_concurrent_checks_of_one_credential_share_one_bcrypt_run() -> None:
    events: list[str] = []
    authenticator = Authenticator(config(alice=HASH))
    authenticator.on_event = events.append

    async def attempt(n: int) -> None:
        await authenticator.check("POST", basic("alice", "right"), client=("10.0.0.1", n))

    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(attempt, n)
    assert events.count("checked") == 1


async def test_checks_past_the_waiting_bound_get_429_and_never_use_the_default_limiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "MAX_WAITING", 2)
    authenticator = Authenticator(config(alice=HASH))
    outcomes: list[str] = []

    async def attempt(n: int) -> None:
        try:
            await authenticator.check("POST", basic("alice", f"wrong {n}"), client=(f"a{n}", 1))
        except errors.TooManyRequests as exc:
            assert int(exc.headers["Retry-After"]) >= 1
            outcomes.append("429")
        except errors.Unauthorized:
            outcomes.append("401")

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(attempt, n)
        await trio.testing.wait_all_tasks_blocked()
        # The checks hold their own limiter; the default one (file I/O) is untouched.
        assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
        assert authenticator.limiter.borrowed_tokens == auth.CHECK_THREADS
    assert outcomes.count("401") == auth.CHECK_THREADS + 2
    assert outcomes.count("429") == 8 - auth.CHECK_THREADS - 2


async def test_a_refusal_for_want_of_users_says_so() -> None:
    authenticator = Authenticator(config())
    with pytest.raises(errors.Unauthorized, match="no users are configured"):
        await authenticator.check("PUT", None)
    with pytest.raises(errors.Unauthorized, match="anonymous_push"):
        await authenticator.check("PUT", basic("alice", "pw"))
    assert await authenticator.check("GET", basic("alice", "pw")) is None
