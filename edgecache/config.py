"""Configuration: embedded defaults, overridden by a TOML file, then by EDGECACHE_* variables.

Every key is declared once in `SCHEMA` with its type; anything else is refused at start with
the key, the value and what was expected, so a typo never silently becomes a default.
config/edgecache.toml is the commented reference of the same keys.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .configvalues import ConfigError, coerce
from .configvalues import parse_hostport as parse_hostport  # where callers import it from
from .preheat import config as preheat_config
from .preheat.config import PreheatConfig
from .scan.config import ScanSettings
from .scan.config import parse as parse_scan

# section -> key -> (type, default). Types: "str", "bool", "int", "list[str]", "users", "hostport",
# "size" / "size0" (bytes, positive / non-negative: 10G, 512MiB, 1.5GB or a plain integer).
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "server": {
        "listen": ("hostport", "0.0.0.0:5000"),
        "data": ("str", "./edgecache-data"),
        "tls_cert": ("str", ""),
        "tls_key": ("str", ""),
        # http/1.1 first, by measurement: h2 (server/h2fast.py) carries large blobs at
        # 0.75-0.99x of http/1.1 over TLS with more CPU per byte, and one h2 connection per
        # client is served by one process, where http/1.1 spreads a pull over the workers.
        "alpn": ("list[str]", ["http/1.1", "h2"]),
        "log_level": ("str", "info"),
        "sendfile": ("bool", True),
        # Serving processes sharing the listening socket and the data directory; 0 = one per
        # CPU. The first also owns upstream fetches, GC, eviction, the scrub and the admin API;
        # the others answer what is on disk and ask it for the rest (server/workers.py).
        "workers": ("int0", 0),
        # A client that takes no response bytes for this long (a full socket, or an HTTP/2
        # stream whose flow-control window stays shut) is disconnected; a download that only
        # makes progress is never cut.
        "send_timeout": ("float", 60.0),
        # A request body that stops arriving for this long gets 408 and the connection closed.
        "body_timeout": ("float", 60.0),
        # A connection with no request in progress (HTTP keep-alive) is closed after this
        # many seconds; more than 0.
        "idle_timeout": ("float", 75.0),
        # One line per request (server/accesslog.py): "stderr", "off", or a file to append to.
        "access_log": ("str", "stderr"),
    },
    "auth": {
        "anonymous_pull": ("bool", True),
        "anonymous_push": ("bool", False),
        "realm": ("str", "edgecache"),
        "users": ("users", {}),
        # An htpasswd file of more users (bcrypt lines only, as `htpasswd -B` writes).
        "htpasswd_file": ("str", ""),
        # Challenge clients with the distribution token flow (Bearer realm=<this server>
        # /_edgecache/token) instead of Basic. Bearer tokens from that endpoint are accepted
        # either way (server/tokens.py).
        "token_auth": ("bool", False),
        # Seconds a bearer token is valid.
        "token_ttl": ("float", 300.0),
    },
    "limits": {
        "max_manifest_size": ("size", 4 * 1024 * 1024),
        # Open upload sessions (chunked pushes), per client address and in all, and the
        # seconds after which an idle one is removed.
        "max_uploads_per_client": ("int", 64),
        "max_uploads": ("int", 1024),
        "upload_idle_timeout": ("int", 3600),
        # A proxied blob whose size neither a manifest nor the upstream's Content-Length
        # states (a chunked body) is refused past this many bytes.
        "max_unsized_blob": ("size", 64 << 30),
    },
    "proxy": {
        # Upstream for /v2/<repo>/... requests that carry no ?ns= and name no project (Docker's
        # registry-mirrors only ever mirror Docker Hub this way). "" = such repos are local.
        "default_upstream": ("str", ""),
        # First path components that are always local (pushed) repositories, never proxied.
        "local_namespaces": ("list[str]", []),
        # Seconds a tag's digest is trusted without asking upstream; 0 = every pull (Harbor).
        "tag_ttl": ("float", 0.0),
        # Deadline for that revalidation: a slow upstream never holds a cached pull longer.
        "revalidate_timeout": ("float", 3.0),
        # Deadline for a whole manifest fetch from upstream (token, retries, body included):
        # a manifest that trickles in never holds its pullers longer.
        "manifest_timeout": ("float", 30.0),
        # Tag lists and referrers of proxied repositories are cached this long.
        "list_ttl": ("float", 300.0),
        # ... and at most this many of them (repository names come from clients).
        "list_cache_entries": ("int", 2048),
        # An upstream 404 for a cached tag removes it (true) or keeps serving it (false).
        "follow_deletions": ("bool", False),
    },
    "gc": {
        # Cron expression (5 fields, server local time) for automatic runs; "" = manual only.
        "schedule": ("cron", ""),
        # Content younger than this is never collected (an upload whose manifest is not
        # pushed yet must survive).
        "grace": ("float", 3600.0),
        # Collect manifests of pushed repositories that no tag names (proxied content is
        # governed by eviction instead: containerd pulls it by digest, untagged).
        "delete_untagged": ("bool", False),
    },
    "eviction": {
        # Bytes the store may hold (0 = no limit) and free disk space to keep (0 = none).
        "max_store_bytes": ("size0", 0),
        "min_free_bytes": ("size0", 0),
        # Eviction starts above high_watermark x max_store_bytes and stops below low.
        "high_watermark": ("fraction", 0.9),
        "low_watermark": ("fraction", 0.8),
        # Proxied images not pulled for this many days are evicted (0 = keep).
        "retention_days": ("float", 0.0),
        # How often the limits are checked (a full disk also triggers a check at once).
        "check_interval": ("float", 60.0),
    },
    "scrub": {
        # Verify stored blobs and manifests in the background; a bad one is quarantined.
        "enabled": ("bool", True),
        # Bytes a second the scrub reads (low: serving comes first).
        "rate": ("size", 16 * 1024 * 1024),
        # Seconds from the end of one full pass to the start of the next.
        "interval": ("float", 7 * 86400.0),
    },
    "peers": {
        # The URLs of every node of the site, this one included (edgecache/peers/): a blob
        # missing here is asked of the node that owns it before the uplink. [] = one node.
        "members": ("list[str]", []),
        # A DNS name and port whose addresses are the members (a headless Kubernetes Service
        # gives every pod's), re-resolved every probe_interval; with or without members.
        "dns": ("str", ""),
        # This node's URL exactly as it appears in members (EDGECACHE_PEERS_SELF in a
        # DaemonSet, from the pod's address). With dns it may be left out: the resolved
        # address that is [server] listen's, or the one address of this host, is taken.
        "self": ("str", ""),
        # A file holding the site's shared secret (at least 16 bytes), the same on every node:
        # peer requests are signed with it (HMAC, peers/sign.py).
        "secret_file": ("str", ""),
        # A CA bundle for members served over https with a private CA.
        "ca_file": ("str", ""),
        # Seconds between health probes of each member (GET /readyz; 3 failures = down).
        "probe_interval": ("float", 10.0),
    },
}

# Every section a file may hold, for the message that refuses any other. The last two have
# their own parsers: edgecache/preheat/config.py, edgecache/notify.py, edgecache/scan/config.py.
SECTIONS = (*SCHEMA, "upstreams", "preheat", "notifications", "scanners", "scan", "pull_policies")

# [upstreams.<name>] tables: <name> is the project path (/v2/<name>/<repo>) and the ?ns= host.
UPSTREAM_SCHEMA: dict[str, tuple[str, Any]] = {
    "url": ("url", ""),
    "aliases": ("list[str]", []),  # further project names / ns hosts for the same upstream
    "username": ("str", ""),
    "password": ("str", ""),
    "token": ("str", ""),  # a static bearer token instead of username/password
    "ca_file": ("str", ""),
    "insecure": ("bool", False),  # skip TLS verification (lab use only)
    "connect_timeout": ("float", 10.0),
    "idle_timeout": ("float", 60.0),  # no total deadline: a 50 GiB model only needs progress
    "retries": ("int", 3),
}

DEFAULT_UPSTREAMS: dict[str, dict[str, Any]] = {
    "docker.io": {"url": "https://registry-1.docker.io", "aliases": ["dockerhub"]},
    "ghcr.io": {"url": "https://ghcr.io"},
    "quay.io": {"url": "https://quay.io"},
    "registry.k8s.io": {"url": "https://registry.k8s.io"},
    "gcr.io": {"url": "https://gcr.io"},
    "public.ecr.aws": {"url": "https://public.ecr.aws"},
    "mcr.microsoft.com": {"url": "https://mcr.microsoft.com"},
}

_LOG_LEVELS = ("debug", "info", "warning", "error")
_ALPN = ("http/1.1", "h2")
MAX_WORKERS = 256


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    data: str
    tls_cert: str
    tls_key: str
    alpn: tuple[str, ...]
    log_level: str
    sendfile: bool
    send_timeout: float = 60.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    access_log: str = "stderr"
    workers: int = 0

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def processes(self) -> int:
        """How many serving processes `workers` means on this machine."""
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class AuthConfig:
    anonymous_pull: bool
    anonymous_push: bool
    realm: str
    users: Mapping[str, str] = field(default_factory=dict)
    htpasswd_file: str = ""
    token_auth: bool = False
    token_ttl: float = 300.0


@dataclass(frozen=True)
class LimitsConfig:
    max_manifest_size: int
    max_uploads_per_client: int
    max_uploads: int
    upload_idle_timeout: int
    max_unsized_blob: int = 64 << 30


@dataclass(frozen=True)
class ProxyConfig:
    default_upstream: str
    local_namespaces: tuple[str, ...]
    tag_ttl: float
    revalidate_timeout: float
    list_ttl: float
    follow_deletions: bool
    list_cache_entries: int = 2048
    manifest_timeout: float = 30.0


@dataclass(frozen=True)
class GCConfig:
    schedule: str = ""
    grace: float = 3600.0
    delete_untagged: bool = False


@dataclass(frozen=True)
class EvictionConfig:
    max_store_bytes: int = 0
    min_free_bytes: int = 0
    high_watermark: float = 0.9
    low_watermark: float = 0.8
    retention_days: float = 0.0
    check_interval: float = 60.0


@dataclass(frozen=True)
class ScrubConfig:
    enabled: bool = True
    rate: int = 16 * 1024 * 1024
    interval: float = 7 * 86400.0


@dataclass(frozen=True)
class PeersConfig:
    members: tuple[str, ...] = ()
    self_url: str = ""
    secret: bytes = field(default=b"", repr=False)
    ca_file: str = ""
    probe_interval: float = 10.0
    dns: str = ""  # host:port

    @property
    def enabled(self) -> bool:
        return bool(self.members or self.dns)


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    url: str
    aliases: tuple[str, ...] = ()
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    ca_file: str = ""
    insecure: bool = False
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    retries: int = 3

    @property
    def host(self) -> str:
        """host[:port] of the URL: also an ns this upstream answers for."""
        return self.url.split("//", 1)[1].split("/", 1)[0]

    @property
    def is_docker_hub(self) -> bool:
        return self.name == "docker.io" or "docker.io" in self.aliases


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    auth: AuthConfig
    limits: LimitsConfig
    proxy: ProxyConfig = field(default_factory=lambda: ProxyConfig("", (), 0.0, 3.0, 300.0, False))
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    gc: GCConfig = field(default_factory=GCConfig)
    eviction: EvictionConfig = field(default_factory=EvictionConfig)
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    preheat: PreheatConfig = field(default_factory=PreheatConfig)
    notifications: tuple[Any, ...] = ()  # notify.Endpoint: [[notifications.endpoints]]
    scan: ScanSettings = field(default_factory=ScanSettings)

    def upstream_for(self, name: str) -> UpstreamConfig | None:
        """The upstream whose name or alias is `name` (a project path or an ns host)."""
        found = self.upstreams.get(name)
        if found is not None:
            return found
        for upstream in self.upstreams.values():
            if name in upstream.aliases or name == upstream.host:
                return upstream
        return None


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    extra_upstreams: Mapping[str, str] | None = None,
    base_upstreams: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Defaults < file < EDGECACHE_<SECTION>_<KEY> environment < explicit overrides (CLI flags).

    `extra_upstreams` ({name: url}, from `serve --upstream NAME=URL`) add to or replace the
    upstreams of the file (or the embedded defaults when the file names none).
    `base_upstreams` ({name: table}, a running server's list from its run files) replaces the
    defaults as a file's [upstreams.*] tables would.
    """
    upstream_tables: dict[str, dict[str, Any]] = {
        name: dict(table) for name, table in (base_upstreams or DEFAULT_UPSTREAMS).items()
    }
    values: dict[str, dict[str, Any]] = {
        section: {key: default for key, (_, default) in keys.items()}
        for section, keys in SCHEMA.items()
    }
    preheat_raw: object = None
    notifications_raw: object = None
    scan_raw: tuple[object, object, object] = (None, None, None)
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {exc.start}): is it the right file?"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        if "upstreams" in raw:
            tables = raw.pop("upstreams")
            if not isinstance(tables, dict):
                raise ConfigError(f"upstreams = {tables!r}: expected [upstreams.<name>] tables")
            # A file that names upstreams names all of them: no hidden defaults to proxy to.
            upstream_tables = {}
            for name, table in tables.items():
                if not isinstance(table, dict):
                    raise ConfigError(f"upstreams.{name}: expected a table")
                upstream_tables[name] = table
        preheat_raw = raw.pop("preheat", None)
        notifications_raw = raw.pop("notifications", None)
        scan_raw = (
            raw.pop("scanners", None),
            raw.pop("scan", None),
            raw.pop("pull_policies", None),
        )
        for section, table in raw.items():
            if section not in SCHEMA:
                owners = [name for name, keys in SCHEMA.items() if section in keys]
                if not isinstance(table, dict) and owners:
                    raise ConfigError(
                        f"{section} = {table!r}: a key outside any section; it belongs under "
                        f"[{owners[0]}]"
                    )
                close = difflib.get_close_matches(section, SECTIONS, n=1)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                raise ConfigError(
                    f"[{section}]: unknown section (expected one of {', '.join(SECTIONS)}){hint}"
                )
            if not isinstance(table, dict):
                raise ConfigError(f"{section} = {table!r}: expected a [{section}] table")
            for key, value in table.items():
                if key not in SCHEMA[section]:
                    raise ConfigError(
                        f"{section}.{key}: unknown key "
                        f"(expected one of {', '.join(SCHEMA[section])})"
                    )
                kind = SCHEMA[section][key][0]
                values[section][key] = coerce(f"{section}.{key}", kind, value, False)

    environ = os.environ if env is None else env
    for name, value in environ.items():
        if not name.startswith("EDGECACHE_") or name in ("EDGECACHE_URL", "EDGECACHE_TOKEN"):
            continue
        rest = name[len("EDGECACHE_") :].lower()
        section, _, key = rest.partition("_")
        if section not in SCHEMA:
            raise ConfigError(
                f"{name}: unknown setting (expected EDGECACHE_<SECTION>_<KEY>, SECTION one of "
                f"{', '.join(s.upper() for s in SCHEMA)}; upstreams only in the config file)"
            )
        if key not in SCHEMA[section]:
            raise ConfigError(
                f"{name}: unknown setting (expected a key of [{section}]: "
                f"{', '.join(k.upper() for k in SCHEMA[section])})"
            )
        kind = SCHEMA[section][key][0]
        if kind == "users":
            raise ConfigError(f"{name}: users can only be set in the config file")
        values[section][key] = coerce(name, kind, value, True)

    for section, table in (overrides or {}).items():
        for key, value in table.items():
            values[section][key] = coerce(f"--{key}", SCHEMA[section][key][0], value, False)

    for name, url in (extra_upstreams or {}).items():
        upstream_tables[name] = {"url": url}
    upstreams = {name: _upstream(name, table) for name, table in upstream_tables.items()}

    server = values["server"]
    server["alpn"] = tuple(server["alpn"])
    if server["log_level"] not in _LOG_LEVELS:
        raise ConfigError(
            f"server.log_level = {server['log_level']!r}: expected one of {', '.join(_LOG_LEVELS)}"
        )
    unknown_alpn = [p for p in server["alpn"] if p not in _ALPN]
    if unknown_alpn or not server["alpn"]:
        raise ConfigError(
            f"server.alpn = {list(server['alpn'])!r}: expected a non-empty list of "
            f"{' and '.join(_ALPN)}"
        )
    if not 0 <= server["workers"] <= MAX_WORKERS:
        raise ConfigError(
            f"server.workers = {server['workers']}: expected 0 (one per CPU) to {MAX_WORKERS}"
        )
    if not server["access_log"].strip():
        raise ConfigError(
            'server.access_log = \'\': expected "stderr", "off" or the path of a file'
        )
    if bool(server["tls_cert"]) != bool(server["tls_key"]):
        raise ConfigError("server.tls_cert and server.tls_key: expected both or neither")
    for key in ("tls_cert", "tls_key"):
        if server[key] and not Path(server[key]).is_file():
            raise ConfigError(f"server.{key} = {server[key]!r}: expected a readable PEM file")
    if values["auth"]["htpasswd_file"]:
        from .htpasswd import merge_users

        auth = values["auth"]
        auth["users"] = merge_users(auth["htpasswd_file"], auth["users"])
    if not 0 < values["auth"]["token_ttl"] <= 86400:
        raise ConfigError(
            f"auth.token_ttl = {values['auth']['token_ttl']:g}: expected more than 0 and at "
            "most 86400 seconds (a token cannot be revoked before it expires)"
        )
    if values["auth"]["users"] and not values["auth"]["realm"]:
        raise ConfigError("auth.realm = '': expected a non-empty realm")
    proxy = values["proxy"]
    proxy["local_namespaces"] = tuple(proxy["local_namespaces"])
    config = Config(
        server=ServerConfig(**server),
        auth=AuthConfig(**values["auth"]),
        limits=LimitsConfig(**values["limits"]),
        proxy=ProxyConfig(**proxy),
        upstreams=upstreams,
        gc=GCConfig(**values["gc"]),
        eviction=EvictionConfig(**values["eviction"]),
        scrub=ScrubConfig(**values["scrub"]),
        peers=_peers(values["peers"]),
        preheat=preheat_config.parse(preheat_raw),
        notifications=_notifications(notifications_raw),
        scan=parse_scan(*scan_raw),
    )
    if config.server.idle_timeout <= 0:
        raise ConfigError(
            f"server.idle_timeout = {config.server.idle_timeout:g}: expected more than 0 "
            "seconds (an idle connection must be closed some time)"
        )
    eviction = config.eviction
    if eviction.low_watermark >= eviction.high_watermark:
        raise ConfigError(
            f"eviction.low_watermark = {eviction.low_watermark}: expected less than "
            f"high_watermark ({eviction.high_watermark})"
        )
    if eviction.check_interval <= 0:
        raise ConfigError("eviction.check_interval = 0: expected a positive number of seconds")
    if proxy["default_upstream"] and config.upstream_for(proxy["default_upstream"]) is None:
        raise ConfigError(
            f"proxy.default_upstream = {proxy['default_upstream']!r}: expected the name of an "
            f"upstream (one of {', '.join(upstreams) or 'none configured'})"
        )
    _check_names_unique(config)
    _check_watched_upstreams(config)
    return config


