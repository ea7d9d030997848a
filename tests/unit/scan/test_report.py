"""Scanner adapter reports, the allowlist and the pull gate (edgecache/scan/report.py).

The fixtures are what Harbor's adapters answer (Trivy's fields and Debian package versions),
checked against HarborVulnerabilityReport from the published adapter specs (v1.1 and v1.2), so
the parser is not only tested against our own reading of the schema.
"""

from __future__ import annotations

import copy
import itertools
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.scan.report import (
    HARBOR_REPORT,
    MAX_REPORT_BYTES,
    MAX_VULNERABILITIES,
    SEVERITIES,
    VULN_REPORT_11,
    AllowEntry,
    GateResult,
    Report,
    Vulnerability,
    counts,
    gate,
    parse_allowlist,
    parse_report,
    parse_rfc3339,
    parse_severity,
    severity_rank,
    summary_text,
    worst,
)
from tests.fakes.dragonfly import REFERENCE_DIR  # the saved definitions, found as there

SPECS = ("scanner-adapter-openapi-v1.1.yaml", "scanner-adapter-openapi-v1.2.yaml")

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

# harbor-scanner-trivy's answer for a Debian bookworm image, Harbor's 1.0 report type.
TRIVY_REPORT: dict[str, Any] = {
    "generated_at": "2024-05-14T10:11:12.123456789Z",
    "artifact": {
        "repository": "library/nginx",
        "digest": "sha256:" + "a" * 64,
        "tag": "1.25",
        "mime_type": "application/vnd.oci.image.manifest.v1+json",
    },
    "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "v0.51.1"},
    "severity": "Critical",
    "vulnerabilities": [
        {
            "id": "CVE-2023-44487",
            "package": "libnghttp2-14",
            "version": "1.52.0-1",
            "fix_version": "1.52.0-1+deb12u1",
            "severity": "High",
            "description": "The HTTP/2 protocol allows a denial of service (rapid reset).",
            "links": ["https://avd.aquasec.com/nvd/cve-2023-44487"],
        },
        {
            "id": "CVE-2023-45853",
            "package": "zlib1g",
            "version": "1:1.2.13.dfsg-1",
            "fix_version": "",
            "severity": "Critical",
            "description": "MiniZip in zlib through 1.3 has an integer overflow.",
            "links": ["https://avd.aquasec.com/nvd/cve-2023-45853"],
        },
        {
            "id": "CVE-2024-2961",
            "package": "libc6",
            "version": "2.36-9+deb12u4",
            "fix_version": "2.36-9+deb12u7",
            "severity": "High",
            "description": "iconv() may overflow its output buffer (ISO-2022-CN-EXT).",
            "links": [],
        },
        {
            "id": "CVE-2023-31484",
            "package": "perl-base",
            "version": "5.36.0-7+deb12u1",
            "fix_version": "",
            "severity": "High",
            "description": "CPAN.pm does not verify TLS certificates when downloading.",
            "links": ["https://avd.aquasec.com/nvd/cve-2023-31484"],
        },
        {
            "id": "CVE-2024-0727",
            "package": "openssl",
            "version": "3.0.11-1~deb12u2",
            "fix_version": "3.0.13-1~deb12u1",
            "severity": "Medium",
            "description": "A malformed PKCS12 file can crash OpenSSL.",
            "links": [],
        },
        {
            "id": "CVE-2024-0727",
            "package": "libssl3",
            "version": "3.0.11-1~deb12u2",
            "fix_version": "3.0.13-1~deb12u1",
            "severity": "Medium",
            "description": "A malformed PKCS12 file can crash OpenSSL.",
            "links": [],
        },
        {
            "id": "CVE-2022-0563",
            "package": "util-linux",
            "version": "2.38.1-5+b1",
            "fix_version": "",
            "severity": "Low",
            "description": "chfn and chsh may leak partial file contents.",
            "links": [],
        },
        {
            "id": "CVE-2011-3374",
            "package": "apt",
            "version": "2.6.1",
            "fix_version": "",
            "severity": "Negligible",
            "description": "apt-key does not correctly validate keyrings.",
            "links": [],
        },
        {
            "id": "TEMP-0841856-B18BAF",
            "package": "bash",
            "version": "5.2.15-2+b2",
            "fix_version": "",
            "severity": "Unknown",
            "description": "[Privilege escalation possibility]",
            "links": [],
        },
    ],
}

