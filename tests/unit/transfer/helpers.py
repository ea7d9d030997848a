"""Store inspection shared by the transfer unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecache.store import Store


def snapshot(data: Path) -> dict[str, Any]:
    """Everything observable about a store: index counts, tags, blob files, tmp leftovers."""
    store = Store.open(data)
    try:
        tags = {
            repo: {tag: str(store.resolve(repo, tag)) for tag in store.tags(repo)}
            for repo in store.repositories()
        }
        counts = store.index.counts()
        pinned = sorted(d for d, rec in store.index.all_blobs() if rec.get("pinned"))
    finally:
        store.close()
    files = sorted(
        (str(p.relative_to(data)), p.stat().st_mtime_ns)
        for p in (data / "blobs").rglob("*")
        if p.is_file()
    )
    return {
        "counts": counts,
        "tags": tags,
        "files": files,
        "pinned": pinned,
        "tmp": sorted(p.name for p in (data / "tmp").iterdir()),
    }
