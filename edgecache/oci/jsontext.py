"""Decoding JSON that came from a client or an upstream, with every failure one ValueError.

``json.loads`` fails in more ways than JSONDecodeError: a document nested a few thousand
levels deep raises RecursionError, a number longer than 4300 digits a plain ValueError, and
invalid UTF-8 a UnicodeDecodeError; it also accepts what no other JSON parser does (``NaN``,
``Infinity``, UTF-16 and UTF-32 byte streams), which a registry would then serve verbatim to
clients that refuse it. ``loads`` turns all of these into ``JSONInvalid`` with a message a user
can act on, so callers map one exception to their own error (MANIFEST_INVALID for a push, an
upstream protocol error for a fetch) and never a 500.
"""

from __future__ import annotations

import json
import sys


class JSONInvalid(ValueError):
    """The bytes are not a JSON document this registry accepts; the message says why."""


def _refuse_constant(name: str) -> object:
    raise JSONInvalid(f"not valid JSON: {name} is not a JSON value")


def loads(data: bytes | str) -> object:
    """The document in ``data`` (UTF-8 when bytes), or JSONInvalid."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONInvalid(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    else:
        text = data
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except JSONInvalid:
        raise
    except json.JSONDecodeError as exc:
        raise JSONInvalid(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        # The C decoder counts its nesting against the interpreter's recursion limit and
        # unwinds cleanly; no manifest or index needs more than a handful of levels.
        raise JSONInvalid("not valid JSON: nested too deeply") from None
    except ValueError:
        # int() inside the decoder: the only other ValueError it raises. Its own message
        # advises sys.set_int_max_str_digits(), which means nothing to a client.
        raise JSONInvalid(
            f"not valid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages ("expected a string, got null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict) or hasattr(value, "keys"):
        return "object"
    return type(value).__name__