# The 1.1 report type: CVSS, CWE and vendor attributes, an offset time, a null links (Go's nil
# slice) and a missing fix_version.
GENERIC_REPORT: dict[str, Any] = {
    "generated_at": "2024-05-14T12:00:00+02:00",
    "artifact": {"repository": "team/api", "digest": "sha256:" + "b" * 64},
    "scanner": {"name": "Grype", "vendor": "Anchore", "version": "0.77.0"},
    "severity": "High",
    "vulnerabilities": [
        {
            "id": "GHSA-qppj-fm5r-hxr3",
            "package": "golang.org/x/net",
            "version": "v0.17.0",
            "fix_version": "v0.23.0",
            "severity": "High",
            "description": "HTTP/2 CONTINUATION frames can exhaust memory.",
            "links": None,
            "preferred_cvss": {
                "score_v3": 7.5,
                "vector_v3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H",
            },
            "cwe_ids": ["CWE-400"],
            "vendor_attributes": {"CVSS": {"nvd": {"V3Score": 7.5}}},
        },
        {
            "id": "CVE-2023-39325",
            "package": "stdlib",
            "version": "1.21.1",
            "severity": "Medium",
            "cwe_ids": [],
        },
    ],
}


def _report(doc: dict[str, Any], media_type: str = HARBOR_REPORT) -> Report:
    return parse_report(media_type, json.dumps(doc).encode())


def _with(vulnerabilities: list[dict[str, Any]] | None) -> Report:
    doc = {
        "generated_at": "2024-05-14T10:11:12Z",
        "scanner": {"name": "Trivy"},
        "vulnerabilities": vulnerabilities,
    }
    return parse_report(HARBOR_REPORT, doc)


# --- the fixtures are what the specs describe ----------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("doc", [TRIVY_REPORT, GENERIC_REPORT], ids=["trivy", "generic"])
def test_fixtures_follow_the_published_schema(spec: str, doc: dict[str, Any]) -> None:
    path = REFERENCE_DIR / "scanner-adapter-api" / spec
    components = yaml.safe_load(path.read_text())["components"]
    schema = {"$ref": "#/components/schemas/HarborVulnerabilityReport", "components": components}
    validator = jsonschema.Draft7Validator(schema)
    # null for an empty links array is what Go writes for a nil slice; the schema says array.
    doc = copy.deepcopy(doc)
    for v in doc["vulnerabilities"]:
        if v.get("links") is None:
            v.pop("links", None)
    validator.validate(doc)
    bad = copy.deepcopy(doc)
    bad["vulnerabilities"][0]["severity"] = 7
    assert not validator.is_valid(bad)


# --- severities ----------------------------------------------------------------------------------


def test_severity_order_is_harbors() -> None:
    assert [severity_rank(s) for s in SEVERITIES] == [0, 1, 2, 3, 4, 5]
    assert severity_rank("critical") == severity_rank(" CRITICAL ") == 5
    assert severity_rank("None") == 0  # Harbor's None and Unknown share code 0
    assert severity_rank("moderate") == severity_rank("") == 0
    assert severity_rank(3) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("high", "High"), ("CRITICAL", "Critical"), (" negligible ", "Negligible")],
)
def test_parse_severity(text: str, canonical: str) -> None:
    assert parse_severity(text) == canonical


