"""The one wording of "the upstream failed and this content is not cached"."""

from __future__ import annotations

from ..oci import errors
from ..upstream import UpstreamAuthError, UpstreamError, UpstreamUnavailable


def not_cached(upstream: str, what: str, exc: UpstreamError) -> errors.Unavailable:
    """503 UNAVAILABLE saying what happened upstream (never a credential: see upstream/)."""
    if isinstance(exc, UpstreamAuthError):
        state = "refused edgecache's credentials"
    elif isinstance(exc, UpstreamUnavailable):
        state = "is unreachable"
    else:
        state = "failed"
    return errors.Unavailable(
        f"upstream {upstream} {state} and {what} is not cached: {exc}",
        detail={"upstream": upstream},
    )
