"""Which members own a digest: rendezvous (highest random weight) hashing.

Every member scores every digest with a hash of (member, digest); the highest score owns it,
the next ones follow in order. All nodes compute the same order from the same member list,
with no coordination, and when a member joins or leaves only the digests it wins or held
move (about 1/N of them), unlike a modulo hash that reshuffles almost everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(member: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{member}\n{key}".encode()).digest()[:8], "big")


def order(members: Iterable[str], key: str) -> list[str]:
    """`members` from the owner of `key` down (ties, never seen, broken by name)."""
    return sorted(members, key=lambda m: (weight(m, key), m), reverse=True)


def above(members: Iterable[str], me: str, key: str) -> list[str]:
    """The members ranked above `me` for `key`, owner first. A node asks only these: every
    node ranks by the same weights, so requests flow one way and can never loop."""
    mine = (weight(me, key), me)
    return [m for m in order(members, key) if (weight(m, key), m) > mine]