@pytest.mark.parametrize("junk", ["hgih", "None", "", "severe", 4, None])
def test_parse_severity_rejects_junk(junk: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_severity(junk)
    assert str(info.value) == (
        f"unknown severity {junk!r}: use one of Unknown, Negligible, Low, Medium, High, Critical"
    )


# --- parsing reports -----------------------------------------------------------------------------


def test_trivy_report() -> None:
    report = _report(TRIVY_REPORT)
    assert report.media_type == HARBOR_REPORT
    assert report.generated_at == datetime(2024, 5, 14, 10, 11, 12, 123456, tzinfo=UTC)
    assert dict(report.scanner) == {
        "name": "Trivy",
        "vendor": "Aqua Security",
        "version": "v0.51.1",
    }
    assert report.severity == "Critical"
    assert len(report.vulnerabilities) == 9
    assert report.vulnerabilities[0] == Vulnerability(
        id="CVE-2023-44487",
        package="libnghttp2-14",
        version="1.52.0-1",
        fix_version="1.52.0-1+deb12u1",
        severity="High",
        description="The HTTP/2 protocol allows a denial of service (rapid reset).",
        links=("https://avd.aquasec.com/nvd/cve-2023-44487",),
    )
    assert report.vulnerabilities[1].fix_version is None  # "" is no fix
    assert report.raw["artifact"]["repository"] == "library/nginx"
    with pytest.raises(TypeError):
        report.raw["severity"] = "None"  # type: ignore[index]


def test_generic_report() -> None:
    report = _report(GENERIC_REPORT, VULN_REPORT_11)
    assert report.media_type == VULN_REPORT_11
    assert report.generated_at == datetime(2024, 5, 14, 10, 0, tzinfo=UTC)
    assert report.generated_at.utcoffset() == timedelta(hours=2)
    first, second = report.vulnerabilities
    assert (first.severity, first.links, first.fix_version) == ("High", (), "v0.23.0")
    assert (second.severity, second.fix_version, second.description) == ("Medium", None, "")
    assert report.severity == "High"
    assert report.raw["vulnerabilities"][0]["preferred_cvss"]["score_v3"] == 7.5


def test_severity_names_as_scanners_write_them() -> None:
    # Any case; a name no spec knows (or none) is Unknown, as Harbor's ParseSeverityVersion3 has it.
    report = _with(
        [
            {"id": "CVE-2024-0001", "severity": "HIGH"},
            {"id": "CVE-2024-0002", "severity": "moderate"},
            {"id": "CVE-2024-0003"},
            {"id": "CVE-2024-0004", "severity": None},
        ]
    )
    assert [v.severity for v in report.vulnerabilities] == ["High", "Unknown", "Unknown", "Unknown"]


def test_a_mapping_parses_like_its_json() -> None:
    assert parse_report(HARBOR_REPORT, TRIVY_REPORT) == _report(TRIVY_REPORT)


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.security.vulnerability.report;version=1.1",
        'Application/Vnd.Security.Vulnerability.Report; Version="1.1"',
    ],
)
def test_media_type_parameters_compare_loosely(media_type: str) -> None:
    assert parse_report(media_type, TRIVY_REPORT).media_type == VULN_REPORT_11


def test_no_vulnerabilities() -> None:
    empties: tuple[list[dict[str, Any]] | None, ...] = ([], None)
    for empty in empties:
        report = _with(empty)
        assert report.vulnerabilities == ()
        assert report.severity == "None"
        assert counts(report) == dict.fromkeys(SEVERITIES, 0)
        assert worst(report) == []


def _doc(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TRIVY_REPORT)
    for key, value in changes.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return doc


def _vuln(**changes: Any) -> dict[str, Any]:
    item = copy.deepcopy(TRIVY_REPORT["vulnerabilities"][0])
    for key, value in changes.items():
        if value is ...:
            del item[key]
        else:
            item[key] = value
    return _doc(vulnerabilities=[TRIVY_REPORT["vulnerabilities"][1], item])


