"""[preheat]: policies (which images, when) and providers (where they go), checked at start.

    [preheat.providers.df]
    type = "dragonfly"            # "site" (always defined), "dragonfly" or "kraken"
    url = "http://manager:8080"
    token_file = "/etc/edgecache/dragonfly-pat"

    [[preheat.policies]]
    name = "releases"
    repositories = ["docker.io/acme/**"]
    tags = ["v*", "stable"]
    providers = ["site", "df"]
    on = ["push", "preload", "pull", "watch"]
    schedule = "0 2 * * *"
    watch = ["docker.io/acme/app:stable"]
    window = "22:00-06:00"
    bandwidth = "20MB"            # bytes a second this node's preheat downloads may take

The same tables (as JSON) are what the admin API's PUT preheat/policies/NAME takes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configvalues import ConfigError, coerce, parse_size, read_secret
from .policy import BadPattern, Platform, Selector, check_pattern

PROVIDER_TYPES = ("site", "dragonfly", "kraken")
EVENTS = ("push", "preload", "pull", "watch")
DRAGONFLY_SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")
SEVERITIES = ("low", "medium", "high", "critical")
MAX_POLICIES = 100
MAX_WATCHED = 100  # tags one policy watches
MAX_NAME = 64
# A capped download from a member must still move 64 KiB in 10 s (cache/fetch.py PEER_WINDOW).
MIN_BANDWIDTH = 100_000
MAX_BANDWIDTH = 10**12
MAX_PATTERNS = 100  # per list: every push or pull event matches them on the event loop
MAX_WATCH_INTERVAL = 7 * 86400.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class Window:
    """A daily time window in the server's local time; start > end wraps past midnight."""

    start: int  # minutes after midnight
    end: int

    @classmethod
    def parse(cls, text: str) -> Window | None:
        match = _WINDOW.fullmatch(text.strip())
        if match is None:
            return None
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        return cls(h1 * 60 + m1, h2 * 60 + m2)

    def contains(self, minute_of_day: float) -> bool:
        if self.start == self.end:
            return True  # "00:00-00:00": all day
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end

    def minutes_until_open(self, minute_of_day: float) -> float:
        if self.contains(minute_of_day):
            return 0.0
        return (self.start - minute_of_day) % 1440

    def __str__(self) -> str:
        return (
            f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"
        )


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    type: str
    url: str = ""
    # Dragonfly: the manager's personal access token (scope "job"), read from token_file.
    token_file: str = ""
    token: str = field(default="", repr=False)
    scope: str = "single_seed_peer"
    scheduler_cluster_ids: tuple[int, ...] = ()
    # Seconds the provider's job may take (Dragonfly: sent as nanoseconds), and that the pull
    # token handed to it stays valid.
    timeout: float = 3600.0
    # Kraken: an agent's base URL; GET <check_url>/tags/<repo:tag> confirms Kraken has a tag.
    check_url: str = ""
    # The URL the provider reaches this edgecache at (default: this server's own URL).
    registry_url: str = ""
    ca_file: str = ""
    retries: int = 3
    poll_interval: float = 2.0


@dataclass(frozen=True)
class PolicyConfig:
    name: str
    selector: Selector = field(default_factory=Selector)
    providers: tuple[str, ...] = ("site",)
    on: tuple[str, ...] = ()
    schedule: str = ""
    watch: tuple[str, ...] = ()  # "<repository>:<tag>" as clients name it (project paths)
    watch_interval: float = 300.0
    window: Window | None = None
    bandwidth: int = 0  # bytes a second; 0 = no cap
    enabled: bool = True
    # Only images whose stored reports have no vulnerability at or above this (scan/);
    # unscanned images are left out. "" = no filter.
    severity: str = ""

    def as_table(self) -> dict[str, Any]:
        """The policy as the config / admin API writes it."""
        table: dict[str, Any] = {
            "name": self.name,
            "repositories": list(self.selector.repositories),
            "tags": list(self.selector.tags),
            "signed": self.selector.signed,
            "platforms": [str(p) for p in self.selector.platforms],
            "providers": list(self.providers),
            "on": list(self.on),
            "schedule": self.schedule,
            "watch": list(self.watch),
            "watch_interval": self.watch_interval,
            "window": str(self.window) if self.window else "",
            "bandwidth": self.bandwidth,
            "enabled": self.enabled,
            "severity": self.severity,
        }
        return table


