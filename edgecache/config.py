"""Configuration: embedded defaults, overridden by a TOML file, then by EDGECACHE_* variables.

Every key is declared once in `SCHEMA` with its type; anything else is refused at start with
the key, the value and what was expected, so a typo never silently becomes a default.
config/edgecache.toml is the commented reference of the same keys.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """An invalid configuration: the message names the key, the value and what was expected."""


# section -> key -> (type, default). Types: "str", "bool", "int", "list[str]", "users", "hostport".
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "server": {
        "listen": ("hostport", "0.0.0.0:5000"),
        "data": ("str", "./edgecache-data"),
        "tls_cert": ("str", ""),
        "tls_key": ("str", ""),
        # http/1.1 first: hypercorn's h2 writes one 16 KiB frame per flush and measured ~4x
        # slower for large blobs (benchmarks/RESULTS.md), so h2 is offered but not preferred.
        "alpn": ("list[str]", ["http/1.1", "h2"]),
        "log_level": ("str", "info"),
        "sendfile": ("bool", True),
    },
    "auth": {
        "anonymous_pull": ("bool", True),
        "anonymous_push": ("bool", False),
        "realm": ("str", "edgecache"),
        "users": ("users", {}),
    },
    "limits": {
        "max_manifest_size": ("int", 4 * 1024 * 1024),
    },
}

_LOG_LEVELS = ("debug", "info", "warning", "error")
_ALPN = ("http/1.1", "h2")


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    data: str
    tls_cert: str
    tls_key: str
    alpn: tuple[str, ...]
    log_level: str
    sendfile: bool

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


@dataclass(frozen=True)
class AuthConfig:
    anonymous_pull: bool
    anonymous_push: bool
    realm: str
    users: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LimitsConfig:
    max_manifest_size: int


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    auth: AuthConfig
    limits: LimitsConfig


def _coerce(where: str, kind: str, value: Any, from_env: bool) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where} = {value!r}: expected {expected}")

    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "bool":
        if from_env and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise bad("true or false")
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "int":
        if from_env and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad("a positive integer") from None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad("a positive integer")
        return value
    if kind == "list[str]":
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if kind == "hostport":
        if not isinstance(value, str):
            raise bad("HOST:PORT")
        parse_hostport(value, where)
        return value
    if kind == "users":
        if not isinstance(value, dict):
            raise bad("a table of user = bcrypt hash")
        for name, hashed in value.items():
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise ConfigError(
                    f"{where}.{name} = <hidden>: expected a bcrypt hash starting with $2b$"
                )
        return dict(value)
    raise AssertionError(kind)


def parse_hostport(value: str, where: str = "listen") -> tuple[str, int]:
    """'0.0.0.0:5000', '[::1]:5000', ':5000' -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{where} = {value!r}: expected HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Defaults < file < EDGECACHE_<SECTION>_<KEY> environment < explicit overrides (CLI flags)."""
    values: dict[str, dict[str, Any]] = {
        section: {key: default for key, (_, default) in keys.items()}
        for section, keys in SCHEMA.items()
    }
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for section, table in raw.items():
            if section not in SCHEMA:
                raise ConfigError(
                    f"[{section}]: unknown section (expected one of {', '.join(SCHEMA)})"
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
                values[section][key] = _coerce(f"{section}.{key}", kind, value, False)

    environ = os.environ if env is None else env
    for name, value in environ.items():
        if not name.startswith("EDGECACHE_") or name in ("EDGECACHE_URL", "EDGECACHE_TOKEN"):
            continue
        rest = name[len("EDGECACHE_") :].lower()
        section, _, key = rest.partition("_")
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(f"{name}: unknown setting (expected EDGECACHE_<SECTION>_<KEY>)")
        kind = SCHEMA[section][key][0]
        if kind == "users":
            raise ConfigError(f"{name}: users can only be set in the config file")
        values[section][key] = _coerce(name, kind, value, True)

    for section, table in (overrides or {}).items():
        for key, value in table.items():
            values[section][key] = _coerce(f"--{key}", SCHEMA[section][key][0], value, False)

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
    if bool(server["tls_cert"]) != bool(server["tls_key"]):
        raise ConfigError("server.tls_cert and server.tls_key: expected both or neither")
    for key in ("tls_cert", "tls_key"):
        if server[key] and not Path(server[key]).is_file():
            raise ConfigError(f"server.{key} = {server[key]!r}: expected a readable PEM file")
    if values["auth"]["users"] and not values["auth"]["realm"]:
        raise ConfigError("auth.realm = '': expected a non-empty realm")
    return Config(
        server=ServerConfig(**server),
        auth=AuthConfig(**values["auth"]),
        limits=LimitsConfig(**values["limits"]),
    )
