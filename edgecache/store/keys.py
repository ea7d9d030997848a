"""LMDB keys of the index: how they are built, and the size limit every write key is held to.

LMDB refuses keys over 511 bytes (a compile-time constant, env.max_key_size()), and a put
fails inside its transaction, after the content's file was renamed into place. So every key
a write needs is built, and checked, before anything touches the disk: an over-long one is a
400 NAME_INVALID (KeyTooLong), never a 500. The longest keys are a repository's (255
characters from a client; a proxied repository is stored as "<upstream name>/<repo>") plus a
sha512 digest (135 characters), and a referrer's, which is why its last part is hashed.
"""

from __future__ import annotations

import hashlib

from ..oci import errors

SEP = "\0"
MAX_KEY = 511
# Keys are checked for the longest digest a request may still name.
LONGEST_DIGEST = "sha512:" + "0" * 128


class KeyTooLong(errors.NameInvalid):
    def __init__(self, repo: str, size: int) -> None:
        super().__init__(
            f"repository name is too long for the store: its {len(repo.encode())} bytes make "
            f"an index key of {size} bytes, the limit is {MAX_KEY}",
            detail={"key_bytes": size, "limit": MAX_KEY},
        )


def key(*parts: str) -> bytes:
    """A key to read with: an over-long one simply finds nothing."""
    return SEP.join(parts).encode()


def write_key(*parts: str) -> bytes:
    """A key to write (parts[0] is the repository); KeyTooLong when LMDB could not take it."""
    built = key(*parts)
    if len(built) > MAX_KEY:
        raise KeyTooLong(parts[0], len(built))
    return built


def referrer_key(repo: str, subject: str, digest: str) -> bytes:
    """<repo>\\0<subject>\\0<sha256 hex of the referrer's digest>: a fixed-length last part
    keeps a 255-character repository with sha512 digests under the limit (527 bytes with the
    digest itself). The full digest is in the value, the referrer's descriptor."""
    return write_key(repo, subject, hashlib.sha256(digest.encode()).hexdigest())


def referrer_keys(repo: str, subject: str, digest: str) -> tuple[bytes, ...]:
    """Every key a referrer may be stored under: today's, and <repo>\\0<subject>\\0<digest>
    that data directories written before the key was shortened still hold."""
    legacy = key(repo, subject, digest)
    try:
        return referrer_key(repo, subject, digest), legacy
    except KeyTooLong:
        return (legacy,)


def check_keys(
    repo: str, *, digest: str = LONGEST_DIGEST, tag: str | None = None, subject: str | None = None
) -> None:
    """Raise KeyTooLong when storing `digest` (a tag, a referrer of subject) in repo would
    need an over-long key. The links key (repo, digest) also covers access times."""
    write_key(repo, digest)
    if tag is not None:
        write_key(repo, tag)
    if subject is not None:
        referrer_key(repo, subject, digest)
