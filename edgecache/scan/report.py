"""Vulnerability reports from Harbor-compatible scanner adapters, and the pull gate on them.

Pure: callers pass the bytes (or the already parsed JSON) an adapter answered
``GET /api/v1/scan/{id}/report`` with, a severity threshold, an allowlist and the time, and get
values back. Nothing here opens a file or a socket.

Reports. Both report media types an adapter produces for vulnerabilities,
``application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0`` and
``application/vnd.security.vulnerability.report; version=1.1``, carry the same
``HarborVulnerabilityReport`` (pluggable-scanner-spec, OpenAPI v1.1 and v1.2): ``generated_at``,
``artifact``, ``scanner`` {name, vendor, version}, ``severity`` and ``vulnerabilities``, items of
{id, package, version, fix_version, severity, description, links, and in version 1.1
preferred_cvss, cwe_ids, vendor_attributes}. The spec marks no field required; here a report
must have ``generated_at`` (RFC 3339) and ``vulnerabilities`` (an array, or null for none, which
is what Go writes for an empty slice), and every vulnerability an ``id``: a report without them
cannot be dated or gated on, and an adapter's ``{"error": {...}}`` body must not pass for a clean
report. Fields the spec does not type (``artifact``, CVSS, vendor attributes) stay in ``raw``.

Severities. Unknown < Negligible < Low < Medium < High < Critical, ranked 0 to 5 as Harbor's
``vuln.Severity.Code()`` ranks them (src/pkg/scan/vuln/severity.go, where "None", the overall
severity of a report without vulnerabilities, also ranks 0). Names are matched case-insensitively.
A severity string a scanner made up ranks as Unknown: Harbor stores every reported severity
through ``ParseSeverityVersion3``, which turns unrecognised names into Unknown. A threshold is
configuration, and ``parse_severity`` rejects a name it does not know instead.

The gate is Harbor's "Prevent vulnerable images from running" (src/server/middleware/vulnerable/
vulnerable.go): an image is blocked when a vulnerability at or above the threshold is not on the
allowlist, and the 412 message keeps Harbor's wording, pointing at edgecache's
``[[pull_policies]] allowlist`` instead of Harbor's CVE allowlist and naming the vulnerabilities
to exempt. Harbor's allowlist (src/pkg/allowlist/models) is a list of ``cve_id`` items with one
``expires_at`` for the whole list, expired once ``now >= expires_at``; here every entry has its
own optional expiry, with the same rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from edgecache.cliformat import table

from ..oci.jsontext import json_type as _json_type

SEVERITIES = ("Unknown", "Negligible", "Low", "Medium", "High", "Critical")
HARBOR_REPORT = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
VULN_REPORT_11 = "application/vnd.security.vulnerability.report; version=1.1"
REPORT_MEDIA_TYPES = (HARBOR_REPORT, VULN_REPORT_11)

# The overall severity of a report without vulnerabilities (Harbor's vuln.None); ranks 0.
NO_SEVERITY = "None"

MAX_REPORT_BYTES = 64 * 1024 * 1024
MAX_VULNERABILITIES = 100_000
MAX_ID_LENGTH = 256
MAX_LISTED = 10  # ids a gate message names before "and N more"
ALLOWLIST_KEY = "[[pull_policies]] allowlist"

_RANKS = {name.casefold(): rank for rank, name in enumerate(SEVERITIES)}
_CANONICAL = {name.casefold(): name for name in SEVERITIES}


def severity_rank(name: str) -> int:
    """0 (Unknown) to 5 (Critical), whatever the case; anything else ranks as Unknown."""
    if not isinstance(name, str):
        return 0
    return _RANKS.get(name.strip().casefold(), 0)


def parse_severity(name: str) -> str:
    """The canonical spelling of a configured severity ("high" -> "High"); ValueError if none."""
    if isinstance(name, str) and (canonical := _CANONICAL.get(name.strip().casefold())):
        return canonical
    raise ValueError(f"unknown severity {name!r}: use one of {', '.join(SEVERITIES)}")


def _severity_name(name: str) -> str:
    """The canonical spelling, or Unknown for what no scanner spec knows."""
    return _CANONICAL.get(name.strip().casefold(), "Unknown")


# --- reports -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vulnerability:
    id: str
    package: str
    version: str
    fix_version: str | None  # None: no fixed version known
    severity: str  # canonical, one of SEVERITIES
    description: str = ""
    links: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        return severity_rank(self.severity)


@dataclass(frozen=True)
class Report:
    media_type: str  # HARBOR_REPORT or VULN_REPORT_11
    generated_at: datetime  # timezone-aware
    scanner: Mapping[str, str] = field(hash=False)  # name, vendor, version as the adapter says
    severity: str  # the highest of the vulnerabilities, "None" when there are none
    vulnerabilities: tuple[Vulnerability, ...]
    raw: Mapping[str, Any] = field(hash=False, repr=False)  # the report as parsed, read-only


_QUOTE = '"'


def _media_type_key(media_type: str) -> str:
    """`A/B ; Version="1.1"` -> `a/b; version=1.1`: parameters compared as RFC 9110 says."""
    kind, *params = media_type.split(";")
    parts = [kind.strip().lower()]
    for param in params:
        name, _, value = param.partition("=")
        parts.append(f"{name.strip().lower()}={value.strip().strip(_QUOTE)}")
    return "; ".join(parts)


_MEDIA_TYPES = {_media_type_key(m): m for m in REPORT_MEDIA_TYPES}

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time, offset required; digits beyond microseconds (Go) are dropped."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    micro = int((match.group(7) or "0")[:6].ljust(6, "0"))
    if match.group(8):
        tz: timezone = UTC
    else:
        sign = -1 if match.group(9) == "-" else 1
        hours, minutes = int(match.group(10)), int(match.group(11))
        if hours > 23 or minutes > 59:
            raise ValueError(f"{text!r} is not an RFC 3339 date-time (bad offset)")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    second = min(second, 59) if second == 60 else second  # a leap second: keep the instant close
    try:
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        moment.astimezone(UTC)  # 0001-01-01T00:00:00+01:00 has no UTC time
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time ({exc})") from None
    return moment


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load(data: bytes | bytearray | memoryview) -> Any:
    if len(data) > MAX_REPORT_BYTES:
        raise ValueError(
            f"report is {len(data)} bytes, more than the {MAX_REPORT_BYTES} (64 MiB) allowed"
        )
    try:
        return json.loads(bytes(data), parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("report is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge integers
        raise ValueError(f"report is not valid JSON: {exc}") from None


def _string(value: object, where: str, default: str | None = "") -> str:
    """A string field; null is `default`, or not allowed when that is None."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"report {where} must be a string, got {_json_type(value)}")
    return value


