"""When and how long to wait before retrying an upstream request (pure policy).

Connection errors, 5xx and 429 are worth another try; 404 and 401/403 are answers, not
failures, and retrying them only adds load (the single 401 token refresh lives in the
session). Backoff is exponential with full jitter (AWS architecture blog, "Exponential Backoff
and Jitter"): after an outage, many edge caches retrying in lock-step would hit a recovering
upstream all at once. A server's Retry-After wins over our own guess, within a cap so a
hostile or confused value cannot park a pull for an hour.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# 501 (not implemented) and 505 (HTTP version) will not change on a retry.
_PERMANENT_5XX = frozenset({501, 505})


def retryable_status(status: int) -> bool:
    return status == 429 or (500 <= status <= 599 and status not in _PERMANENT_5XX)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date).

    `now` is the current Unix time, for the date form. Unparseable values give None (fall back
    to our own backoff); dates in the past give 0.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means it lacked a zone
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3  # retries after the first attempt
    base: float = 0.2
    cap: float = 5.0
    max_retry_after: float = 30.0

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)) for the retry-th retry."""
        return rand() * min(self.cap, self.base * (2**retry))

    def delay(
        self,
        retry: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return self.backoff(retry, rand)