def _notifications(raw: object) -> tuple[Any, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or set(raw) - {"endpoints"}:
        raise ConfigError(
            "[notifications]: expected only [[notifications.endpoints]] tables (name, url, ...)"
        )
    from .notify import parse_endpoints  # httpx and trio: only when configured

    return parse_endpoints(raw.get("endpoints", []))


def _check_watched_upstreams(config: Config) -> None:
    """A watched tag is polled upstream: its repository must be a proxied one."""
    from .cache.routing import resolve
    from .oci.errors import OCIError

    for policy in config.preheat.policies:
        if policy.severity and not config.scan.scanners:
            raise ConfigError(
                f"preheat policy {policy.name!r}: severity filters on vulnerability reports, "
                "and no [scanners.<name>] is configured"
            )
        for ref in policy.watch:
            repo, _ = preheat_config.split_image(ref)
            try:
                proxied = resolve(config, repo, None).proxied
            except OCIError:
                proxied = False
            if not proxied:
                raise ConfigError(
                    f"preheat policy {policy.name!r}: watch {ref!r}: expected a repository of "
                    "an upstream, as clients name it (<upstream>/<repository>, e.g. "
                    f"docker.io/library/nginx:1.27; upstreams: {', '.join(config.upstreams)})"
                )


# Peer secrets shorter than this are refused: an HMAC key is only as strong as its bytes.
MIN_PEER_SECRET = 16


def _peers(values: Mapping[str, Any]) -> PeersConfig:
    members = tuple(dict.fromkeys(_peer_url(f"peers.members: {m!r}", m) for m in values["members"]))
    dns = values["dns"]
    if dns:
        _, port = parse_hostport(dns, "peers.dns")
        if not dns.rpartition(":")[0] or not port:
            raise ConfigError(f"peers.dns = {dns!r}: expected NAME:PORT, e.g. edgecache-peers:5000")
    if not members and not dns:
        for key in ("self", "secret_file"):
            if values[key]:
                raise ConfigError(
                    f"peers.{key} is set but peers.members and peers.dns are empty: expected "
                    "the URLs of every node of the site, this one included (or a DNS name)"
                )
        return PeersConfig()
    me = values["self"]
    if me:
        me = _peer_url(f"peers.self = {me!r}", me)
    elif not dns:
        raise ConfigError(
            "peers.self: expected this node's URL as listed in peers.members "
            f"({', '.join(members)})"
        )
    if me and not dns and me not in members:
        raise ConfigError(
            f"peers.self = {me!r}: expected one of peers.members ({', '.join(members)})"
        )
    if not values["secret_file"]:
        raise ConfigError(
            "peers.secret_file: expected a file holding the site's shared secret (the same on "
            "every node; e.g. `head -c 32 /dev/urandom | base64 > peer-secret`)"
        )
    try:
        secret = Path(values["secret_file"]).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"peers.secret_file = {values['secret_file']!r}: cannot read it ({exc.strerror})"
        ) from None
    if len(secret) < MIN_PEER_SECRET:
        raise ConfigError(
            f"peers.secret_file = {values['secret_file']!r}: the secret has {len(secret)} "
            f"bytes; expected at least {MIN_PEER_SECRET}"
        )
    if values["ca_file"] and not Path(values["ca_file"]).is_file():
        raise ConfigError(f"peers.ca_file = {values['ca_file']!r}: expected a PEM file")
    if values["probe_interval"] <= 0:
        raise ConfigError(
            f"peers.probe_interval = {values['probe_interval']:g}: expected more than 0 seconds"
        )
    return PeersConfig(members, me, secret, values["ca_file"], values["probe_interval"], dns)