def _vulnerability(item: object, where: str) -> Vulnerability:
    if not isinstance(item, Mapping):
        raise ValueError(f"report {where} must be an object, got {_json_type(item)}")
    if item.get("id") is None:
        raise ValueError(f"report {where}.id is missing")
    ident = _string(item["id"], f"{where}.id").strip()
    if not ident:
        raise ValueError(f"report {where}.id is empty")
    if len(ident) > MAX_ID_LENGTH:
        raise ValueError(
            f"report {where}.id is {len(ident)} characters long, more than {MAX_ID_LENGTH}"
        )
    if not ident.isprintable():
        raise ValueError(f"report {where}.id {ident!r} has control characters")
    links = item.get("links")
    if links is None:
        links = []
    if not isinstance(links, list | tuple):
        raise ValueError(f"report {where}.links must be an array, got {_json_type(links)}")
    return Vulnerability(
        id=ident,
        package=_string(item.get("package"), f"{where}.package"),
        version=_string(item.get("version"), f"{where}.version"),
        fix_version=_string(item.get("fix_version"), f"{where}.fix_version") or None,
        severity=_severity_name(_string(item.get("severity"), f"{where}.severity", "Unknown")),
        description=_string(item.get("description"), f"{where}.description"),
        links=tuple(_string(link, f"{where}.links[{i}]", None) for i, link in enumerate(links)),
    )