@dataclass(frozen=True)
class PreheatConfig:
    policies: tuple[PolicyConfig, ...] = ()
    providers: Mapping[str, ProviderConfig] = field(
        default_factory=lambda: {"site": ProviderConfig("site", "site")}
    )
    jobs_kept: int = 500

    def policy(self, name: str) -> PolicyConfig | None:
        return next((p for p in self.policies if p.name == name), None)


_PROVIDER_KEYS: dict[str, tuple[str, ...]] = {
    "site": ("type",),
    "dragonfly": (
        "type", "url", "token_file", "scope", "scheduler_cluster_ids", "timeout",
        "registry_url", "ca_file", "retries", "poll_interval",
    ),
    "kraken": (
        "type", "url", "check_url", "timeout", "registry_url", "ca_file", "retries",
        "poll_interval",
    ),
}  # fmt: skip

_POLICY_KEYS = (
    "name", "repositories", "tags", "signed", "platforms", "severity", "providers", "on",
    "schedule", "watch", "watch_interval", "window", "bandwidth", "enabled",
)  # fmt: skip


def parse(raw: object) -> PreheatConfig:
    """The [preheat] table of the config file."""
    if raw is None:
        return PreheatConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"preheat = {raw!r}: expected a [preheat] table")
    unknown = set(raw) - {"policies", "providers", "jobs_kept"}
    if unknown:
        raise ConfigError(
            f"preheat.{sorted(unknown)[0]}: unknown key (expected policies, providers, jobs_kept)"
        )
    providers = parse_providers(raw.get("providers", {}))
    jobs_kept = coerce("preheat.jobs_kept", "int", raw.get("jobs_kept", 500), False)
    policies_raw = raw.get("policies", [])
    if not isinstance(policies_raw, list):
        raise ConfigError("preheat.policies: expected [[preheat.policies]] tables")
    if len(policies_raw) > MAX_POLICIES:
        raise ConfigError(f"preheat.policies: {len(policies_raw)}; at most {MAX_POLICIES}")
    policies: list[PolicyConfig] = []
    for i, table in enumerate(policies_raw):
        policy = parse_policy(f"preheat.policies[{i}]", table, providers)
        if any(p.name == policy.name for p in policies):
            raise ConfigError(f"preheat.policies[{i}].name = {policy.name!r}: used twice")
        policies.append(policy)
    return PreheatConfig(tuple(policies), providers, jobs_kept)


def parse_providers(raw: object) -> dict[str, ProviderConfig]:
    if not isinstance(raw, dict):
        raise ConfigError("preheat.providers: expected [preheat.providers.<name>] tables")
    providers = {"site": ProviderConfig("site", "site")}
    for name, table in raw.items():
        where = f"preheat.providers.{name}"
        if not _NAME.fullmatch(name) or len(name) > MAX_NAME:
            raise ConfigError(f"{where}: expected a name of letters, digits, '.', '_' and '-'")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        kind = table.get("type")
        if kind not in PROVIDER_TYPES:
            raise ConfigError(
                f"{where}.type = {kind!r}: expected one of {', '.join(PROVIDER_TYPES)}"
            )
        for key in table:
            if key not in _PROVIDER_KEYS[kind]:
                raise ConfigError(
                    f"{where}.{key}: unknown key for a {kind} provider "
                    f"(expected one of {', '.join(_PROVIDER_KEYS[kind])})"
                )
        if kind == "site":
            providers[name] = ProviderConfig(name, "site")
            continue
        values: dict[str, Any] = {"name": name, "type": kind}
        if "url" not in table:
            raise ConfigError(f"{where}.url: required (the {kind} {_ROLE[kind]}'s URL)")
        values["url"] = coerce(f"{where}.url", "url", table["url"], False)
        for key in ("registry_url", "check_url"):
            if table.get(key):
                values[key] = coerce(f"{where}.{key}", "url", table[key], False)
        for key in ("timeout", "poll_interval"):
            if key in table:
                values[key] = coerce(f"{where}.{key}", "float", table[key], False)
                if values[key] <= 0:
                    raise ConfigError(f"{where}.{key} = {table[key]!r}: expected more than 0")
        if values.get("timeout", 0) > 86400:
            raise ConfigError(f"{where}.timeout = {table['timeout']!r}: at most 86400 seconds")
        if "retries" in table:
            values["retries"] = coerce(f"{where}.retries", "int0", table["retries"], False)
        if table.get("ca_file"):
            values["ca_file"] = check_ca_file(f"{where}.ca_file", table["ca_file"])
        if kind == "dragonfly":
            _dragonfly(where, table, values)
        providers[name] = ProviderConfig(**values)
    return providers


