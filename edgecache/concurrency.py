"""Small trio helpers shared by the store and the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrapped_errors() -> Iterator[None]:
    """Re-raise the one exception a nursery wrapped in an ExceptionGroup.

    trio wraps every error that leaves a nursery; the OCI error mapping and ENOSPC handling in
    the server look for the plain exception (a client disconnect, a full disk, an OCIError).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
