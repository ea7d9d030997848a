"""<data>/run/server.json: how commands find the running server, and what it was started with.

The server writes it once it listens (server/run.py) and removes it at a clean stop. Besides
`url`, `pid` and `tls` it holds the public part of the running config: every upstream's name,
URL and aliases and the [proxy] routing keys, never a credential. `mirror-config`, `preload`
and `export` read it when they are not given a config file, so that they see the upstreams the
server really serves (those of its config file, its environment and `serve --upstream`), not
only the embedded public ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import Config, load


def public_config(config: Config) -> dict[str, Any]:
    """The keys of server.json that describe routing: no passwords, tokens or file paths."""
    return {
        "upstreams": {
            name: {"url": upstream.url, "aliases": list(upstream.aliases)}
            for name, upstream in config.upstreams.items()
        },
        "proxy": {
            "default_upstream": config.proxy.default_upstream,
            "local_namespaces": list(config.proxy.local_namespaces),
        },
        "peers": list(config.peers.members),
    }


def server_info(data: Path) -> dict[str, Any] | None:
    """The running server's server.json, or None (not running, unreadable, not ours)."""
    try:
        info = json.loads((data / "run" / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def cli_config(
    path: str | None,
    data: Path,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    extra_upstreams: Mapping[str, str] | None = None,
) -> Config:
    """The config a command acts on: the file given, else the running server's routing (from
    server.json), else the embedded defaults; EDGECACHE_* variables apply to each."""
    if path is not None:
        return load(path, overrides=overrides, extra_upstreams=extra_upstreams)
    info = server_info(data)
    if info is None or not isinstance(info.get("upstreams"), dict):
        return load(overrides=overrides, extra_upstreams=extra_upstreams)
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (overrides or {}).items()}
    proxy = info.get("proxy")
    if isinstance(proxy, dict):
        merged.setdefault("proxy", {}).update(proxy)
    return load(overrides=merged, extra_upstreams=extra_upstreams, base_upstreams=info["upstreams"])