_ROLE = {"dragonfly": "manager", "kraken": "proxy"}


def _dragonfly(where: str, table: Mapping[str, Any], values: dict[str, Any]) -> None:
    token_file = table.get("token_file")
    if not token_file:
        raise ConfigError(
            f"{where}.token_file: required (a file holding a Dragonfly personal access token "
            "with the 'job' scope)"
        )
    token_file, token = read_secret(f"{where}.token_file", token_file)
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"{where}.token_file = {token_file!r}: expected one token, no spaces")
    values["token_file"], values["token"] = token_file, token
    scope = table.get("scope", "single_seed_peer")
    if scope not in DRAGONFLY_SCOPES:
        raise ConfigError(
            f"{where}.scope = {scope!r}: expected one of {', '.join(DRAGONFLY_SCOPES)}"
        )
    values["scope"] = scope
    ids = table.get("scheduler_cluster_ids", [])
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids
    ):
        raise ConfigError(
            f"{where}.scheduler_cluster_ids = {ids!r}: expected a list of positive integers"
        )
    values["scheduler_cluster_ids"] = tuple(ids)


def parse_policy(
    where: str, table: object, providers: Mapping[str, ProviderConfig]
) -> PolicyConfig:
    """One policy table (config file or admin API); ConfigError names the key at fault."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    for key in table:
        if key not in _POLICY_KEYS:
            raise ConfigError(
                f"{where}.{key}: unknown key (expected one of {', '.join(_POLICY_KEYS)})"
            )
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise ConfigError(
            f"{where}.name = {name!r}: expected a name of letters, digits, '.', '_' and '-' "
            f"(at most {MAX_NAME})"
        )
    where = f"preheat policy {name!r}" if where.startswith("admin") else where
    severity = ""
    if table.get("severity"):
        from ..scan.report import parse_severity

        try:
            severity = parse_severity(str(table["severity"]))
        except ValueError as exc:
            raise ConfigError(f"{where}.severity: {exc}") from None
    patterns: dict[str, tuple[str, ...]] = {}
    for key in ("repositories", "tags"):
        values = coerce(f"{where}.{key}", "list[str]", table.get(key, ["**"]), False)
        if not values:
            raise ConfigError(f'{where}.{key} = []: expected at least one pattern ("**": all)')
        if len(values) > MAX_PATTERNS:
            raise ConfigError(f"{where}.{key}: {len(values)} patterns; at most {MAX_PATTERNS}")
        for pattern in values:
            try:
                check_pattern(pattern)
            except BadPattern as exc:
                raise ConfigError(f"{where}.{key}: {exc}") from None
        patterns[key] = values
    signed = coerce(f"{where}.signed", "bool", table.get("signed", False), False)
    platforms: list[Platform] = []
    for text in coerce(f"{where}.platforms", "list[str]", table.get("platforms", []), False):
        try:
            platforms.append(Platform.parse(text))
        except ValueError as exc:
            raise ConfigError(f"{where}.platforms: {exc}") from None
    chosen = coerce(f"{where}.providers", "list[str]", table.get("providers", ["site"]), False)
    if not chosen:
        raise ConfigError(f"{where}.providers = []: expected at least one provider")
    for provider in chosen:
        if provider not in providers:
            raise ConfigError(
                f"{where}.providers: {provider!r} is not a provider (expected one of "
                f"{', '.join(providers)}; define others under [preheat.providers.<name>])"
            )
    on = coerce(f"{where}.on", "list[str]", table.get("on", []), False)
    for event in on:
        if event not in EVENTS:
            raise ConfigError(f"{where}.on: {event!r}: expected events among {', '.join(EVENTS)}")
    schedule = coerce(f"{where}.schedule", "cron", table.get("schedule", ""), False)
    watch = coerce(f"{where}.watch", "list[str]", table.get("watch", []), False)
    if len(watch) > MAX_WATCHED:
        raise ConfigError(f"{where}.watch: {len(watch)} tags; at most {MAX_WATCHED}")
    for ref in watch:
        _check_watched(f"{where}.watch", ref)
    if "watch" in on and not watch:
        raise ConfigError(f"{where}.on: 'watch' needs the tags to watch in {where}.watch")
    interval = coerce(f"{where}.watch_interval", "float", table.get("watch_interval", 300.0), False)
    if not 1 <= interval <= MAX_WATCH_INTERVAL:
        raise ConfigError(
            f"{where}.watch_interval = {interval:g}: expected 1 to {MAX_WATCH_INTERVAL:g} seconds"
        )
    window = None
    if table.get("window"):
        text = table["window"]
        window = Window.parse(text) if isinstance(text, str) else None
        if window is None:
            raise ConfigError(f"{where}.window = {text!r}: expected HH:MM-HH:MM, e.g. 22:00-06:00")
    bandwidth = 0
    if table.get("bandwidth"):
        try:
            bandwidth = parse_size(table["bandwidth"]) or 0
        except (OverflowError, ValueError, ArithmeticError):
            bandwidth = 0
        if not MIN_BANDWIDTH <= bandwidth <= MAX_BANDWIDTH:
            raise ConfigError(
                f"{where}.bandwidth = {table['bandwidth']!r}: expected bytes a second, "
                f"{MIN_BANDWIDTH} to {MAX_BANDWIDTH} (e.g. 20MB)"
            )
    enabled = coerce(f"{where}.enabled", "bool", table.get("enabled", True), False)
    return PolicyConfig(
        name=name,
        selector=Selector(patterns["repositories"], patterns["tags"], signed, tuple(platforms)),
        providers=tuple(dict.fromkeys(chosen)),
        on=tuple(dict.fromkeys(on)),
        schedule=schedule,
        watch=tuple(dict.fromkeys(watch)),
        watch_interval=interval,
        window=window,
        bandwidth=bandwidth,
        enabled=enabled,
        severity=severity,
    )


def check_ca_file(where: str, value: object) -> str:
    """A CA bundle edgecache can load (checked now: at a first connection it would be a
    traceback in a background task)."""
    import ssl

    path = coerce(where, "str", value, False)
    assert isinstance(path, str)
    if not Path(path).is_file():
        raise ConfigError(f"{where} = {path!r}: expected a PEM file")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"{where} = {path!r}: not a CA bundle ({exc})") from None
    return path


def split_image(ref: str) -> tuple[str, str]:
    """'<repository>:<tag>' or '<repository>@<digest>' -> (repository, tag or digest)."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def _check_watched(where: str, ref: str) -> None:
    from ..oci import errors
    from ..oci.names import Reference, validate_repository

    repo, tag = split_image(ref)
    try:
        validate_repository(repo)
        Reference.parse(tag)
    except errors.OCIError as exc:
        raise ConfigError(f"{where}: {ref!r}: {exc.message}") from None
    if tag.startswith("sha256:"):
        raise ConfigError(f"{where}: {ref!r}: expected a tag to watch, not a digest")
