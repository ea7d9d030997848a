"""[scanners.NAME], [scan] and [[pull_policies]]: checked at start, each mistake named.

[scanners.trivy]
url = "http://trivy-adapter:8080"
auth = "apikey"                      # none, basic, bearer, apikey
secret_file = "/etc/edgecache/trivy-key"   # the password, token or API key
username = ""                        # basic only
default = true

[scan]
on = ["push", "preload", "pull"]     # what starts a scan (besides edgecache scan / admin)
schedule = "0 4 * * *"               # rescans of every image scanned before
concurrency = 2
timeout = 600                        # seconds one scan may take, report included

[[pull_policies]]
repositories = ["docker.io/**"]
block_severity = "High"
allowlist = ["CVE-2024-1234", { id = "CVE-2023-9", expires = "2027-01-31" }]
unscanned = "wait"                   # allow, wait, deny
wait = 30                            # seconds a first pull waits for its scan
on_scanner_down = "deny"             # allow, deny: when wait got no answer
require_signature = false
public_keys = ["/etc/edgecache/cosign.pub"]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configvalues import ConfigError, coerce, read_secret
from ..preheat.policy import BadPattern, Selector, check_pattern
from .report import AllowEntry, parse_allowlist, parse_severity

AUTH = ("none", "basic", "bearer", "apikey")
EVENTS = ("push", "preload", "pull")
UNSCANNED = ("allow", "wait", "deny")
MAX_POLICIES = 100
MAX_KEYS = 16
MAX_KEY_FILE = 64 << 10  # bytes read of a public key file
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ScannerConfig:
    name: str
    url: str
    auth: str = "none"
    username: str = ""
    secret: str = field(default="", repr=False)
    default: bool = False
    ca_file: str = ""
    registry_url: str = ""  # how the adapter reaches this edgecache (default: its own URL)
    metadata_interval: float = 300.0

    def headers(self) -> dict[str, str]:
        """The adapter's own credentials (never logged)."""
        if self.auth == "basic":
            import base64

            raw = base64.b64encode(f"{self.username}:{self.secret}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        if self.auth == "bearer":
            return {"Authorization": f"Bearer {self.secret}"}
        if self.auth == "apikey":
            return {"X-ScannerAdapter-API-Key": self.secret}
        return {}


@dataclass(frozen=True)
class ScanConfig:
    on: tuple[str, ...] = ()
    schedule: str = ""
    concurrency: int = 2
    timeout: float = 600.0
    repositories: tuple[str, ...] = ("**",)


@dataclass(frozen=True)
class PullPolicy:
    selector: Selector
    name: str = ""
    block_severity: str = ""  # "" = no severity gate
    allowlist: tuple[AllowEntry, ...] = ()
    unscanned: str = "allow"
    wait: float = 30.0
    on_scanner_down: str = "allow"
    require_signature: bool = False
    public_keys: tuple[bytes, ...] = field(default=(), repr=False)
    key_files: tuple[str, ...] = ()

    @property
    def needs_report(self) -> bool:
        return bool(self.block_severity) or self.unscanned != "allow"

    def as_table(self) -> dict[str, Any]:
        """The policy as the config / admin API writes it."""
        allowlist: list[Any] = [
            {"id": e.cve, "expires": e.expires.isoformat()} if e.expires else e.cve
            for e in self.allowlist
        ]
        return {
            "name": self.name,
            "repositories": list(self.selector.repositories),
            "block_severity": self.block_severity,
            "allowlist": allowlist,
            "unscanned": self.unscanned,
            "wait": self.wait,
            "on_scanner_down": self.on_scanner_down,
            "require_signature": self.require_signature,
            "public_keys": list(self.key_files),
        }


@dataclass(frozen=True)
class ScanSettings:
    scanners: Mapping[str, ScannerConfig] = field(default_factory=dict)
    scan: ScanConfig = field(default_factory=ScanConfig)
    policies: tuple[PullPolicy, ...] = ()

    @property
    def default_scanner(self) -> ScannerConfig | None:
        for scanner in self.scanners.values():
            if scanner.default:
                return scanner
        return next(iter(self.scanners.values()), None)

    def policy_for(self, repository: str) -> PullPolicy | None:
        """The first pull policy whose patterns match (None: nothing is gated)."""
        for policy in self.policies:
            if policy.selector.repository_matches(repository):
                return policy
        return None


_SCANNER_KEYS = (
    "url", "auth", "username", "secret_file", "default", "ca_file", "registry_url",
    "metadata_interval",
)  # fmt: skip
_POLICY_KEYS = (
    "name",
    "repositories", "block_severity", "allowlist", "unscanned", "wait", "on_scanner_down",
    "require_signature", "public_keys",
)  # fmt: skip


def parse(scanners: object, scan: object, policies: object) -> ScanSettings:
    parsed = _scanners(scanners)
    settings = ScanSettings(parsed, _scan(scan, parsed), _policies(policies, parsed))
    return settings


def _scanners(raw: object) -> dict[str, ScannerConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("scanners: expected [scanners.<name>] tables")
    found: dict[str, ScannerConfig] = {}
    for name, table in raw.items():
        where = f"scanners.{name}"
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: expected a name of letters, digits, '.', '_' and '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        for key in table:
            if key not in _SCANNER_KEYS:
                raise ConfigError(
                    f"{where}.{key}: unknown key (expected one of {', '.join(_SCANNER_KEYS)})"
                )
        if "url" not in table:
            raise ConfigError(f"{where}.url: required (the scanner adapter's URL)")
        values: dict[str, Any] = {"name": name}
        values["url"] = coerce(f"{where}.url", "url", table["url"], False)
        auth = table.get("auth", "none")
        if auth not in AUTH:
            raise ConfigError(f"{where}.auth = {auth!r}: expected one of {', '.join(AUTH)}")
        values["auth"] = auth
        if auth != "none":
            secret_file = table.get("secret_file")
            if not secret_file:
                what = {"basic": "password", "bearer": "token"}.get(auth, "API key")
                raise ConfigError(
                    f"{where}.secret_file: required with auth = {auth!r} (a file holding the "
                    f"{what})"
                )
            secret_file, secret = read_secret(f"{where}.secret_file", secret_file)
            if not secret or "\n" in secret:
                raise ConfigError(f"{where}.secret_file = {secret_file!r}: expected one line")
            values["secret"] = secret
        if auth == "basic":
            username = table.get("username")
            if not isinstance(username, str) or not username or ":" in username:
                raise ConfigError(f"{where}.username: required with auth = 'basic' (no ':')")
            values["username"] = username
        elif table.get("username"):
            raise ConfigError(f"{where}.username: only with auth = 'basic'")
        values["default"] = coerce(f"{where}.default", "bool", table.get("default", False), False)
        if table.get("registry_url"):
            values["registry_url"] = coerce(
                f"{where}.registry_url", "url", table["registry_url"], False
            )
        if table.get("ca_file"):
            from ..preheat.config import check_ca_file

            values["ca_file"] = check_ca_file(f"{where}.ca_file", table["ca_file"])
        interval = coerce(
            f"{where}.metadata_interval", "float", table.get("metadata_interval", 300.0), False
        )
        if interval < 1:
            raise ConfigError(
                f"{where}.metadata_interval = {interval:g}: expected at least 1 second"
            )
        values["metadata_interval"] = interval
        found[name] = ScannerConfig(**values)
    defaults = [s.name for s in found.values() if s.default]
    if len(defaults) > 1:
        raise ConfigError(
            f"scanners: {' and '.join(defaults)} are both default = true; expected one"
        )
    return found


def _scan(raw: object, scanners: Mapping[str, ScannerConfig]) -> ScanConfig:
    if raw is None:
        return ScanConfig()
    if not isinstance(raw, dict):
        raise ConfigError("scan: expected a [scan] table")
    allowed = ("on", "schedule", "concurrency", "timeout", "repositories")
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"scan.{key}: unknown key (expected one of {', '.join(allowed)})")
    on = coerce("scan.on", "list[str]", raw.get("on", []), False)
    for event in on:
        if event not in EVENTS:
            raise ConfigError(f"scan.on: {event!r}: expected events among {', '.join(EVENTS)}")
    schedule = coerce("scan.schedule", "cron", raw.get("schedule", ""), False)
    if (on or schedule) and not scanners:
        raise ConfigError("[scan] starts scans, but no [scanners.<name>] is configured")
    concurrency = coerce("scan.concurrency", "int", raw.get("concurrency", 2), False)
    if concurrency > 64:
        raise ConfigError(f"scan.concurrency = {concurrency}: at most 64")
    timeout = coerce("scan.timeout", "float", raw.get("timeout", 600.0), False)
    if not 1 <= timeout <= 86400:
        raise ConfigError(f"scan.timeout = {timeout:g}: expected 1 to 86400 seconds")
    repositories = _patterns("scan.repositories", raw.get("repositories", ["**"]))
    return ScanConfig(tuple(on), schedule, concurrency, timeout, repositories)


def _patterns(where: str, value: object) -> tuple[str, ...]:
    patterns = coerce(where, "list[str]", value, False)
    if not patterns:
        raise ConfigError(f'{where} = []: expected at least one pattern ("**": all)')
    for pattern in patterns:
        try:
            check_pattern(pattern)
        except BadPattern as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(patterns)


def _policies(raw: object, scanners: Mapping[str, ScannerConfig]) -> tuple[PullPolicy, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("pull_policies: expected [[pull_policies]] tables")
    if len(raw) > MAX_POLICIES:
        raise ConfigError(f"pull_policies: {len(raw)}; at most {MAX_POLICIES}")
    policies = tuple(
        parse_policy(f"pull_policies[{i}]", table, scanners, f"config-{i + 1}")
        for i, table in enumerate(raw)
    )
    names = [p.name for p in policies]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"pull_policies[{i}].name = {name!r}: used twice")
    return policies


def parse_policy(
    where: str, table: object, scanners: Mapping[str, ScannerConfig], name: str = ""
) -> PullPolicy:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    name = table.get("name", name)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}.name = {name!r}: expected a name of letters, digits, '.', '_' and '-'"
        )
    for key in table:
        if key not in _POLICY_KEYS:
            raise ConfigError(
                f"{where}.{key}: unknown key (expected one of {', '.join(_POLICY_KEYS)})"
            )
    repositories = _patterns(f"{where}.repositories", table.get("repositories", ["**"]))
    severity = ""
    if table.get("block_severity"):
        try:
            severity = parse_severity(str(table["block_severity"]))
        except ValueError as exc:
            raise ConfigError(f"{where}.block_severity: {exc}") from None
    try:
        allowlist = parse_allowlist(table.get("allowlist", []))
    except ValueError as exc:
        raise ConfigError(f"{where}.allowlist: {exc}") from None
    unscanned = table.get("unscanned", "allow")
    if unscanned not in UNSCANNED:
        raise ConfigError(
            f"{where}.unscanned = {unscanned!r}: expected one of {', '.join(UNSCANNED)}"
        )
    wait = coerce(f"{where}.wait", "float", table.get("wait", 30.0), False)
    if not 0 < wait <= 600:
        raise ConfigError(f"{where}.wait = {wait:g}: expected more than 0 and at most 600 seconds")
    down = table.get("on_scanner_down", "allow")
    if down not in ("allow", "deny"):
        raise ConfigError(f"{where}.on_scanner_down = {down!r}: expected allow or deny")
    if (severity or unscanned != "allow") and not scanners:
        raise ConfigError(
            f"{where}: block_severity and unscanned need a scanner; configure [scanners.<name>]"
        )
    require = coerce(
        f"{where}.require_signature", "bool", table.get("require_signature", False), False
    )
    files = coerce(f"{where}.public_keys", "list[str]", table.get("public_keys", []), False)
    if len(files) > MAX_KEYS:
        raise ConfigError(f"{where}.public_keys: {len(files)} files; at most {MAX_KEYS}")
    pems: list[bytes] = []
    for path in files:
        try:
            if not Path(path).is_file():  # a FIFO would hang the reading process
                raise ConfigError(f"{where}.public_keys: {path!r}: expected a PEM file")
            with open(path, "rb") as f:
                pems.append(f.read(MAX_KEY_FILE))
        except OSError as exc:
            raise ConfigError(
                f"{where}.public_keys: {path!r}: cannot read it ({exc.strerror})"
            ) from None
    if pems:
        from .cosign import BadKey, load_public_key

        for path, pem in zip(files, pems, strict=True):
            try:
                load_public_key(pem, path)
            except BadKey as exc:
                raise ConfigError(f"{where}.public_keys: {exc}") from None
    if files and not require:
        raise ConfigError(f"{where}.public_keys: set require_signature = true to use them")
    return PullPolicy(
        selector=Selector(repositories=repositories),
        name=name,
        block_severity=severity,
        allowlist=allowlist,
        unscanned=unscanned,
        wait=wait,
        on_scanner_down=down,
        require_signature=require,
        public_keys=tuple(pems),
        key_files=tuple(files),
    )