MALFORMED = [
    (b"", "report is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (
        b"{",
        "report is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
    ),
    (b"\xff\xfe\x00", "report is not valid JSON: "),
    (b"[" * 100_000, "report is not valid JSON: nested too deeply"),
    (b'{"generated_at": NaN}', "report is not valid JSON: NaN is not JSON"),
    (b"[]", "report must be a JSON object, got array"),
    (b'"clean"', "report must be a JSON object, got string"),
    (
        b'{"error": {"message": "scan job failed: timeout"}}',
        "report is an adapter error: 'scan job failed: timeout'",
    ),
    (_doc(generated_at=...), "report generated_at is missing"),
    (_doc(generated_at=None), "report generated_at is missing"),
    (_doc(generated_at=1715681472), "report generated_at must be a string, got number"),
    (
        _doc(generated_at="2024-05-14"),
        "report generated_at '2024-05-14' is not an RFC 3339 date-time",
    ),
    (
        _doc(generated_at="2024-05-14T10:11:12"),
        "report generated_at '2024-05-14T10:11:12' is not an RFC 3339 date-time",
    ),
    (
        _doc(generated_at="2024-02-30T10:11:12Z"),
        "report generated_at '2024-02-30T10:11:12Z' is "
        "not an RFC 3339 date-time (day is out of range for month)",
    ),
    (_doc(scanner="Trivy"), "report scanner must be an object, got string"),
    (_doc(scanner={"name": ["Trivy"]}), "report scanner.name must be a string, got array"),
    (_doc(severity=5), "report severity must be a string, got number"),
    (_doc(vulnerabilities=...), "report vulnerabilities is missing (an array, or null for none)"),
    (_doc(vulnerabilities={}), "report vulnerabilities must be an array, got object"),
    (
        _doc(vulnerabilities=["CVE-2024-1"]),
        "report vulnerabilities[0] must be an object, got string",
    ),
    (_vuln(id=...), "report vulnerabilities[1].id is missing"),
    (_vuln(id=None), "report vulnerabilities[1].id is missing"),
    (_vuln(id=44487), "report vulnerabilities[1].id must be a string, got number"),
    (_vuln(id="  "), "report vulnerabilities[1].id is empty"),
    (_vuln(id="C" * 257), "report vulnerabilities[1].id is 257 characters long, more than 256"),
    (
        _vuln(id="CVE-1\x1b[2J"),
        "report vulnerabilities[1].id 'CVE-1\\x1b[2J' has control characters",
    ),
    (_vuln(package=1), "report vulnerabilities[1].package must be a string, got number"),
    (_vuln(version=True), "report vulnerabilities[1].version must be a string, got boolean"),
    (_vuln(fix_version=[]), "report vulnerabilities[1].fix_version must be a string, got array"),
    (_vuln(severity=4), "report vulnerabilities[1].severity must be a string, got number"),
    (_vuln(description={}), "report vulnerabilities[1].description must be a string, got object"),
    (_vuln(links="https://x"), "report vulnerabilities[1].links must be an array, got string"),
    (
        _vuln(links=["https://x", None]),
        "report vulnerabilities[1].links[1] must be a string, got null",
    ),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_malformed_reports(data: bytes | dict[str, Any], message: str) -> None:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(ValueError) as info:
        parse_report(HARBOR_REPORT, raw)
    assert str(info.value).startswith(message)
    if not message.endswith(": "):
        assert str(info.value) == message


def test_unsupported_media_types() -> None:
    for media_type in ("application/json", "application/vnd.scanner.adapter.vuln.report.raw"):
        with pytest.raises(ValueError) as info:
            parse_report(media_type, TRIVY_REPORT)
        assert str(info.value) == (
            f"unsupported report media type {media_type!r}: expected "
            "'application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0' or "
            "'application/vnd.security.vulnerability.report; version=1.1'"
        )


def test_not_bytes_nor_mapping() -> None:
    with pytest.raises(TypeError, match="report data must be bytes or a mapping, not str"):
        parse_report(HARBOR_REPORT, json.dumps(TRIVY_REPORT))  # type: ignore[arg-type]


def test_size_bound() -> None:
    padded = json.dumps(TRIVY_REPORT).encode().ljust(MAX_REPORT_BYTES)
    assert len(parse_report(HARBOR_REPORT, padded).vulnerabilities) == 9
    with pytest.raises(ValueError) as info:
        parse_report(HARBOR_REPORT, padded + b" ")
    assert str(info.value) == ("report is 67108865 bytes, more than the 67108864 (64 MiB) allowed")


def test_vulnerability_count_bound() -> None:
    item = {"id": "CVE-2024-0001", "severity": "Low"}
    assert len(_with([item] * MAX_VULNERABILITIES).vulnerabilities) == MAX_VULNERABILITIES
    with pytest.raises(ValueError) as info:
        _with([item] * (MAX_VULNERABILITIES + 1))
    assert str(info.value) == "report has 100001 vulnerabilities, more than the 100000 allowed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-14T10:11:12Z", datetime(2024, 5, 14, 10, 11, 12, tzinfo=UTC)),
        ("2024-05-14t10:11:12z", datetime(2024, 5, 14, 10, 11, 12, tzinfo=UTC)),
        ("2024-05-14 10:11:12.5-05:30", datetime(2024, 5, 14, 15, 41, 12, 500000, tzinfo=UTC)),
        ("2024-05-14T10:11:12.123456789Z", datetime(2024, 5, 14, 10, 11, 12, 123456, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-14T10:11:12",
        "2024-05-14T10:11Z",
        "2024-05-14T10:11:12+24:00",
        "\uff12\uff10\uff12\uff14-05-14T10:11:12Z",
    ],
)
def test_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not an RFC 3339 date-time"):
        parse_rfc3339(text)


# --- counts and the worst ------------------------------------------------------------------------


def test_counts() -> None:
    assert counts(_report(TRIVY_REPORT)) == {
        "Unknown": 1,
        "Negligible": 1,
        "Low": 1,
        "Medium": 2,
        "High": 3,
        "Critical": 1,
    }
    assert list(counts(_report(TRIVY_REPORT))) == list(SEVERITIES)


