"""Client for upstream registries: auth, retries, circuit breaker, resumable blob streams.

The pure parts (challenge parsing, retry policy, breaker, header parsing) are separate modules
tested without sockets; `session.py` and `client.py` do the HTTP.
"""

from edgecache.upstream.breaker import BreakerState, CircuitBreaker
from edgecache.upstream.client import (
    EMPTY_REFERRERS,
    MANIFEST_ACCEPT,
    BlobStream,
    RemoteInfo,
    RemoteManifest,
    Upstream,
    upstream_repo,
)
from edgecache.upstream.errors import (
    UpstreamAuthError,
    UpstreamCorrupt,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from edgecache.upstream.retry import RetryPolicy

__all__ = [
    "EMPTY_REFERRERS",
    "MANIFEST_ACCEPT",
    "BlobStream",
    "BreakerState",
    "CircuitBreaker",
    "RemoteInfo",
    "RemoteManifest",
    "RetryPolicy",
    "Upstream",
    "UpstreamAuthError",
    "UpstreamCorrupt",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamProtocolError",
    "UpstreamTooLarge",
    "UpstreamUnavailable",
    "upstream_repo",
]
