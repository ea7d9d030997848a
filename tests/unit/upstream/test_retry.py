from __future__ import annotations

import pytest

from edgecache.upstream.retry import RetryPolicy, parse_retry_after, retryable_status

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 599])
def test_retryable(status: int) -> None:
    assert retryable_status(status)


@pytest.mark.parametrize("status", [200, 206, 301, 400, 401, 403, 404, 416, 501, 505])
def test_not_retryable(status: int) -> None:
    assert not retryable_status(status)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),  # IMF-fixdate, 30 s from NOW
        ("Tuesday, 14-Nov-23 22:13:30 GMT", 10.0),  # obsolete RFC 850 form
        ("Tue Nov 14 22:13:25 2023", None),  # asctime has no zone: ambiguous, ignored
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_full_jitter_bounds() -> None:
    policy = RetryPolicy(retries=5, base=0.2, cap=5.0)
    assert policy.backoff(0, lambda: 0.0) == 0.0
    assert policy.backoff(0, lambda: 0.999) == pytest.approx(0.1998)
    assert policy.backoff(3, lambda: 0.5) == pytest.approx(0.8)  # 0.5 * 0.2 * 2**3
    assert policy.backoff(10, lambda: 0.999) == pytest.approx(4.995)  # capped at 5 s
    for retry in range(12):
        for r in (0.0, 0.3, 0.999999):
            assert 0.0 <= policy.backoff(retry, lambda r=r: r) < 5.0  # type: ignore[misc]


def test_retry_after_wins_within_cap() -> None:
    policy = RetryPolicy(max_retry_after=30.0)
    assert policy.delay(0, 2.0, lambda: 0.9) == 2.0
    assert policy.delay(0, 3600.0) == 30.0
    assert policy.delay(1, None, lambda: 0.5) == pytest.approx(0.2)
