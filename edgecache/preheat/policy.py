"""Which images a preheat policy selects, decided as Harbor's preheat policies decide it.

A policy names repositories and tags with doublestar patterns (Harbor filters both with
github.com/bmatcuk/doublestar/v4 ``Match``), may require a signature, and may narrow an image
index to some platforms. Everything here is pure: callers pass names, tag lists, referrer
descriptors and parsed index JSON, and get decisions back.

``glob_match`` gives doublestar's answers without its backtracking. A pattern is parsed once into
tokens keyed by offset, plus a jump table that sends the end of a ``{...}`` alternative to the
text after the group. Matching then keeps the *set* of live pattern positions while reading the
value one character at a time (Thompson's NFA simulation), so it costs at most
O(len(pattern) * len(value)) whatever the pattern: "*a*a*a*a*b" against a long run of "a", or
"{a,a}{a,a}...", cannot blow up. Both lengths are capped at 1000. The rules are doublestar's as
its matcher applies them (its README only sketches them):

- '*' matches a run of non-'/' characters, '?' one non-'/' character.
- '**' is a globstar only where a segment starts (start of the pattern, after a '/', or at the
  start of a ``{...}`` alternative). Followed by '/' it matches zero or more whole segments
  ("a/**/b" matches "a/b" and "a/x/y/b"). At the very end it matches all that is left, '/'
  included. Anywhere else ("a**", "**.txt", "**{/x,y}") it is a plain '*'.
- When the value runs out, what is left of the pattern must be "", "*", "**", "/**", "**/" or
  "/**/", or a leading ``{...}`` with such an alternative. So "a/**" matches "a" (the directory
  itself) and "a/", and "library/*/**" matches "library/nginx"; "a/*" and "a/**/*" do not
  match "a".
- A class ``[...]`` matches one character, '/' included (doublestar never excludes it).
  ``[!...]`` and ``[^...]`` negate. '-' is literal when first, last or right after a range. A
  reversed range "[c-a]" matches only its first character.
- '\\' makes the next character literal, inside classes too. ',' outside braces is literal.
  Alternatives may nest and may hold '/' and wildcards.

Where this differs from doublestar, on purpose:

- doublestar keeps one backtrack point for '*' and one for '**/', dropping the earlier when it
  reaches a later one, so it misses some matches that its own rules allow: "**/x/**/" against
  "x/x", "*[!a]*" against "ab/c" (the class taking the '/'). Here every way of matching counts,
  so both match. Differential tests against a transliteration of doublestar found differences
  only in such patterns (a '**' that is not a whole segment, a trailing '/', a class that must
  take a '/'), and none among patterns whose '**' are whole segments.
- An invalid pattern always raises BadPattern. doublestar reports ErrBadPattern only if
  matching gets to the broken part, and, for a '{' or '}' inside a class, sometimes for a
  pattern its own ValidatePattern accepts; here such a class is a class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_PATTERN_LENGTH = 1000
MAX_VALUE_LENGTH = 1000


class BadPattern(ValueError):
    """A repository or tag pattern that doublestar would reject (ErrBadPattern)."""


class BadPlatform(ValueError):
    """A platform filter that is not ``os/arch[/variant]``."""


# --- doublestar patterns -------------------------------------------------------------------------

# Token kinds, then the extra kinds a '*' can turn into once its neighbours are known.
_LIT, _ANY, _CLASS, _STAR, _OPEN = range(5)
_GLOBSTAR = 5  # '**/' where a segment starts: zero or more whole segments
_ALL = 6  # '**' ending the pattern where a segment starts: whatever is left
# What may be left of a pattern when the value has run out (doublestar's isZeroLengthPattern).
_ZERO_LENGTH_RESTS = frozenset({"", "*", "**", "/**", "**/", "/**/"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: int
    end: int  # offset just past the token
    char: str = ""  # _LIT
    ranges: tuple[tuple[str, str], ...] = ()  # _CLASS, inclusive
    negate: bool = False  # _CLASS
    alts: tuple[int, ...] = ()  # _OPEN: offset of each alternative


def _bad(pattern: str, problem: str) -> BadPattern:
    shown = pattern if len(pattern) <= 60 else pattern[:57] + "..."
    return BadPattern(f"{shown!r}: {problem}")


def _parse_class(pattern: str, start: int) -> _Token:
    """The class opening at ``start``; ranges follow doublestar's scan, literals first."""
    n = len(pattern)
    i = start + 1
    negate = i < n and pattern[i] in "!^"
    if negate:
        i += 1
    if i >= n:
        raise _bad(pattern, "unclosed '['")
    if pattern[i] == "]":
        raise _bad(pattern, "empty character class '[]'")
    ranges: list[tuple[str, str]] = []
    last: str | None = None  # a character that a following '-' turns into a range start
    while i < n and pattern[i] != "]":
        ch = pattern[i]
        i += 1
        if last is not None and ch == "-" and i < n and pattern[i] != "]":
            if pattern[i] == "\\":
                i += 1
            if i >= n:
                break
            ranges.append((last, pattern[i]))
            i += 1
            last = None
            continue
        if ch == "\\":
            if i >= n:
                break
            ch = pattern[i]
            i += 1
        ranges.append((ch, ch))
        last = ch
    if i >= n:
        raise _bad(pattern, "unclosed '['")
    return _Token(_CLASS, i + 1, ranges=tuple(ranges), negate=negate)


