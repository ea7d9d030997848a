"""What can go wrong talking to an upstream registry, as the cache needs to tell it apart.

The cache decides per kind: `UpstreamUnavailable` means "serve stale if cached" (and feeds the
circuit breaker), `UpstreamNotFound` means the upstream answered and the content is gone,
`UpstreamAuthError` means our credentials are refused. Messages name the request and the
reason, never a credential or a token: they end up in client-facing OCI error bodies and logs.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every upstream failure; `.upstream` is the upstream's configured name."""

    def __init__(self, upstream: str, message: str) -> None:
        # Both in args so copy/pickle rebuild the exception (waiters get a copy of one failure).
        super().__init__(upstream, message)
        self.upstream = upstream
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.upstream!r}, {self.message!r})"


class UpstreamUnavailable(UpstreamError):
    """Unreachable, timed out, 5xx/429 after retries, or the circuit is open."""


class UpstreamAuthError(UpstreamError):
    """401/403 even with fresh credentials (or the token server refused them)."""


class UpstreamNotFound(UpstreamError):
    """404: the upstream answered and the content does not exist there."""


class UpstreamCorrupt(UpstreamError):
    """The bytes do not match the digest they were asked for (or announced with)."""


class UpstreamTooLarge(UpstreamError):
    """A manifest or index larger than the limit: refused before it is read into memory."""


class UpstreamProtocolError(UpstreamError):
    """An answer no registry should give (unexpected status, bad Content-Range, bad JSON)."""