def test_worst_orders_by_severity_then_fix_then_id() -> None:
    report = _report(TRIVY_REPORT)
    assert [(v.id, v.package) for v in worst(report, 100)] == [
        ("CVE-2023-45853", "zlib1g"),
        ("CVE-2023-44487", "libnghttp2-14"),  # fixable Highs before the one without a fix,
        ("CVE-2024-2961", "libc6"),
        ("CVE-2023-31484", "perl-base"),  # though its id sorts first
        ("CVE-2024-0727", "libssl3"),
        ("CVE-2024-0727", "openssl"),
        ("CVE-2022-0563", "util-linux"),
        ("CVE-2011-3374", "apt"),
        ("TEMP-0841856-B18BAF", "bash"),
    ]
    assert [v.id for v in worst(report, 2)] == ["CVE-2023-45853", "CVE-2023-44487"]
    assert len(worst(report)) == 9
    assert worst(report, 0) == worst(report, -1) == []


# --- the allowlist -------------------------------------------------------------------------------


def test_parse_allowlist() -> None:
    entries = parse_allowlist(
        [
            "CVE-2024-1234",
            " cve-2023-45853 ",
            {"id": "CVE-2023-44487"},
            {"id": "CVE-2024-2961", "expires": "2026-12-31"},
            {"id": "GHSA-qppj-fm5r-hxr3", "expires": "2026-12-31T18:00:00+01:00"},
            {"id": "CVE-2024-0727", "expires": date(2026, 12, 31)},  # TOML: expires = 2026-12-31
            {"id": "CVE-2022-0563", "expires": datetime(2026, 12, 31, 17, tzinfo=UTC)},
            {"id": "CVE-2011-3374", "expires": None},
        ]
    )
    end_of_2026 = datetime(2027, 1, 1, tzinfo=UTC)
    assert entries == (
        AllowEntry("CVE-2024-1234", None),
        AllowEntry("cve-2023-45853", None),
        AllowEntry("CVE-2023-44487", None),
        AllowEntry("CVE-2024-2961", end_of_2026),
        AllowEntry("GHSA-qppj-fm5r-hxr3", datetime(2026, 12, 31, 17, tzinfo=UTC)),
        AllowEntry("CVE-2024-0727", end_of_2026),
        AllowEntry("CVE-2022-0563", datetime(2026, 12, 31, 17, tzinfo=UTC)),
        AllowEntry("CVE-2011-3374", None),
    )
    assert parse_allowlist([]) == ()


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ("CVE-2024-1234", "allowlist must be a list of ids, got string"),
        ({"id": "CVE-2024-1234"}, "allowlist must be a list of ids, got object"),
        ([""], "allowlist[0] = '': id is empty"),
        ([42], "allowlist[0] = 42: must be an id or a table of id and expires"),
        (
            ["CVE-2024-1", "CVE-2024-2, CVE-2024-3"],
            "allowlist[1] = 'CVE-2024-2, CVE-2024-3': one id per item, without spaces, commas "
            "or control characters",
        ),
        (["x" * 257], f"allowlist[0] = {'x' * 257!r}: id is longer than 256 characters"),
        (
            ["CVE-2024-1", {"id": "cve-2024-1"}],
            "allowlist[1] = {'id': 'cve-2024-1'}: cve-2024-1 is already listed at allowlist[0]",
        ),
        ([{"expires": "2026-12-31"}], "allowlist[0] = {'expires': '2026-12-31'}: id is missing"),
        ([{"id": 1}], "allowlist[0] = {'id': 1}: id must be a string, got number"),
        (
            [{"id": "CVE-2024-1", "expire": "2026-12-31"}],
            "allowlist[0] = {'id': 'CVE-2024-1', 'expire': '2026-12-31'}: unknown key 'expire' "
            "(use id and expires)",
        ),
        (
            [{"id": "CVE-2024-1", "expires": "soon"}],
            "allowlist[0] = {'id': 'CVE-2024-1', 'expires': 'soon'}: expires 'soon' is neither "
            "a date (2026-12-31) nor an RFC 3339 date-time (2026-12-31T18:00:00Z)",
        ),
        (
            [{"id": "CVE-2024-1", "expires": "2026-02-30"}],
            "allowlist[0] = {'id': 'CVE-2024-1', 'expires': '2026-02-30'}: expires '2026-02-30' "
            "is not a date (day is out of range for month)",
        ),
        (
            [{"id": "CVE-2024-1", "expires": "2026-12-31T18:00:00"}],
            "allowlist[0] = {'id': 'CVE-2024-1', 'expires': '2026-12-31T18:00:00'}: expires "
            "'2026-12-31T18:00:00' is neither a date (2026-12-31) nor an RFC 3339 date-time "
            "(2026-12-31T18:00:00Z)",
        ),
        (
            [{"id": "CVE-2024-1", "expires": datetime(2026, 12, 31, 18)}],
            "allowlist[0] = {'id': 'CVE-2024-1', 'expires': datetime.datetime(2026, 12, 31, 18, "
            "0)}: expires 2026-12-31T18:00:00 needs a UTC offset (e.g. Z)",
        ),
        (
            [{"id": "CVE-2024-1", "expires": 20261231}],
            "allowlist[0] = {'id': 'CVE-2024-1', 'expires': 20261231}: expires must be a date "
            "or a date-time, got number",
        ),
    ],
)
def test_parse_allowlist_names_the_bad_item(items: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_allowlist(items)
    assert str(info.value) == message


def test_expiry() -> None:
    day = parse_allowlist([{"id": "CVE-1", "expires": "2024-06-01"}])[0]
    assert day.active(datetime(2024, 6, 1, 23, 59, 59, tzinfo=UTC))
    assert not day.active(datetime(2024, 6, 2, tzinfo=UTC))
    instant = parse_allowlist([{"id": "CVE-1", "expires": "2024-06-01T12:00:00Z"}])[0]
    assert instant.active(NOW - timedelta(microseconds=1))
    assert not instant.active(NOW)  # Harbor: expired once now >= expires_at
    assert instant.active(datetime(2024, 6, 1, 11, 59))  # a naive now is UTC
    assert AllowEntry("CVE-1", None).active(datetime.max.replace(tzinfo=UTC))


# --- the gate ------------------------------------------------------------------------------------

HARBOR_PREFIX = (
    "current image with {} cannot be pulled due to configured policy in 'Prevent images with "
    'vulnerability severity of "{}" or higher from running.\' To continue with pull, please '
    "contact your "
)


def test_gate_blocks_with_harbors_message() -> None:
    result = gate(_report(TRIVY_REPORT), "High", [], NOW)
    assert result == GateResult(
        blocked=True,
        count=4,
        message=(
            "current image with 4 vulnerabilities cannot be pulled due to configured policy in "
            "'Prevent images with vulnerability severity of \"High\" or higher from running.' "
            "To continue with pull, please contact your administrator to exempt matched "
            "vulnerabilities through configuring the [[pull_policies]] allowlist: "
            "CVE-2023-45853, CVE-2023-31484, CVE-2023-44487, CVE-2024-2961."
        ),
        matched=("CVE-2023-45853", "CVE-2023-31484", "CVE-2023-44487", "CVE-2024-2961"),
        bypassed=(),
    )
    assert result.message.startswith(HARBOR_PREFIX.format("4 vulnerabilities", "High"))


def test_gate_counts_an_id_once() -> None:
    # CVE-2024-0727 is in openssl and libssl3: one vulnerability to allowlist.
    result = gate(_report(TRIVY_REPORT), "medium", [], NOW)
    assert result.count == 5
    assert result.matched[-1] == "CVE-2024-0727"


def test_gate_one_vulnerability() -> None:
    result = gate(_report(TRIVY_REPORT), "Critical", [], NOW)
    assert result.message == (
        "current image with 1 vulnerability cannot be pulled due to configured policy in "
        "'Prevent images with vulnerability severity of \"Critical\" or higher from running.' "
        "To continue with pull, please contact your administrator to exempt matched "
        "vulnerabilities through configuring the [[pull_policies]] allowlist: CVE-2023-45853."
    )


def test_gate_lists_ten_and_counts_the_rest() -> None:
    report = _with([{"id": f"CVE-2024-{i:04d}", "severity": "Critical"} for i in range(12)])
    result = gate(report, "Critical", [], NOW)
    assert result.count == 12
    assert result.message.endswith(
        "allowlist: CVE-2024-0000, CVE-2024-0001, CVE-2024-0002, CVE-2024-0003, CVE-2024-0004, "
        "CVE-2024-0005, CVE-2024-0006, CVE-2024-0007, CVE-2024-0008, CVE-2024-0009 and 2 more."
    )
    assert len(result.matched) == 12


def test_gate_allowlist_lets_through() -> None:
    allow = parse_allowlist(["cve-2023-45853"])
    result = gate(_report(TRIVY_REPORT), "Critical", allow, NOW)
    assert result == GateResult(False, 0, "", (), ("CVE-2023-45853",))
    below = gate(_report(TRIVY_REPORT), "Critical", parse_allowlist(["CVE-2024-0727"]), NOW)
    assert below.bypassed == ()  # Medium: below the threshold, nothing to let through


def test_gate_passes_below_the_threshold_and_without_vulnerabilities() -> None:
    assert gate(_report(GENERIC_REPORT), "Critical", [], NOW) == GateResult(False, 0, "", ())
    assert not gate(_with([]), "Unknown", [], NOW).blocked


def test_an_entry_expiring_yesterday_blocks_again() -> None:
    report = _report(TRIVY_REPORT)
    yesterday = parse_allowlist([{"id": "CVE-2023-45853", "expires": "2024-05-31"}])
    today = parse_allowlist([{"id": "CVE-2023-45853", "expires": "2024-06-01"}])
    assert gate(report, "Critical", yesterday, NOW).matched == ("CVE-2023-45853",)
    assert not gate(report, "Critical", today, NOW).blocked
    lapsed_now = parse_allowlist([{"id": "CVE-2023-45853", "expires": "2024-06-01T12:00:00Z"}])
    assert gate(report, "Critical", lapsed_now, NOW).blocked


def test_an_unknown_threshold_fails_closed() -> None:
    result = gate(_report(TRIVY_REPORT), "hgih", [], NOW)
    assert result.count == 8
    assert '"Unknown" or higher' in result.message


# --- properties ----------------------------------------------------------------------------------

IDS = [f"CVE-2024-{i:04d}" for i in range(8)] + ["GHSA-qppj-fm5r-hxr3"]
severity_names = st.sampled_from([*SEVERITIES, "critical", "HIGH", "moderate", "", "None"])
vulnerability_items = st.fixed_dictionaries(
    {"id": st.sampled_from(IDS), "severity": severity_names},
    optional={"fix_version": st.sampled_from(["", "1.2.3"]), "package": st.sampled_from("abc")},
)
reports = st.lists(vulnerability_items, max_size=30).map(_with)
moments = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2025, 1, 1), timezones=st.just(UTC)
)
naive_moments = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2025, 1, 1))
entries = st.builds(
    AllowEntry,
    st.sampled_from(IDS).map(lambda i: i.lower() if i.endswith(("1", "3")) else i),
    st.none() | moments | naive_moments,
)
allowlists = st.lists(entries, max_size=6)
thresholds = st.sampled_from(SEVERITIES) | st.text(max_size=10)