def parse_report(media_type: str, data: bytes | Mapping[str, Any]) -> Report:
    """A HarborVulnerabilityReport of either media type; ValueError saying what is wrong."""
    canonical = (
        _MEDIA_TYPES.get(_media_type_key(media_type)) if isinstance(media_type, str) else None
    )
    if canonical is None:
        raise ValueError(
            f"unsupported report media type {media_type!r}: "
            f"expected {HARBOR_REPORT!r} or {VULN_REPORT_11!r}"
        )
    if isinstance(data, bytes | bytearray | memoryview):
        doc = _load(data)
    elif isinstance(data, Mapping):
        doc = data
    else:
        raise TypeError(f"report data must be bytes or a mapping, not {type(data).__name__}")
    if not isinstance(doc, Mapping):
        raise ValueError(f"report must be a JSON object, got {_json_type(doc)}")
    if "vulnerabilities" not in doc and isinstance(doc.get("error"), Mapping):
        message = doc["error"].get("message")
        raise ValueError(f"report is an adapter error: {message!r}")

    if doc.get("generated_at") is None:
        raise ValueError("report generated_at is missing")
    generated = _string(doc["generated_at"], "generated_at")
    try:
        generated_at = parse_rfc3339(generated)
    except ValueError as exc:
        raise ValueError(f"report generated_at {exc}") from None

    scanner_doc = doc.get("scanner")
    if scanner_doc is None:
        scanner_doc = {}
    if not isinstance(scanner_doc, Mapping):
        raise ValueError(f"report scanner must be an object, got {_json_type(scanner_doc)}")
    scanner = {
        key: _string(scanner_doc[key], f"scanner.{key}")
        for key in ("name", "vendor", "version")
        if scanner_doc.get(key) is not None
    }
    _string(doc.get("severity"), "severity")  # typed, though the vulnerabilities decide

    if "vulnerabilities" not in doc:
        raise ValueError("report vulnerabilities is missing (an array, or null for none)")
    items = doc["vulnerabilities"]
    if items is None:
        items = []
    if not isinstance(items, list | tuple):
        raise ValueError(f"report vulnerabilities must be an array, got {_json_type(items)}")
    if len(items) > MAX_VULNERABILITIES:
        raise ValueError(
            f"report has {len(items)} vulnerabilities, more than the {MAX_VULNERABILITIES} allowed"
        )
    vulnerabilities = tuple(
        _vulnerability(item, f"vulnerabilities[{i}]") for i, item in enumerate(items)
    )
    top = max((v.rank for v in vulnerabilities), default=None)
    return Report(
        media_type=canonical,
        generated_at=generated_at,
        scanner=MappingProxyType(scanner),
        severity=NO_SEVERITY if top is None else SEVERITIES[top],
        vulnerabilities=vulnerabilities,
        raw=MappingProxyType(dict(doc)),
    )


def counts(report: Report) -> dict[str, int]:
    """Vulnerabilities (report entries, one per id and package) by severity, all six keys."""
    result = dict.fromkeys(SEVERITIES, 0)
    for v in report.vulnerabilities:
        result[SEVERITIES[v.rank]] += 1
    return result


def _worst_key(v: Vulnerability) -> tuple[int, bool, str, str, str]:
    return (-v.rank, v.fix_version is None, v.id, v.package, v.version)


def worst(report: Report, n: int = 10) -> list[Vulnerability]:
    """The n most severe: highest severity first, then those with a fix, then by id."""
    return sorted(report.vulnerabilities, key=_worst_key)[: max(n, 0)]


# --- allowlist -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowEntry:
    cve: str
    expires: datetime | None  # from this instant on the entry no longer counts; None: never

    def active(self, now: datetime) -> bool:
        """Harbor's rule: expired once now >= expires (naive times are taken as UTC)."""
        return self.expires is None or _aware(now) < _aware(self.expires)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_ALLOW_KEYS = frozenset({"id", "expires"})


