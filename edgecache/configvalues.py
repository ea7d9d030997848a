"""Values of the configuration: each SCHEMA kind's parsing and checking, with the message that
names the key, the value and what was expected (config.py declares the keys)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any


class ConfigError(Exception):
    """An invalid configuration: the message names the key, the value and what was expected."""


def coerce(where: str, kind: str, value: Any, from_env: bool) -> Any:
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
    if kind == "int0":
        if from_env and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad("a non-negative integer") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("a non-negative integer")
        return value
    if kind in ("size", "size0"):
        size = parse_size(value)
        if size is None or (kind == "size" and size == 0):
            low = "positive" if kind == "size" else "non-negative"
            raise bad(
                f"a {low} size in bytes: a number with an optional unit, e.g. 10G, 512MiB or "
                "1.5GB (K, M, G, T are powers of 1000; KiB, MiB, GiB, TiB of 1024)"
            )
        return size
    if kind == "fraction":
        if from_env and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad("a number between 0 and 1") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise bad("a number between 0 and 1")
        return float(value)
    if kind == "cron":
        if not isinstance(value, str):
            raise bad("a cron expression such as '0 3 * * *'")
        if value.strip():
            from croniter import croniter

            if len(value.split()) != 5 or not croniter.is_valid(value):
                raise bad("a 5-field cron expression such as '0 3 * * *'")
            try:
                croniter(value).get_next(float)
            except Exception:  # croniter's CroniterBadDateError: e.g. "0 0 31 2 *"
                raise bad("a cron expression that fires some day (this one never does)") from None
        return value.strip()
    if kind == "float":
        if from_env and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad("a number of seconds") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a non-negative number of seconds")
        try:
            seconds = float(value)
        except OverflowError:
            raise bad("a non-negative number of seconds, at most 1e12") from None
        if not 0 <= seconds <= 1e12:  # NaN and infinities too
            raise bad("a non-negative number of seconds, at most 1e12")
        return seconds
    if kind == "url":
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise bad("an http:// or https:// URL")
        if "@" in value.split("//", 1)[1].split("/", 1)[0]:
            raise ConfigError(f"{where}: put credentials in username/password, not in the URL")
        return value.rstrip("/")
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


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(i?)b?|b)?", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def read_secret(where: str, value: object) -> tuple[str, str]:
    """(path, the stripped text) of a file holding a secret a config key names; the message
    names the key and the file, never the secret."""
    path = coerce(where, "str", value, False)
    assert isinstance(path, str)
    try:
        with open(path, encoding="utf-8") as f:
            return path, f.read(1 << 16).strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{where} = {path!r}: cannot read it ({why})") from None


def parse_size(value: object) -> int | None:
    """Bytes from 4194304, "4194304", "10G", "512MiB", "1.5GB" or "64 KiB"; None if not a size.

    The units mean what they say: K, M, G, T, P (with or without B) are powers of 1000 as in
    SI and disk vendors' sizes; KiB, MiB, GiB, TiB, PiB are powers of 1024. Case does not
    matter ("10g" is 10 GB). A fraction is rounded to the nearest byte.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        return None
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    factor = base ** _POWERS[unit.lower()] if unit else 1
    return int(Decimal(number) * factor + Decimal("0.5"))


def parse_hostport(value: str, where: str = "listen") -> tuple[str, int]:
    """'0.0.0.0:5000', '[::1]:5000', ':5000' -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{where} = {value!r}: expected HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)