@settings(max_examples=300)
@given(reports, thresholds, allowlists, moments | naive_moments)
def test_gate_never_raises_and_agrees_with_itself(
    report: Report, threshold: str, allowlist: list[AllowEntry], now: datetime
) -> None:
    result = gate(report, threshold, allowlist, now)
    assert result.blocked == bool(result.matched) == (result.count > 0)
    assert result.count == len(result.matched) == len(set(result.matched))
    assert (result.message != "") == result.blocked
    allowed = {e.cve.casefold() for e in allowlist if e.active(now)}
    floor = severity_rank(threshold)
    above = [v for v in report.vulnerabilities if v.rank >= floor]
    assert set(result.matched) == {v.id for v in above if v.id.casefold() not in allowed}
    assert set(result.bypassed) == {v.id for v in above if v.id.casefold() in allowed}
    if result.blocked:
        assert f"with {result.count} vulnerabilit" in result.message
        assert f'severity of "{SEVERITIES[floor]}" or higher' in result.message


@given(reports, allowlists, moments)
def test_raising_the_threshold_never_blocks_more(
    report: Report, allowlist: list[AllowEntry], now: datetime
) -> None:
    results = [gate(report, t, allowlist, now) for t in SEVERITIES]
    for lower, higher in itertools.pairwise(results):
        assert set(higher.matched) <= set(lower.matched)
        assert higher.count <= lower.count
        assert lower.blocked or not higher.blocked