def _expiry(value: object) -> datetime | None:
    """A date counts through that whole day (UTC); a date-time is the instant it ends."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"expires {value.isoformat()} needs a UTC offset (e.g. Z)")
        return value
    if isinstance(value, date):
        start = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return start + timedelta(days=1) if value < date.max else datetime.max.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError(f"expires must be a date or a date-time, got {_json_type(value)}")
    text = value.strip()
    if _DATE.fullmatch(text):
        try:
            return _expiry(date.fromisoformat(text))
        except ValueError as exc:
            raise ValueError(f"expires {value!r} is not a date ({exc})") from None
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise ValueError(
            f"expires {value!r} is neither a date (2026-12-31) "
            "nor an RFC 3339 date-time (2026-12-31T18:00:00Z)"
        ) from None


def _allow_id(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"id must be a string, got {_json_type(value)}")
    ident = value.strip()
    if not ident:
        raise ValueError("id is empty")
    if len(ident) > MAX_ID_LENGTH:
        raise ValueError(f"id is longer than {MAX_ID_LENGTH} characters")
    if not ident.isprintable() or any(c.isspace() or c == "," for c in ident):
        raise ValueError("one id per item, without spaces, commas or control characters")
    return ident


def parse_allowlist(items: Sequence[str | Mapping[str, Any]]) -> tuple[AllowEntry, ...]:
    """`"CVE-2024-1234"` or `{id = "CVE-...", expires = "2026-12-31"}` items, ids unique."""
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise ValueError(f"allowlist must be a list of ids, got {_json_type(items)}")
    entries: list[AllowEntry] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        try:
            if isinstance(item, str):
                entry = AllowEntry(_allow_id(item), None)
            elif isinstance(item, Mapping):
                unknown = sorted(str(k) for k in item if k not in _ALLOW_KEYS)
                if unknown:
                    raise ValueError(f"unknown key {unknown[0]!r} (use id and expires)")
                if "id" not in item:
                    raise ValueError("id is missing")
                entry = AllowEntry(_allow_id(item["id"]), _expiry(item.get("expires")))
            else:
                raise ValueError("must be an id or a table of id and expires")
            key = entry.cve.casefold()
            if key in seen:
                raise ValueError(f"{entry.cve} is already listed at allowlist[{seen[key]}]")
        except ValueError as exc:
            raise ValueError(f"allowlist[{i}] = {item!r}: {exc}") from None
        seen[key] = i
        entries.append(entry)
    return tuple(entries)


# --- the gate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    blocked: bool
    count: int  # distinct ids at or above the threshold that no active entry allows
    message: str  # the 412 message when blocked, "" otherwise
    matched: tuple[str, ...]  # those ids, most severe first, then by id
    bypassed: tuple[str, ...] = ()  # ids at or above the threshold an active entry let through


def gate_message(count: int, threshold: str, matched: Sequence[str]) -> str:
    """Harbor's 412 wording, naming edgecache's allowlist and the ids to put on it."""
    thing = "vulnerabilities" if count > 1 else "vulnerability"  # Harbor: plural when > 1
    listed = ", ".join(matched[:MAX_LISTED])
    if len(matched) > MAX_LISTED:
        listed += f" and {len(matched) - MAX_LISTED} more"
    return (
        f"current image with {count} {thing} cannot be pulled due to configured policy in "
        f'\'Prevent images with vulnerability severity of "{threshold}" or higher from '
        f"running.' To continue with pull, please contact your administrator to exempt matched "
        f"vulnerabilities through configuring the {ALLOWLIST_KEY}: {listed}."
    )


def gate(
    report: Report, threshold: str, allowlist: Sequence[AllowEntry], now: datetime
) -> GateResult:
    """Block when a vulnerability at or above `threshold` has no active allowlist entry.

    An unknown threshold ranks as Unknown, the lowest, so it blocks the most (fail closed);
    configuration is checked earlier with parse_severity.
    """
    floor = severity_rank(threshold)
    name = SEVERITIES[floor]
    allowed = {entry.cve.casefold() for entry in allowlist if entry.active(now)}
    matched: dict[str, int] = {}
    bypassed: dict[str, int] = {}
    for v in report.vulnerabilities:
        rank = v.rank
        if rank < floor:
            continue
        into = bypassed if v.id.casefold() in allowed else matched
        into[v.id] = max(rank, into.get(v.id, 0))

    def ordered(ids: dict[str, int]) -> tuple[str, ...]:
        return tuple(sorted(ids, key=lambda i: (-ids[i], i)))

    ids = ordered(matched)
    message = gate_message(len(ids), name, ids) if ids else ""
    return GateResult(bool(ids), len(ids), message, ids, ordered(bypassed))


# --- `edgecache report IMAGE` --------------------------------------------------------------------


def _cell(text: str, limit: int = 48) -> str:
    """Report text made safe for a terminal: no control characters, not too wide."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scanner_text(scanner: Mapping[str, str]) -> str:
    name = " ".join(_cell(scanner[k]) for k in ("name", "version") if scanner.get(k))
    vendor = _cell(scanner["vendor"]) if scanner.get("vendor") else ""
    if name and vendor:
        return f"{name} ({vendor})"
    return name or vendor or "-"


def summary_text(report: Report, image: str, n: int = 10) -> str:
    """What `edgecache report IMAGE` prints: who scanned when, counts, the n worst."""
    by_severity = counts(report)
    total = len(report.vulnerabilities)
    generated = report.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    line = ", ".join(f"{name} {by_severity[name]}" for name in reversed(SEVERITIES))
    lines = [
        f"Vulnerability report for {_cell(image, 200)}",
        f"scanner       {_scanner_text(report.scanner)}",
        f"generated at  {generated}",
        f"severity      {report.severity}",
        f"counts        {line} ({total} total)",
    ]
    if not total:
        return "\n".join([*lines, "", "No vulnerabilities."])
    shown = worst(report, n)
    rows = [
        (
            _cell(v.id, MAX_ID_LENGTH),
            v.severity,
            _cell(v.package) or "-",
            _cell(v.version) or "-",
            _cell(v.fix_version) if v.fix_version else "-",
        )
        for v in shown
    ]
    lines += ["", *table(["id", "severity", "package", "version", "fixed in"], rows, right=())]
    if len(shown) < total:
        lines.append(f"({len(shown)} most severe of {total} shown)")
    return "\n".join(lines)
