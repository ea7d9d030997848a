"""The one wording of "the upstream failed and this content is not cached"."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..oci import errors
from ..upstream import UpstreamAuthError, UpstreamError, UpstreamNotFound, UpstreamUnavailable


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


@contextmanager
def upstream_failures(
    upstream: str, what: str, repo: str, unknown: type[errors.OCIError]
) -> Iterator[None]:
    """Map an upstream call's failure for uncached content: 404 -> `unknown`, else 503."""
    try:
        yield
    except UpstreamNotFound:
        raise unknown(f"{what} is not in {repo} at {upstream}") from None
    except UpstreamError as exc:
        raise not_cached(upstream, what, exc) from None
