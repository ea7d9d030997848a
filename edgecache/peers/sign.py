"""Peer request authentication: an HMAC over the method, the request target, the sender and a
timestamp, keyed with the site's shared secret.

Chosen over mTLS because it needs nothing but one secret file on every node (a Kubernetes
Secret), works over plain HTTP and HTTPS alike, and survives a TLS-terminating load balancer;
mTLS would need a CA, per-node certificates and their rotation. The header:

    edgecache-peer: v1 <sender URL> <unix seconds> <hex HMAC-SHA256>

over "v1\n<METHOD>\n<target>\n<sender URL>\n<unix seconds>", the target being the path and
query as sent. A signature more than MAX_SKEW seconds from the receiver's clock is refused
(stale), as is a sender that is not a member. Peer requests only read (GET and HEAD), so a
signature replayed within the skew window reads what the peer could read anyway; it can never
write or delete. The signature and the secret are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Collection

HEADER = "edgecache-peer"
VERSION = "v1"
# Seconds a signature stays valid either way of the receiver's clock (nodes run NTP; Kraken's
# and Dragonfly's tokens allow more).
MAX_SKEW = 30.0


class BadSignature(Exception):
    """Why a peer request was refused (no secret in the message)."""


def _mac(secret: bytes, method: str, target: str, sender: str, stamp: str) -> str:
    message = "\n".join((VERSION, method.upper(), target, sender, stamp)).encode("latin-1")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    secret: bytes, sender: str, method: str, target: str, now: Callable[[], float] = time.time
) -> str:
    """The HEADER value for a request by `sender` (its member URL)."""
    stamp = str(int(now()))
    return f"{VERSION} {sender} {stamp} {_mac(secret, method, target, sender, stamp)}"


def verify(
    secret: bytes,
    members: Collection[str] | None,
    value: str,
    method: str,
    target: str,
    now: Callable[[], float] = time.time,
) -> str:
    """The sender of a correctly signed request; BadSignature says why not. `members` None
    (members found by DNS, which every process cannot follow): any sender holding the secret."""
    parts = value.split(" ")
    if len(parts) != 4 or parts[0] != VERSION:
        raise BadSignature(f"malformed {HEADER} header (expected '{VERSION} URL SECONDS HMAC')")
    _, sender, stamp, mac = parts
    if members is not None and sender not in members:
        raise BadSignature(f"{sender[:200]!r} is not a member of this site")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise BadSignature("the timestamp is not a number of seconds")
    skew = now() - int(stamp)
    if abs(skew) > MAX_SKEW:
        raise BadSignature(
            f"stale signature ({skew:+.0f} s from this node's clock; at most {MAX_SKEW:g} s)"
        )
    if not hmac.compare_digest(
        mac.encode("latin-1"), _mac(secret, method, target, sender, stamp).encode()
    ):
        raise BadSignature("the signature does not match (another secret, or a changed request)")
    return sender
