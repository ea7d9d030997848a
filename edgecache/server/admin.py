"""The admin API (bearer token from <data>/run/admin-token): what CLI commands ask the server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import __version__
from ..oci import errors
from .http import Request

if TYPE_CHECKING:
    from .app import App

PREFIX = "/_edgecache/admin/"


async def dispatch(app: App, req: Request) -> None:
    name = req.path[len(PREFIX) :]
    if name == "status" and req.method in ("GET", "HEAD"):
        stats = app.store.stats()
        stats["version"] = __version__
        stats["sendfile_socket_bytes"] = int(
            app.metrics.registry.get_sample_value("edgecache_sendfile_socket_bytes") or 0
        )
        await req.respond_json(200, stats)
        return
    raise errors.NotFound(f"no admin endpoint {req.method} {req.path}")