def _peer_url(where: str, value: str) -> str:
    url = coerce(where, "url", value, False)
    assert isinstance(url, str)
    rest = url.split("//", 1)[1]
    if not rest or "/" in rest or "?" in rest:
        raise ConfigError(f"{where}: expected scheme://host:port, with no path")
    return url


_UPSTREAM_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]{1,5})?")


def _upstream(name: str, table: Mapping[str, Any]) -> UpstreamConfig:
    # The name is a project path component and the ns host containerd sends: a lowercase
    # host name, optionally with :port (such a name is reachable by ns only).
    if not _UPSTREAM_NAME.fullmatch(name):
        raise ConfigError(
            f"upstreams.{name}: expected a lowercase host name (optionally :port), e.g. "
            "docker.io or registry.lab:5000"
        )
    values: dict[str, Any] = {"name": name}
    for key, value in table.items():
        if key not in UPSTREAM_SCHEMA:
            raise ConfigError(
                f"upstreams.{name}.{key}: unknown key "
                f"(expected one of {', '.join(UPSTREAM_SCHEMA)})"
            )
        shown = "<hidden>" if key in ("password", "token") else None
        try:
            values[key] = coerce(f"upstreams.{name}.{key}", UPSTREAM_SCHEMA[key][0], value, False)
        except ConfigError:
            if shown:
                raise ConfigError(f"upstreams.{name}.{key} = {shown}: expected a string") from None
            raise
    if "url" not in values:
        raise ConfigError(f"upstreams.{name}: url is required")
    if values.get("password") and not values.get("username"):
        raise ConfigError(f"upstreams.{name}: password given without username")
    if values.get("ca_file") and not Path(values["ca_file"]).is_file():
        raise ConfigError(f"upstreams.{name}.ca_file = {values['ca_file']!r}: expected a PEM file")
    return UpstreamConfig(**values)


def _check_names_unique(config: Config) -> None:
    seen: dict[str, str] = {}
    for upstream in config.upstreams.values():
        for name in (upstream.name, *upstream.aliases):
            if name in seen and seen[name] != upstream.name:
                raise ConfigError(
                    f"upstreams.{upstream.name}: {name!r} is already a name of {seen[name]}"
                )
            seen[name] = upstream.name
    for namespace in config.proxy.local_namespaces:
        if namespace in seen:
            raise ConfigError(
                f"proxy.local_namespaces: {namespace!r} is also the upstream {seen[namespace]}"
            )
