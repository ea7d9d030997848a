"""Which proxied images to evict: least recently pulled first, whole images, never local ones.

An "image" is a manifest linked into a proxied repository that no other manifest there lists
(an index's platform manifests go with their index). Its age is when it was last pulled (the
manifest request: containerd and docker always fetch it first), or when it was cached if it
was never pulled since. Pushed and pinned (preloaded) content is never chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import EvictionConfig
from ..store.index import Index

DAY = 86400.0


@dataclass
class EvictionPlan:
    images: list[tuple[str, str, str]] = field(default_factory=list)  # repo, digest, reason
    more: bool = False  # the limits may still be exceeded after these: check again


def bytes_to_free(ev: EvictionConfig, used: int, free: int | None, continuing: bool) -> int:
    """How far over its limits the store is; 0 when within them (with hysteresis)."""
    need = 0
    if ev.max_store_bytes:
        high = ev.high_watermark * ev.max_store_bytes
        low = ev.low_watermark * ev.max_store_bytes
        if used > high or (continuing and used > low):
            need = int(used - low)
    if ev.min_free_bytes and free is not None and free < ev.min_free_bytes:
        # Free past the reserve by the same margin the watermarks give the size limit.
        margin = (ev.high_watermark - ev.low_watermark) * ev.min_free_bytes
        need = max(need, int(ev.min_free_bytes - free + margin))
    return need


def choose_evictions(
    index: Index,
    ev: EvictionConfig,
    is_proxied: Callable[[str], bool],
    used: int,
    free: int | None,
    now: float,
    *,
    continuing: bool = False,
    batch: int = 16,
) -> EvictionPlan:
    links = [link for link in index.manifest_links() if is_proxied(link[0])]
    linked = {(repo, digest) for repo, digest, _ in links}
    children: set[tuple[str, str]] = set()
    for repo, digest, _ in links:
        record = index.manifest(digest) or {}
        for child in record.get("manifests", []):
            if (repo, child) in linked:
                children.add((repo, child))
    access = index.access_times()
    ranked = []
    for repo, digest, created in links:
        if (repo, digest) in children:
            continue
        blob = index.blob(digest) or {}
        if blob.get("pinned"):
            continue
        ranked.append((access.get((repo, digest), created), repo, digest))
    ranked.sort()

    plan = EvictionPlan()
    chosen: set[tuple[str, str]] = set()
    if ev.retention_days:
        cutoff = now - ev.retention_days * DAY
        for last, repo, digest in ranked:
            if last < cutoff:
                plan.images.append((repo, digest, f"not pulled for {ev.retention_days:g} days"))
                chosen.add((repo, digest))
    need = bytes_to_free(ev, used, free, continuing)
    if need > 0:
        reason = (
            "store over its size limit"
            if ev.max_store_bytes and used > (ev.low_watermark * ev.max_store_bytes)
            else "free disk below the reserve"
        )
        remaining = [r for r in ranked if (r[1], r[2]) not in chosen]
        # Whole images, oldest first, until their bytes cover what must go. Shared layers
        # make this an overestimate of what a collection frees: the caller checks again.
        planned = 0
        taken = 0
        for _, repo, digest in remaining:
            if planned >= need or taken >= batch:
                break
            plan.images.append((repo, digest, reason))
            planned += image_bytes(index, digest)
            taken += 1
        plan.more = taken < len(remaining)
    return plan


def image_bytes(index: Index, digest: str) -> int:
    """Bytes of a manifest and everything it reaches that is in the store."""
    total, stack, seen = 0, [digest], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        blob = index.blob(current)
        if blob is not None:
            total += int(blob["size"])
        record = index.manifest(current)
        if record is not None:
            stack.extend(record["blobs"])
            stack.extend(record["manifests"])
    return total