class _Glob:
    """A parsed pattern: tokens by offset and where each alternative's end jumps to."""

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise _bad(pattern, f"longer than {MAX_PATTERN_LENGTH} characters")
        self.pattern = pattern
        n = self.n = len(pattern)
        tokens: dict[int, _Token] = {}
        jump: dict[int, int] = {}  # offset of a ',' or '}' ending an alternative -> after '}'
        stack: list[tuple[int, list[int], list[int]]] = []  # '{' offset, alt starts, ends
        i = 0
        while i < n:
            ch = pattern[i]
            if ch == "\\":
                if i + 1 >= n:
                    raise _bad(pattern, "'\\' at the end escapes nothing")
                tokens[i] = _Token(_LIT, i + 2, char=pattern[i + 1])
            elif ch == "[":
                tokens[i] = _parse_class(pattern, i)
            elif ch == "{":
                stack.append((i, [i + 1], []))
                i += 1
                continue
            elif ch == "," and stack:
                stack[-1][1].append(i + 1)
                stack[-1][2].append(i)
                i += 1
                continue
            elif ch == "}":
                if not stack:
                    raise _bad(pattern, "unmatched '}'")
                start, alts, ends = stack.pop()
                for end in (*ends, i):
                    jump[end] = i + 1
                tokens[start] = _Token(_OPEN, i + 1, alts=tuple(alts))
                i += 1
                continue
            elif ch == "*":
                tokens[i] = _Token(_STAR, i + 1)
            elif ch == "?":
                tokens[i] = _Token(_ANY, i + 1)
            else:
                tokens[i] = _Token(_LIT, i + 1, char=ch)
            i = tokens[i].end
        if stack:
            raise _bad(pattern, "unclosed '{'")
        self.tokens = tokens
        self.jump = jump
        # norm[p]: the next token p really reaches once finished alternatives are left.
        norm = list(range(n + 1))
        for p in range(n, -1, -1):
            if p in jump:
                norm[p] = norm[jump[p]]
        self.norm = norm
        self._closures: dict[int, tuple[frozenset[int], bool]] = {}
        self._zero: dict[int, bool] = {}
        self._moves: dict[int, tuple[int, str, int, int]] = {}
        self._lives: dict[frozenset[int], tuple[tuple[tuple[int, str, int, int], ...], bool]] = {}

    # States are ints: P(p, sos) = 2p + sos (at token p, sos: a segment starts here),
    # S(p) = base_s + p (inside a '*' that continues at p), G(p) = base_g + p (inside a
    # globstar's skipped segments, continuing at p with a segment start).
    @property
    def base_s(self) -> int:
        return 2 * (self.n + 1)

    @property
    def base_g(self) -> int:
        return 3 * (self.n + 1)

    def _star(self, p: int, sos: bool) -> tuple[int, int]:
        """What the '*' at p is: (_STAR, after), (_GLOBSTAR, continuation) or (_ALL, 0)."""
        pattern, norm, n = self.pattern, self.norm, self.n
        q = norm[p + 1]
        if q < n and pattern[q] == "*":  # a '**' pair, possibly across the end of a group
            r = norm[q + 1]
            if sos and r == n:
                return _ALL, 0
            if sos and r < n and pattern[r] == "/":
                return _GLOBSTAR, norm[r + 1]
            return _STAR, r
        return _STAR, q

    def closure(self, state: int) -> tuple[frozenset[int], bool]:
        """Consuming states reachable without reading a character, and whether _ALL is."""
        cached = self._closures.get(state)
        if cached is not None:
            return cached
        seen = {state}
        todo = [state]
        out: set[int] = set()
        reaches_all = False
        base_s = self.base_s
        while todo:
            s = todo.pop()
            succ: list[int] = []
            if s >= base_s:
                out.add(s)
                if s < self.base_g:
                    succ.append(2 * (s - base_s))  # the star may stop here
            else:
                p, sos = divmod(s, 2)
                tok = self.tokens.get(p) if p < self.n else None
                if tok is None:
                    pass  # end of pattern: nothing to consume
                elif tok.kind == _OPEN:
                    succ.extend(2 * self.norm[a] + 1 for a in tok.alts)
                elif tok.kind == _STAR:
                    kind, at = self._star(p, bool(sos))
                    if kind == _ALL:
                        reaches_all = True
                    elif kind == _GLOBSTAR:
                        succ += [self.base_g + at, 2 * at + 1]
                    else:
                        succ += [base_s + at, 2 * at]
                else:
                    out.add(s)
            for t in succ:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        result = (frozenset(out), reaches_all)
        self._closures[state] = result
        return result

    def move(self, state: int) -> tuple[int, str, int, int]:
        """How a consuming state reads a character: (kind, literal, target, extra).

        ``extra`` is the class token's offset for _CLASS, and for _GLOBSTAR the state itself,
        which stays live on every character (``target`` is where a '/' may also lead).
        """
        move = self._moves.get(state)
        if move is None:
            if state >= self.base_g:
                move = (_GLOBSTAR, "", 2 * (state - self.base_g) + 1, state)
            elif state >= self.base_s:
                move = (_STAR, "", state, 0)
            else:
                p = state // 2
                tok = self.tokens[p]
                move = (tok.kind, tok.char, 2 * self.norm[tok.end], p)
            self._moves[state] = move
        return move

    def zero_length_rest(self, p: int, after_star: bool = False) -> bool:
        """doublestar's end-of-value test on the pattern text left from p.

        ``after_star``: the value ran out inside a '*' that continues at p. doublestar keeps
        only the last star's backtrack point, so where p leads straight to another '*' (through
        leading alternatives or not) that later star is the one that ran out, not this one.
        """
        key = 2 * p + after_star
        cached = self._zero.get(key)
        if cached is not None:
            return cached
        todo, seen, result = [p], {p}, False
        while todo and not result:
            q = self.norm[todo.pop()]
            tok = self.tokens.get(q)
            if tok is not None and tok.kind == _OPEN:
                for a in tok.alts:
                    if a not in seen:
                        seen.add(a)
                        todo.append(a)
                continue
            if after_star and tok is not None and tok.kind == _STAR:
                continue
            rest: list[str] = []
            while q < self.n and len(rest) <= 4:
                if q in self.jump:
                    q = self.jump[q]
                    continue
                if self.pattern[q] not in "*/":
                    break
                rest.append(self.pattern[q])
                q += 1
            result = q >= self.n and "".join(rest) in _ZERO_LENGTH_RESTS
        self._zero[key] = result
        return result

    def accepts_at_end(self, state: int) -> bool:
        if state >= self.base_g:
            return False  # mid-way through a skipped segment
        if state >= self.base_s:
            return self.zero_length_rest(state - self.base_s, after_star=True)
        return self.zero_length_rest(state // 2)

    def _live(self, current: frozenset[int]) -> tuple[tuple[tuple[int, str, int, int], ...], bool]:
        """The moves of every state reachable from ``current`` without reading, and _ALL."""
        cached = self._lives.get(current)
        if cached is not None:
            return cached
        live: set[int] = set()
        reaches_all = False
        for s in current:
            states, all_here = self.closure(s)
            live |= states
            reaches_all |= all_here
        result = (tuple(self.move(s) for s in live), reaches_all)
        if len(self._lives) < 4096:  # bounded: sets seldom repeat on adversarial input
            self._lives[current] = result
        return result

    def match(self, value: str) -> bool:
        current = frozenset({2 * self.norm[0] + 1})
        tokens = self.tokens
        for c in value:
            moves, reaches_all = self._live(current)
            if reaches_all:
                return True
            nxt: set[int] = set()
            for kind, char, target, extra in moves:
                if kind == _LIT:
                    if c == char:
                        nxt.add(target + (c == "/"))
                elif kind in (_STAR, _ANY):
                    if c != "/":
                        nxt.add(target)
                elif kind == _GLOBSTAR:
                    nxt.add(extra)
                    if c == "/":
                        nxt.add(target)
                else:
                    tok = tokens[extra]
                    if any(lo <= c <= hi for lo, hi in tok.ranges) != tok.negate:
                        nxt.add(target)
            if not nxt:
                return False
            current = frozenset(nxt)
        return any(self.accepts_at_end(s) for s in current)


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> _Glob:
    return _Glob(pattern)


def check_pattern(pattern: str) -> None:
    """Raise BadPattern if doublestar would reject ``pattern``; for checking config at start."""
    if not isinstance(pattern, str):
        raise BadPattern(f"{pattern!r}: a pattern must be a string")
    _compile(pattern)


def glob_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern`` as doublestar v4's ``Match`` decides (see module).

    Raises BadPattern for an invalid pattern and ValueError for a value over 1000 characters.
    """
    check_pattern(pattern)
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"value longer than {MAX_VALUE_LENGTH} characters: {value[:57]!r}...")
    return _compile(pattern).match(value)


def matches_any(patterns: Sequence[str], value: str) -> bool:
    """Whether any pattern matches ``value``; no patterns match nothing."""
    return any(glob_match(p, value) for p in patterns)


# --- platforms -----------------------------------------------------------------------------------

_PLATFORM_PART = re.compile(r"[A-Za-z0-9_.-]+")


def _normalize_os(os: str) -> str:
    os = os.lower()
    return "darwin" if os == "macos" else os


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's spelling of an architecture, keeping "no variant" distinct from a default."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64"):
        arch = "amd64"
    elif arch == "aarch64":
        arch = "arm64"
    elif arch == "armhf":
        return "arm", "v7"
    elif arch == "armel":
        return "arm", "v6"
    if arch in ("arm", "arm64") and variant.isdigit():
        variant = "v" + variant
    return arch, variant


def _variant_key(arch: str, variant: str) -> str:
    """The variant an image really has: arm64 means v8, arm means v7, amd64 means v1."""
    if arch == "arm64" and variant in ("", "v8.0"):
        return "v8"
    return variant or {"arm": "v7", "amd64": "v1"}.get(arch, "")


@dataclass(frozen=True)
class Platform:
    """A platform filter; without a variant it matches every variant of the architecture."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, e.g. "linux/amd64", "linux/arm64/v8", "linux/armhf"."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) not in (2, 3) or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
            raise BadPlatform(f"{text!r}: a platform is os/arch[/variant], e.g. 'linux/arm64'")
        arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
        return cls(_normalize_os(parts[0]), arch, variant)

    def matches(self, platform: Mapping[str, Any]) -> bool:
        """Whether an OCI index entry's ``platform`` object is this platform."""
        os, arch = platform.get("os"), platform.get("architecture")
        variant = platform.get("variant") or ""
        if not (isinstance(os, str) and isinstance(arch, str) and isinstance(variant, str)):
            return False
        if _normalize_os(os) != _normalize_os(self.os):
            return False
        want_arch, want_variant = _normalize_arch(self.architecture, self.variant)
        have_arch, have_variant = _normalize_arch(arch, variant)
        if have_arch != want_arch:
            return False
        if not want_variant:
            return True
        return _variant_key(have_arch, have_variant) == _variant_key(want_arch, want_variant)

    def __str__(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"


# --- the selector --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """What a policy selects. Patterns are checked on construction; empty tuples select none."""

    repositories: tuple[str, ...] = ("**",)
    tags: tuple[str, ...] = ("**",)
    signed: bool = False
    platforms: tuple[Platform, ...] = ()

    def __post_init__(self) -> None:
        for name in ("repositories", "tags", "platforms"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"Selector.{name} must be a sequence, not a string")
            object.__setattr__(self, name, tuple(value))
        for pattern in (*self.repositories, *self.tags):
            check_pattern(pattern)

    def repository_matches(self, repo: str) -> bool:
        return matches_any(self.repositories, repo)

    def tag_matches(self, tag: str) -> bool:
        return matches_any(self.tags, tag)


# --- signatures ----------------------------------------------------------------------------------

COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIGSTORE_BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle+json"  # versions 0.1, 0.2 as a parameter
NOTATION_SIGNATURE = "application/vnd.cncf.notary.signature"
SIGNATURE_ARTIFACT_TYPES: frozenset[str] = frozenset(
    {COSIGN_SIGNATURE, SIGSTORE_BUNDLE_V03, SIGSTORE_BUNDLE, NOTATION_SIGNATURE}
)
_SIGSTORE_BUNDLE_VERSIONED = re.compile(r"application/vnd\.dev\.sigstore\.bundle\.v[0-9.]+\+json")
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")


def is_signature_type(artifact_type: str) -> bool:
    """Whether a referrer's artifactType is a signature (cosign, sigstore bundle, notation)."""
    base = artifact_type.split(";", 1)[0].strip().lower()
    return base in SIGNATURE_ARTIFACT_TYPES or bool(_SIGSTORE_BUNDLE_VERSIONED.fullmatch(base))


def signature_tag(digest: str) -> str:
    """The tag cosign stores a signature of ``digest`` under: "sha256:ab.." -> "sha256-ab...sig"."""
    found = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if found is None:
        raise ValueError(f"invalid digest {digest!r}: expected algorithm:encoded")
    return f"{found[1]}-{found[2]}.sig"


def is_signed(digest: str, tags: Iterable[str], referrers: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the repository holds a signature of ``digest``.

    Either cosign's tag for it, or a referrer (an entry of the referrers index for ``digest``)
    with a signature artifactType. A referrer that names a different ``subject`` (a full
    manifest passed in place of a descriptor) does not count.
    """
    if signature_tag(digest) in set(tags):
        return True
    for ref in referrers:
        artifact_type = ref.get("artifactType")
        if not isinstance(artifact_type, str) or not is_signature_type(artifact_type):
            continue
        subject = ref.get("subject")
        if isinstance(subject, Mapping) and subject.get("digest") != digest:
            continue
        return True
    return False


# --- image indexes -------------------------------------------------------------------------------

ATTESTATION_REFERENCE = "vnd.docker.reference.type"


def _is_attestation(entry: Mapping[str, Any]) -> bool:
    annotations = entry.get("annotations")
    if isinstance(annotations, Mapping) and (
        annotations.get(ATTESTATION_REFERENCE) == "attestation-manifest"
    ):
        return True
    platform = entry.get("platform")
    return (
        isinstance(platform, Mapping)
        and platform.get("os") == "unknown"
        and platform.get("architecture") == "unknown"
    )


def select_manifests(
    index: Mapping[str, Any], platforms: Sequence[Platform]
) -> list[dict[str, Any]]:
    """The entries of an image index or manifest list to preheat, in index order.

    Those whose platform matches one of ``platforms`` (none given: every entry). Buildkit
    attestation manifests are never selected. Entries without a platform only when no platforms
    are given. An entry whose digest was already selected is skipped. Raises ValueError when
    ``index`` has no ``manifests`` list.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ValueError("not an image index: no 'manifests' list")
    selected: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        digest = entry.get("digest")
        if not isinstance(digest, str) or digest in seen or _is_attestation(entry):
            continue
        platform = entry.get("platform")
        if platforms:
            if not isinstance(platform, Mapping):
                continue
            if not any(p.matches(platform) for p in platforms):
                continue
        seen.add(digest)
        selected.append(dict(entry))
    return selected