@given(reports, moments)
def test_allowlisting_more_never_blocks_more(report: Report, now: datetime) -> None:
    ids = sorted({v.id for v in report.vulnerabilities})
    previous = gate(report, "Unknown", [], now)
    for i in range(len(ids)):
        current = gate(report, "Unknown", [AllowEntry(x, None) for x in ids[: i + 1]], now)
        assert set(current.matched) <= set(previous.matched)
        previous = current
    assert not previous.blocked


@given(reports)
def test_counts_and_worst_agree(report: Report) -> None:
    by_severity = counts(report)
    assert sum(by_severity.values()) == len(report.vulnerabilities)
    ranked = worst(report, len(report.vulnerabilities))
    assert sorted(ranked, key=id) == sorted(report.vulnerabilities, key=id)
    keys = [(-v.rank, v.fix_version is None, v.id) for v in ranked]
    assert keys == sorted(keys)
    top = max((v.rank for v in report.vulnerabilities), default=None)
    assert report.severity == ("None" if top is None else SEVERITIES[top])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "generated_at",
                    "vulnerabilities",
                    "id",
                    "severity",
                    "links",
                    "error",
                    "expires",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(json_values)
def test_parse_report_raises_only_value_error(value: Any) -> None:
    for data in (json.dumps(value).encode(), value):
        if not isinstance(data, bytes) and not isinstance(data, dict):
            continue
        try:
            report = parse_report(HARBOR_REPORT, data)
        except ValueError as exc:
            assert str(exc).startswith("report ")
        else:
            assert all(v.severity in SEVERITIES for v in report.vulnerabilities)


