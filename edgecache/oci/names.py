"""Repository names, tags and manifest references per the distribution spec grammar."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgecache.oci.digest import Digest
from edgecache.oci.errors import DigestInvalid, ManifestUnknown, NameInvalid, TagInvalid
from edgecache.oci.integers import shorten

MAX_NAME_LENGTH = 255
MAX_TAG_LENGTH = 128

# One path component of a repository name: alphanumeric runs joined by '.', '_', '__' or '-'+.
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# An upstream registry's host[:port] as containerd sends it in ?ns=: a DNS-ish name (as lenient
# as the config's upstream names, which it must match) or a bracketed IPv6 literal.
_NS_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
)
# RFC 1035's 253 characters of name, plus ":65535".
MAX_NAMESPACE_LENGTH = 253 + 6


def _component_problem(component: str) -> str:
    """Why a component that failed the grammar is wrong, in words a user can act on."""
    if not component:
        return "empty component (leading, trailing or doubled '/')"
    bad = next((c for c in component if c not in _NAME_CHARS), None)
    if bad is not None:
        if "A" <= bad <= "Z":
            return f"uppercase letter {bad!r} (names are lowercase)"
        return f"character {bad!r} not allowed (only a-z, 0-9, '.', '_', '-')"
    if component[0] in "._-" or component[-1] in "._-":
        return "must start and end with a lowercase letter or digit"
    return "separators must be '.', '_', '__' or a run of '-' between alphanumerics"


def validate_repository(name: str) -> str:
    """Return ``name`` unchanged if it is a valid repository name, else raise NameInvalid."""
    if not name:
        raise NameInvalid("repository name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(
            f"repository name is {len(name)} characters long, the limit is {MAX_NAME_LENGTH}"
        )
    for index, component in enumerate(name.split("/")):
        if not _COMPONENT_RE.fullmatch(component):
            raise NameInvalid(
                f"invalid repository name {name!r}: component {index + 1} {component!r}: "
                f"{_component_problem(component)}"
            )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` unchanged if it is a valid tag, else raise TagInvalid."""
    if not tag:
        raise TagInvalid("tag is empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise TagInvalid(f"tag is {len(tag)} characters long, the limit is {MAX_TAG_LENGTH}")
    if not _TAG_RE.fullmatch(tag):
        if tag[0] in ".-":
            raise TagInvalid(f"invalid tag {tag!r}: must not start with {tag[0]!r}")
        bad = next(c for c in tag if not (c.isascii() and (c.isalnum() or c in "._-")))
        raise TagInvalid(
            f"invalid tag {tag!r}: character {bad!r} not allowed "
            "(only a-z, A-Z, 0-9, '.', '_', '-')"
        )
    return tag


def validate_namespace(ns: str) -> str:
    """Return ``ns`` (the ``?ns=`` query parameter) if it is a registry ``host[:port]``.

    The value is echoed in the OCI-Namespace response header, so it must be checked before
    anything else sees it: a CR, LF or NUL there would split or break the response.
    """
    if len(ns) > MAX_NAMESPACE_LENGTH:
        raise NameInvalid(
            f"ns is {len(ns)} characters long, a registry host[:port] has at most "
            f"{MAX_NAMESPACE_LENGTH}",
            detail={"ns": shorten(ns)},
        )
    match = _NS_RE.fullmatch(ns)
    if match is None or (match.group(1) is not None and not 0 < int(match.group(1)) <= 65535):
        raise NameInvalid(
            f"ns={shorten(ns)!r} is not a registry host[:port] (such as docker.io or "
            "registry.example:5000)",
            detail={"ns": shorten(ns)},
        )
    return ns


@dataclass(frozen=True, slots=True)
class Reference:
    """The ``<reference>`` of a manifest URL: exactly one of a tag or a digest."""

    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if (self.tag is None) == (self.digest is None):
            raise ValueError("a Reference holds exactly one of tag or digest")

    @classmethod
    def parse(cls, s: str) -> Reference:
        # Tags cannot contain ':', so a colon unambiguously marks a digest.
        if ":" in s:
            return cls(digest=Digest.parse(s))
        return cls(tag=validate_tag(s))

    @property
    def is_digest(self) -> bool:
        return self.digest is not None

    def __str__(self) -> str:
        return str(self.digest) if self.digest is not None else str(self.tag)


def lookup_reference(s: str) -> Reference:
    """The reference of a manifest GET, HEAD or DELETE.

    A reference that cannot be valid cannot name a stored manifest either, so looking it up
    answers MANIFEST_UNKNOWN (404) as the distribution spec's conformance suite expects; only
    a PUT, which would create it, is told TAG_INVALID or DIGEST_INVALID.
    """
    try:
        return Reference.parse(s)
    except (TagInvalid, DigestInvalid) as exc:
        raise ManifestUnknown(
            f"manifest {shorten(s)!r} is unknown: no manifest can have that reference "
            f"({exc.message})"
        ) from None
