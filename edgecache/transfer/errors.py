"""The one exception of this package: bad input, told precisely (what, and where)."""

from __future__ import annotations


class TransferError(Exception):
    """An archive, layout or name that cannot be imported or exported; nothing was published."""
