"""Content digests per the OCI image-spec digest grammar.

Only the registered algorithms a registry must verify are accepted (sha256, sha512), with the
exact encoded length and lowercase hex: the store names files by digest, so two spellings of the
same digest must never both be valid.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edgecache.oci.errors import DigestInvalid

if TYPE_CHECKING:
    from hashlib import _Hash


class _NamedHasher(Protocol):
    @property
    def name(self) -> str: ...

    def hexdigest(self) -> str: ...


# Encoded length in hex characters for each supported algorithm.
HEX_LENGTHS: dict[str, int] = {"sha256": 64, "sha512": 128}

# The image-spec's algorithm grammar; used only to tell "malformed" from "unsupported" apart.
_ALGORITHM_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_LOWER_HEX_RE = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def encoded(self) -> str:
        """The image-spec's name for the part after the colon."""
        return self.hex

    @classmethod
    def parse(cls, s: str) -> Digest:
        """Parse ``algorithm:hex``, raising DigestInvalid that says what was wrong."""
        if not isinstance(s, str):
            raise DigestInvalid(f"digest must be a string, got {type(s).__name__}")
        algorithm, sep, encoded = s.partition(":")
        if not sep:
            raise DigestInvalid(f"invalid digest {s!r}: missing ':' between algorithm and hex")
        if not algorithm:
            raise DigestInvalid(f"invalid digest {s!r}: empty algorithm before ':'")
        if not _ALGORITHM_RE.fullmatch(algorithm):
            raise DigestInvalid(f"invalid digest {s!r}: malformed algorithm {algorithm!r}")
        expected = HEX_LENGTHS.get(algorithm)
        if expected is None:
            supported = ", ".join(sorted(HEX_LENGTHS))
            raise DigestInvalid(
                f"invalid digest {s!r}: unsupported algorithm {algorithm!r} "
                f"(supported: {supported})"
            )
        if not _LOWER_HEX_RE.fullmatch(encoded):
            bad = next(c for c in encoded if c not in "0123456789abcdef")
            why = "uppercase hex" if bad in "ABCDEF" else "non-hex character"
            raise DigestInvalid(
                f"invalid digest {s!r}: {why} {bad!r} in encoded part (lowercase hex [0-9a-f] only)"
            )
        if len(encoded) != expected:
            raise DigestInvalid(
                f"invalid digest {s!r}: {algorithm} needs {expected} hex characters, "
                f"got {len(encoded)}"
            )
        return cls(algorithm, encoded)

    def hasher(self) -> _Hash:
        """A new hash object for this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @classmethod
    def of_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        if algorithm not in HEX_LENGTHS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}")
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @staticmethod
    def from_hasher(h: _NamedHasher) -> Digest:
        """The digest of everything fed to ``h`` so far."""
        if h.name not in HEX_LENGTHS:
            raise DigestInvalid(f"unsupported digest algorithm {h.name!r}")
        return Digest(h.name, h.hexdigest())

    def verify(self, data: bytes) -> bool:
        """Whether ``data`` hashes to this digest."""
        return hashlib.new(self.algorithm, data).hexdigest() == self.hex
