"""What a preheat policy selects: doublestar patterns, platforms, signatures, index entries.

The pattern table holds doublestar v4's own Match cases (its doublestar_test.go) plus the filters
Harbor users write. The properties check glob_match against independent definitions: literal
text, '*' and '**' on their own, alternatives as a union, and a regex translation of patterns
whose '**' are whole segments.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from edgecache.preheat.policy import (
    ATTESTATION_REFERENCE,
    MAX_PATTERN_LENGTH,
    MAX_VALUE_LENGTH,
    SIGNATURE_ARTIFACT_TYPES,
    BadPattern,
    BadPlatform,
    Platform,
    Selector,
    check_pattern,
    glob_match,
    is_signed,
    matches_any,
    select_manifests,
    signature_tag,
)

# --- doublestar ----------------------------------------------------------------------------------

# (pattern, value, matches): doublestar v4's Match table first, then Harbor-style filters.
DOUBLESTAR_CASES = [
    ("*", "", True),
    ("*", "/", False),
    ("/*", "/", True),
    ("/*", "/debug/", False),
    ("/*", "//", False),
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("*/", "a/", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*", "axbxcxdxe", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a[!a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "\N{GREEK SMALL LETTER ALPHA}", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("[-]", "-", True),
    ("[x-]", "x", True),
    ("[x-]", "-", True),
    ("[x-]", "z", False),
    ("[-x]", "x", True),
    ("[-x]", "-", True),
    ("[-x]", "a", False),
    ("[a-b-d]", "a", True),
    ("[a-b-d]", "b", True),
    ("[a-b-d]", "-", True),
    ("[a-b-d]", "c", False),
    ("[a-b-x]", "x", True),
    ("*x", "xxx", True),
    ("[abc]", "b", True),
    ("**", "", True),
    ("a/**", "a", True),
    ("a/**", "a/", True),
    ("a/**", "a/b", True),
    ("a/**", "a/b/c", True),
    ("**/c", "c", True),
    ("**/c", "b/c", True),
    ("**/c", "a/b/c", True),
    ("**/c", "a/b", False),
    ("**/c", "abcd", False),
    ("**/c", "a/abc", False),
    ("a/**/b", "a/b", True),
    ("a/**/c", "a/b/c", True),
    ("a/**/d", "a/b/c/d", True),
    ("a/\\**", "a/b/c", False),
    ("a/\\[*\\]", "a/bc", False),
    ("a//b/c", "a/b/c", False),
    ("a/b/c", "a/b//c", False),
    ("a/", "a", False),
    ("ab{c,d}", "abc", True),
    ("ab{c,d,*}", "abcde", True),
    ("a{,bc}", "a", True),
    ("a{,bc}", "abc", True),
    ("a/{b/c,c/b}", "a/b/c", True),
    ("a/{b/c,c/b}", "a/c/b", True),
    ("{a/{b,c},abc}", "a/b", True),
    ("{a/{b,c},abc}", "a/c", True),
    ("{a/{b,c},abc}", "abc", True),
    ("{a/{b,c},abc}", "a/b/c", False),
    ("{a/ab*}", "a/abc", True),
    ("{a/*}", "a/b", True),
    ("{a/abc}", "a/abc", True),
    ("{a/b,a/c}", "a/c", True),
    ("abc/**", "abc/b", True),
    ("**/abc", "abc", True),
    ("abc**", "abc/b", False),
    ("abc**", "abc", True),
    ("**abc", "abc", True),
    ("**/*.txt", "abc/【test】.txt", True),
    ("**/【*", "abc/【test】.txt", True),
    # Harbor-style repository filters.
    ("library/**", "library/nginx", True),
    ("library/**", "library/team/nginx", True),
    ("library/**", "library", True),  # "/**" at the end also takes zero segments
    ("library/**", "libraryx/nginx", False),
    ("library/**", "other/library/nginx", False),
    ("library/*", "library/team/nginx", False),
    ("library/*/**", "library/nginx", True),  # the trailing "/**" may match nothing at all
    ("**", "a/b/c", True),
    ("**", "nginx", True),
    ("**/nginx", "nginx", True),
    ("**/nginx", "library/nginx", True),
    ("**/nginx", "library/nginx-alpine", False),
    ("{library,team-a}/**", "team-a/api", True),
    ("{library,team-a}/**", "team-b/api", False),
    ("team/app-{api,web}", "team/app-api", True),
    ("team/app-{api,web}", "team/app-worker", False),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/x/y/c", False),
    ("a/**/b/**/c", "a/b/c", True),
    ("a/**/b/**/c", "a/1/b/2/3/c", True),
    ("a/**/*", "a", False),  # what is left ("/**/*") must be zero-length as written
    ("a/**/*", "a/b", True),
    ("a**/b", "a/x/b", False),  # '**' not a whole segment is a plain '*'
    ("a**/b", "axx/b", True),
    ("{**/b,c}", "x/y/b", True),  # '**' opening an alternative is a globstar
    # Quirks of doublestar's matcher, checked against a transliteration of it.
    ("a**/", "a", True),  # a trailing "**/" counts as empty even where it is a plain '*'
    ("a*/**", "a", False),  # ...but "*/**" does not
    ("a/**/**", "a/", False),
    ("a/**/**", "a/b", True),
    ("****/", "abc", False),  # the last '*' ran out, leaving "/", not the first leaving "**/"
    ("*{**/,b}", "aa", False),
    ("*{**/,b}", "ab", True),
    ("*{,}", "a", True),
    ("x{,}**", "x/a/b", True),  # an empty alternative leaves a segment start behind it
    ("{*,x}*", "a/b", True),  # "*" then "*" after the group: a '**' pair opening the pattern
    ("{a/*,b}*", "a/x/y", True),
    ("a/**{/b,c}", "a/xc", True),  # '**' before '{' is a plain '*'
    ("a/**{/b,c}", "a/x/b", True),
    # Harbor-style tag filters.
    ("app-{api,web}", "app-api", True),
    ("app-{api,web}", "app-web", True),
    ("app-{api,web}", "app-", False),
    ("app-{api,web}", "app-apiweb", False),
    ("release-[0-9]*", "release-1.2.3", True),
    ("release-[0-9]*", "release-x", False),
    ("release-[0-9]*", "release-", False),
    ("v[0-9].*", "v1.25", True),
    ("v[0-9].*", "v12.0", False),
    ("*-dev", "1.0-dev", True),
    ("*-dev", "1.0-devel", False),
    ("{latest,stable,v?.*}", "v2.1", True),
    ("{latest,stable,v?.*}", "v10.1", False),
    ("[!0-9]*", "latest", True),
    ("[!0-9]*", "1.0", False),
    ("[^0-9]*", "1.0", False),
    ("sha256-*.sig", "sha256-abc.sig", True),
    # Escapes make metacharacters literal.
    ("a\\*b", "a*b", True),
    ("a\\*b", "axb", False),
    ("\\{a,b\\}", "{a,b}", True),
    ("\\{a,b\\}", "a", False),
    ("\\[x]", "[x]", True),
    ("\\?", "?", True),
    ("\\?", "x", False),
    ("a\\\\b", "a\\b", True),
    ("{a\\,b,c}", "a,b", True),
    ("{a\\,b,c}", "a", False),
    ("{\\}}", "}", True),
    ("a,b", "a,b", True),  # ',' outside braces is literal
    # Alternatives: empty, nested, holding wildcards.
    ("{}", "", True),
    ("a{}b", "ab", True),
    ("x{a,{b,{c,d}}}", "xd", True),
    ("x{a,{b,{c,d}}}", "xe", False),
    ("{a,b}{c,d}{e,f}", "bcf", True),
    ("{*.go,*.py}", "x.py", True),
    ("{a/**,b}", "a/x/y", True),
    ("{a/**,b}", "b/x", False),
    # Classes take any character in them, '/' included, as doublestar does.
    ("a[/]b", "a/b", True),
    ("a[!x]b", "a/b", True),
    ("[c-a]", "c", True),
    ("[c-a]", "b", False),
    ("", "", True),
    ("", "a", False),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), DOUBLESTAR_CASES)
def test_glob_match_agrees_with_doublestar(pattern: str, value: str, expected: bool) -> None:
    assert glob_match(pattern, value) is expected


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        ("**/x/**/", "x/x"),  # doublestar loses the first '**/' when it reaches the second
        ("*[!a]*", "ab/c"),  # doublestar never retries the first '*' once the second is reached
    ],
)
def test_matches_that_doublestars_single_backtrack_point_misses(pattern: str, value: str) -> None:
    # A documented difference: every way of matching counts here (see the module docstring).
    assert glob_match(pattern, value)


INVALID_PATTERNS = [
    ("{a,b", "unclosed '{'"),
    ("a{b{c}", "unclosed '{'"),
    ("a}", "unmatched '}'"),
    ("{a}}", "unmatched '}'"),
    ("[", "unclosed '['"),
    ("[^", "unclosed '['"),
    ("[^bc", "unclosed '['"),
    ("a[", "unclosed '['"),
    ("[a\\]", "unclosed '['"),
    ("[]a]", "empty character class"),
    ("[!]", "empty character class"),
    ("\\", "escapes nothing"),
    ("abc\\", "escapes nothing"),
    ("ab{c,d}[", "unclosed '['"),
]


@pytest.mark.parametrize(("pattern", "problem"), INVALID_PATTERNS)
def test_invalid_patterns_are_rejected_naming_pattern_and_problem(
    pattern: str, problem: str
) -> None:
    with pytest.raises(BadPattern) as caught:
        check_pattern(pattern)
    message = str(caught.value)
    assert message.startswith(f"{pattern!r}: ") and problem in message
    with pytest.raises(BadPattern):
        glob_match(pattern, "a")  # never a silent False


def test_bad_pattern_message_matches_the_documented_form() -> None:
    with pytest.raises(BadPattern, match=r"^'\{a,b': unclosed '\{'$"):
        check_pattern("{a,b")
    assert issubclass(BadPattern, ValueError)


def test_a_pattern_must_be_a_string() -> None:
    with pytest.raises(BadPattern, match="must be a string"):
        check_pattern(42)  # type: ignore[arg-type]


def test_length_limits() -> None:
    check_pattern("a" * MAX_PATTERN_LENGTH)
    assert glob_match("*", "a" * MAX_VALUE_LENGTH)
    with pytest.raises(BadPattern, match="longer than 1000"):
        check_pattern("a" * (MAX_PATTERN_LENGTH + 1))
    with pytest.raises(ValueError, match="longer than 1000"):
        glob_match("*", "a" * (MAX_VALUE_LENGTH + 1))


# Patterns that make a backtracking matcher take exponential (or high polynomial) time. The
# assertions are on results; the suite's own run time is what shows they return quickly.
PATHOLOGICAL = [
    ("*a*a*a*a*b", "a" * 1000, False),
    ("*a*a*a*a*a", "a" * 1000, True),
    ("*a" * 30 + "b", "a" * 1000, False),
    ("{a,a}" * 150 + "b", "a" * 150 + "c", False),
    ("{a,a}" * 150, "a" * 150, True),
    ("{*,?}" * 100 + "b", "a" * 1000, False),
    ("**/" * 100 + "*a*a*b", "a/" * 499 + "a", False),
    ("**/" * 100 + "a", "a/" * 499 + "a", True),
    ("{" * 300 + "x" + "}" * 300, "x", True),
    ("[a-z]*" * 100 + "0", "a" * 1000, False),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), PATHOLOGICAL)
def test_pathological_patterns(pattern: str, value: str, expected: bool) -> None:
    assert glob_match(pattern, value) is expected


def test_matches_any() -> None:
    assert matches_any(["library/**", "team/*"], "team/api")
    assert not matches_any(["library/**", "team/*"], "team/a/b")
    assert not matches_any([], "anything")


# --- properties ----------------------------------------------------------------------------------

SAFE = "abcxyz0123456789-._:@/"  # no glob metacharacters
safe_text = st.text(alphabet=SAFE, max_size=40)
segment = st.text(alphabet="abc01-._", min_size=1, max_size=6)
repository = st.lists(segment, min_size=1, max_size=4).map("/".join)
any_text = st.text(max_size=60)


@given(safe_text, safe_text)
def test_literal_pattern_matches_exactly_itself(pattern: str, other: str) -> None:
    assert glob_match(pattern, pattern)
    assert glob_match(pattern, other) is (pattern == other)


@given(any_text, any_text)
def test_fully_escaped_text_matches_exactly_itself(text: str, other: str) -> None:
    pattern = "".join("\\" + c for c in text)
    assert glob_match(pattern, text)
    assert glob_match(pattern, other) is (text == other)


@given(any_text)
def test_star_never_crosses_a_slash(value: str) -> None:
    assert glob_match("*", value) is ("/" not in value)
    assert glob_match("a*", "a" + value) is ("/" not in value)


@given(any_text)
def test_question_mark_is_one_character_but_not_a_slash(value: str) -> None:
    assert glob_match("?", value) is (len(value) == 1 and value != "/")


@given(any_text)
def test_doublestar_matches_anything(value: str) -> None:
    assert glob_match("**", value)


@given(repository, repository)
def test_globstar_prefix_matches_a_suffix_of_whole_segments(prefix: str, name: str) -> None:
    assert glob_match("**/" + name, name)
    assert glob_match("**/" + name, prefix + "/" + name)
    assert glob_match(prefix + "/**", prefix + "/" + name)
    assert glob_match(prefix + "/**", prefix)
    assert not glob_match("**/" + name, prefix + "-" + name)


wild = st.lists(st.sampled_from(["a", "b", "/", "*", "?", "[ab]", "**", "-"]), max_size=6).map(
    "".join
)


@given(wild, wild, st.text(alphabet="ab/-", max_size=8))
def test_alternatives_are_a_union(left: str, right: str, value: str) -> None:
    either = glob_match(left, value) or glob_match(right, value)
    assert glob_match("{" + left + "," + right + "}", value) is either


def _segment_regex(seg: str) -> str:
    out = []
    for token in re.findall(r"\[[^\]]+\]|.", seg):
        if token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        elif token.startswith("["):
            out.append(token)
        else:
            out.append(re.escape(token))
    return "".join(out)


def _whole_segment_regex(segments: list[str]) -> str:
    """A regex for a pattern whose '**' are whole segments: the reading Harbor users expect."""
    out = ""
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            if i == 0:
                out += ".*" if last else "(?:.*/)?"
            else:
                out += "(?:/.*)?" if last else "(?:/.*)?/"
        else:
            out += ("" if i == 0 or segments[i - 1] == "**" else "/") + _segment_regex(seg)
    return out


pattern_segment = st.one_of(
    st.just("**"),
    st.lists(
        st.sampled_from(["a", "b", "1", "-", "*", "?", "[ab]", "[0-9]"]), min_size=1, max_size=4
    ).map("".join),
)
name_segment = st.text(alphabet="ab1-", min_size=1, max_size=4)


@given(
    st.lists(pattern_segment, min_size=1, max_size=4),
    st.lists(name_segment, min_size=1, max_size=5).map("/".join),
)
def test_whole_segment_patterns_read_as_expected(segments: list[str], name: str) -> None:
    # Consecutive "**" segments would need a regex for "zero or more" twice; skip them.
    assume(all(not (a == b == "**") for a, b in itertools.pairwise(segments)))
    expected = re.fullmatch(_whole_segment_regex(segments), name) is not None
    assert glob_match("/".join(segments), name) is expected


# --- platforms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "platform", "shown"),
    [
        ("linux/amd64", Platform("linux", "amd64"), "linux/amd64"),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8"), "linux/arm64/v8"),
        ("linux/arm/v7", Platform("linux", "arm", "v7"), "linux/arm/v7"),
        ("Linux/x86_64", Platform("linux", "amd64"), "linux/amd64"),
        ("linux/x86-64", Platform("linux", "amd64"), "linux/amd64"),
        ("linux/aarch64", Platform("linux", "arm64"), "linux/arm64"),
        ("linux/armhf", Platform("linux", "arm", "v7"), "linux/arm/v7"),
        ("linux/armel", Platform("linux", "arm", "v6"), "linux/arm/v6"),
        ("linux/arm/7", Platform("linux", "arm", "v7"), "linux/arm/v7"),
        ("linux/i386", Platform("linux", "386"), "linux/386"),
        ("windows/amd64", Platform("windows", "amd64"), "windows/amd64"),
        ("linux/s390x", Platform("linux", "s390x"), "linux/s390x"),
    ],
)
def test_platform_parse(text: str, platform: Platform, shown: str) -> None:
    assert Platform.parse(text) == platform
    assert str(platform) == shown
    assert Platform.parse(shown) == platform


@pytest.mark.parametrize(
    "text",
    ["", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64", "linux//v7", "*/*"],
)
def test_platform_parse_rejects_junk(text: str) -> None:
    with pytest.raises(BadPlatform, match="os/arch"):
        Platform.parse(text)
    assert issubclass(BadPlatform, ValueError)


def _entry_platform(os: str, arch: str, variant: str | None = None) -> dict[str, str]:
    platform = {"os": os, "architecture": arch}
    if variant is not None:
        platform["variant"] = variant
    return platform


@pytest.mark.parametrize(
    ("filter_text", "entry", "expected"),
    [
        ("linux/amd64", _entry_platform("linux", "amd64"), True),
        ("linux/amd64", _entry_platform("linux", "arm64"), False),
        ("linux/amd64", _entry_platform("windows", "amd64"), False),
        ("linux/amd64", _entry_platform("LINUX", "amd64"), True),
        ("linux/amd64", _entry_platform("linux", "x86_64"), True),
        ("linux/x86_64", _entry_platform("linux", "amd64"), True),
        ("linux/amd64", _entry_platform("linux", "amd64", "v3"), True),  # no variant: any
        ("linux/amd64/v1", _entry_platform("linux", "amd64"), True),
        ("linux/amd64/v3", _entry_platform("linux", "amd64"), False),
        ("linux/arm64", _entry_platform("linux", "arm64", "v8"), True),
        ("linux/arm64", _entry_platform("linux", "aarch64"), True),
        ("linux/arm64/v8", _entry_platform("linux", "arm64"), True),  # "" is v8
        ("linux/arm64/v8", _entry_platform("linux", "arm64", "v8"), True),
        ("linux/arm64/v8", _entry_platform("linux", "arm64", "8"), True),
        ("linux/arm64/v8", _entry_platform("linux", "arm64", "v9"), False),
        ("linux/arm/v7", _entry_platform("linux", "arm"), True),  # arm defaults to v7
        ("linux/arm/v7", _entry_platform("linux", "arm", "v7"), True),
        ("linux/arm/v7", _entry_platform("linux", "armhf"), True),
        ("linux/arm/v6", _entry_platform("linux", "armel"), True),
        ("linux/arm/v6", _entry_platform("linux", "arm", "v7"), False),
        ("linux/arm/v6", _entry_platform("linux", "arm"), False),
        ("linux/arm", _entry_platform("linux", "arm", "v6"), True),
        ("linux/armhf", _entry_platform("linux", "arm", "v6"), False),
        ("linux/arm", _entry_platform("linux", "arm64"), False),
        ("linux/amd64", {"architecture": "amd64"}, False),
        ("linux/amd64", {"os": "linux", "architecture": 7}, False),
        ("linux/amd64", _entry_platform("unknown", "unknown"), False),
    ],
)
def test_platform_matches(filter_text: str, entry: dict[str, Any], expected: bool) -> None:
    assert Platform.parse(filter_text).matches(entry) is expected


def test_a_platform_built_directly_is_normalised_when_matching() -> None:
    assert Platform("Linux", "x86_64").matches(_entry_platform("linux", "amd64"))


@given(
    st.sampled_from(["linux", "windows", "darwin", "freebsd"]),
    st.sampled_from(["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"]),
    st.sampled_from(["", "v5", "v6", "v7", "v8", "v2", "v3"]),
)
def test_platform_round_trips_and_matches_its_own_entry(os: str, arch: str, variant: str) -> None:
    text = f"{os}/{arch}" + (f"/{variant}" if variant else "")
    platform = Platform.parse(text)
    assert str(platform) == text
    assert Platform.parse(str(platform)) == platform
    assert platform.matches(_entry_platform(os, arch, variant or None))


# --- selector ------------------------------------------------------------------------------------


def test_default_selector_takes_everything() -> None:
    selector = Selector()
    assert selector.repository_matches("library/nginx")
    assert selector.repository_matches("a/b/c/d")
    assert selector.tag_matches("latest")
    assert not selector.signed and selector.platforms == ()


def test_selector_filters_repositories_and_tags() -> None:
    selector = Selector(("library/**", "team-{a,b}/*"), ("release-[0-9]*", "latest"))
    assert selector.repository_matches("library/nginx")
    assert selector.repository_matches("team-b/api")
    assert not selector.repository_matches("team-c/api")
    assert not selector.repository_matches("team-a/api/v2")
    assert selector.tag_matches("release-2")
    assert selector.tag_matches("latest")
    assert not selector.tag_matches("dev")


def test_selector_checks_patterns_when_built() -> None:
    with pytest.raises(BadPattern, match="unclosed"):
        Selector(repositories=("library/{a,b",))
    with pytest.raises(BadPattern, match="unclosed"):
        Selector(tags=("[0-9",))


def test_selector_takes_lists_and_stays_hashable() -> None:
    selector = Selector(["a/**"], ["v*"], True, [Platform.parse("linux/amd64")])  # type: ignore[arg-type]
    assert selector.repositories == ("a/**",) and selector.tags == ("v*",)
    assert selector.platforms == (Platform("linux", "amd64"),)
    assert hash(selector) == hash(Selector(("a/**",), ("v*",), True, (Platform("linux", "amd64"),)))


def test_selector_rejects_a_bare_string_for_patterns() -> None:
    with pytest.raises(TypeError, match="not a string"):
        Selector(repositories="library/**")  # type: ignore[arg-type]


def test_selector_with_no_patterns_selects_nothing() -> None:
    assert not Selector(repositories=()).repository_matches("library/nginx")
    assert not Selector(tags=()).tag_matches("latest")


# --- signatures ----------------------------------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def _referrer(artifact_type: str | None, **extra: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + "ef" * 32,
        "size": 1234,
    }
    if artifact_type is not None:
        ref["artifactType"] = artifact_type
    ref.update(extra)
    return ref


def test_signature_tag_is_cosigns_layout() -> None:
    assert signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    assert signature_tag("sha512:" + "0f" * 64) == "sha512-" + "0f" * 64 + ".sig"


@pytest.mark.parametrize("bad", ["", "sha256", "abc", ":abc", "sha256:", "SHA256:ab", "sha256:a/b"])
def test_signature_tag_rejects_a_malformed_digest(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid digest"):
        signature_tag(bad)


def test_signed_by_cosign_tag() -> None:
    assert is_signed(DIGEST, ["latest", signature_tag(DIGEST)], [])
    assert is_signed(DIGEST, iter([signature_tag(DIGEST)]), iter([]))


def test_cosign_tag_of_another_digest_does_not_count() -> None:
    assert not is_signed(DIGEST, ["latest", signature_tag(OTHER), signature_tag(OTHER)[:-4]], [])
    assert not is_signed(DIGEST, ["sha256-" + "ab" * 32 + ".att", "sha256-" + "ab" * 32], [])


@pytest.mark.parametrize(
    "artifact_type",
    [
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json; version=0.2",
        "application/vnd.cncf.notary.signature",
        "Application/VND.cncf.notary.signature",
    ],
)
def test_signed_by_referrer(artifact_type: str) -> None:
    assert is_signed(
        DIGEST, ["latest"], [_referrer("application/spdx+json"), _referrer(artifact_type)]
    )


@pytest.mark.parametrize(
    "artifact_type",
    [
        None,
        "application/spdx+json",
        "application/vnd.in-toto+json",
        "application/vnd.dev.cosign.artifact.sbom.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.cncf.notary.signature.extra",
    ],
)
def test_other_referrers_are_not_signatures(artifact_type: str | None) -> None:
    assert not is_signed(DIGEST, ["latest"], [_referrer(artifact_type)])


def test_referrer_for_another_subject_does_not_count() -> None:
    other_subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": OTHER}
    own_subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST}
    notation = "application/vnd.cncf.notary.signature"
    assert not is_signed(DIGEST, [], [_referrer(notation, subject=other_subject)])
    assert is_signed(DIGEST, [], [_referrer(notation, subject=own_subject)])


def test_signature_artifact_types() -> None:
    assert {
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.cncf.notary.signature",
    } <= SIGNATURE_ARTIFACT_TYPES


def test_unsigned() -> None:
    assert not is_signed(DIGEST, [], [])


# --- select_manifests ----------------------------------------------------------------------------


def _image(digest_byte: str, platform: dict[str, str] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + digest_byte * 64,
        "size": 1000,
    }
    if platform is not None:
        entry["platform"] = platform
    return entry


def _attestation(digest_byte: str, subject: dict[str, Any]) -> dict[str, Any]:
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + digest_byte * 64,
        "size": 840,
        "annotations": {
            ATTESTATION_REFERENCE: "attestation-manifest",
            "vnd.docker.reference.digest": subject["digest"],
        },
        "platform": {"architecture": "unknown", "os": "unknown"},
    }


AMD64 = _image("1", _entry_platform("linux", "amd64"))
ARM64 = _image("2", _entry_platform("linux", "arm64", "v8"))
ARMV7 = _image("3", _entry_platform("linux", "arm", "v7"))
# What `docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 --push` writes:
# one image per platform, then one attestation manifest (provenance, SBOM) per image.
BUILDKIT_INDEX = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        AMD64,
        ARM64,
        ARMV7,
        _attestation("4", AMD64),
        _attestation("5", ARM64),
        _attestation("6", ARMV7),
    ],
}


def _digests(entries: list[dict[str, Any]]) -> list[str]:
    return [e["digest"] for e in entries]


def test_no_platforms_selects_every_image_but_no_attestation() -> None:
    assert select_manifests(BUILDKIT_INDEX, []) == [AMD64, ARM64, ARMV7]


@pytest.mark.parametrize(
    ("platforms", "expected"),
    [
        (["linux/amd64"], [AMD64]),
        (["linux/arm64"], [ARM64]),
        (["linux/arm64/v8"], [ARM64]),
        (["linux/aarch64"], [ARM64]),
        (["linux/arm/v7"], [ARMV7]),
        (["linux/arm"], [ARMV7]),
        (["linux/arm/v6"], []),
        (["linux/arm/v7", "linux/amd64"], [AMD64, ARMV7]),  # index order, not filter order
        (["windows/amd64"], []),
        (["linux/s390x", "linux/arm64"], [ARM64]),
    ],
)
def test_platform_filters_pick_entries_in_index_order(
    platforms: list[str], expected: list[dict[str, Any]]
) -> None:
    chosen = select_manifests(BUILDKIT_INDEX, [Platform.parse(p) for p in platforms])
    assert _digests(chosen) == _digests(expected)


def test_attestations_never_selected_even_with_a_matching_platform() -> None:
    labelled = _attestation("7", AMD64) | {"platform": _entry_platform("linux", "amd64")}
    unknown = _image("8", _entry_platform("unknown", "unknown"))
    index = {"manifests": [labelled, unknown, AMD64]}
    assert _digests(select_manifests(index, [])) == [AMD64["digest"]]
    assert _digests(select_manifests(index, [Platform.parse("linux/amd64")])) == [AMD64["digest"]]


def test_entries_without_platform_only_when_no_platforms_asked() -> None:
    bare = _image("9", None)
    index = {"manifests": [bare, AMD64]}
    assert _digests(select_manifests(index, [])) == [bare["digest"], AMD64["digest"]]
    assert _digests(select_manifests(index, [Platform.parse("linux/amd64")])) == [AMD64["digest"]]


def test_duplicate_digests_are_selected_once() -> None:
    twin = dict(AMD64, annotations={"org.opencontainers.image.ref.name": "x"})
    index = {"manifests": [AMD64, ARM64, twin, AMD64]}
    assert _digests(select_manifests(index, [])) == [AMD64["digest"], ARM64["digest"]]


def test_docker_manifest_list() -> None:
    docker_list = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": "sha256:" + "a" * 64,
                "size": 528,
                "platform": {"architecture": "arm", "os": "linux", "variant": "v6"},
            },
            {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": "sha256:" + "b" * 64,
                "size": 528,
                "platform": {"architecture": "amd64", "os": "linux"},
            },
        ],
    }
    chosen = select_manifests(docker_list, [Platform.parse("linux/armel")])
    assert _digests(chosen) == ["sha256:" + "a" * 64]


def test_malformed_entries_are_skipped() -> None:
    index = {"manifests": ["junk", {"platform": _entry_platform("linux", "amd64")}, AMD64]}
    assert _digests(select_manifests(index, [])) == [AMD64["digest"]]


def test_result_is_a_copy() -> None:
    chosen = select_manifests(BUILDKIT_INDEX, [])
    chosen[0]["digest"] = "changed"
    assert AMD64["digest"] == "sha256:" + "1" * 64


def test_not_an_index() -> None:
    with pytest.raises(ValueError, match="not an image index"):
        select_manifests({"schemaVersion": 2, "layers": []}, [])