@given(st.lists(json_values | st.dates() | st.datetimes(), max_size=4))
def test_parse_allowlist_raises_only_value_error(items: list[Any]) -> None:
    try:
        parse_allowlist(items)
    except ValueError as exc:
        assert str(exc).startswith("allowlist")


# --- `edgecache report IMAGE` --------------------------------------------------------------------


def test_summary_text() -> None:
    text = summary_text(_report(TRIVY_REPORT), "registry.example/library/nginx:1.25", n=6)
    assert text == (
        "Vulnerability report for registry.example/library/nginx:1.25\n"
        "scanner       Trivy v0.51.1 (Aqua Security)\n"
        "generated at  2024-05-14 10:11:12 UTC\n"
        "severity      Critical\n"
        "counts        Critical 1, High 3, Medium 2, Low 1, Negligible 1, Unknown 1 (9 total)\n"
        "\n"
        "id              severity  package        version           fixed in\n"
        "CVE-2023-45853  Critical  zlib1g         1:1.2.13.dfsg-1   -\n"
        "CVE-2023-44487  High      libnghttp2-14  1.52.0-1          1.52.0-1+deb12u1\n"
        "CVE-2024-2961   High      libc6          2.36-9+deb12u4    2.36-9+deb12u7\n"
        "CVE-2023-31484  High      perl-base      5.36.0-7+deb12u1  -\n"
        "CVE-2024-0727   Medium    libssl3        3.0.11-1~deb12u2  3.0.13-1~deb12u1\n"
        "CVE-2024-0727   Medium    openssl        3.0.11-1~deb12u2  3.0.13-1~deb12u1\n"
        "(6 most severe of 9 shown)"
    )


def test_summary_text_without_vulnerabilities() -> None:
    doc = {"generated_at": "2024-05-14T12:00:00+02:00", "vulnerabilities": None}
    assert summary_text(parse_report(VULN_REPORT_11, doc), "team/api@sha256:abc") == (
        "Vulnerability report for team/api@sha256:abc\n"
        "scanner       -\n"
        "generated at  2024-05-14 10:00:00 UTC\n"
        "severity      None\n"
        "counts        Critical 0, High 0, Medium 0, Low 0, Negligible 0, Unknown 0 (0 total)\n"
        "\n"
        "No vulnerabilities."
    )


def test_summary_text_is_terminal_safe() -> None:
    report = _with(
        [
            {
                "id": "CVE-2024-0001",
                "package": "evil\x1b]0;owned\x07pkg",
                "version": "1" * 60,
                "severity": "High",
            }
        ]
    )
    text = summary_text(report, "img\x1b[2J")
    assert "\x1b" not in text and "\x07" not in text
    assert "evil?]0;owned?pkg" in text
    assert "1" * 45 + "..." in text
    assert text.splitlines()[0] == "Vulnerability report for img?[2J"
    assert text.splitlines()[1] == "scanner       Trivy"


def test_naive_now_is_utc() -> None:
    allow = parse_allowlist([{"id": "CVE-2023-45853", "expires": "2024-06-01T12:00:00Z"}])
    report = _report(TRIVY_REPORT)
    assert not gate(report, "Critical", allow, datetime(2024, 6, 1, 11, 59)).blocked
    assert gate(report, "Critical", allow, datetime(2024, 6, 1, 12, 0)).blocked
    assert (
        gate(
            report,
            "Critical",
            allow,
            datetime(2024, 6, 1, 13, 0, tzinfo=timezone(timedelta(hours=2))),
        ).blocked
        is False
    )
