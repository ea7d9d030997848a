"""Garbage collection over the LMDB graph: mark from the roots, sweep in small transactions.

Roots: tags; every manifest linked into a proxied repository (proxied content lives or dies
by when it was last pulled, which is eviction's business, never by whether it is tagged);
every manifest linked into a pushed repository unless `delete_untagged`; pinned content;
content younger than the grace window; digests being fetched right now. Manifests reach their
children and their referrers (a signature lives as long as what it signs).

Mark reads one consistent snapshot. Sweep deletes in batches, each in its own write
transaction that first re-checks every candidate: anything linked or referenced since the
snapshot (its record's "gen" stamp is above the snapshot's counter) is spared, so a push or
fetch racing the sweep can never lose content. The file is unlinked inside that same
transaction: a concurrent publish of the same digest, which renames inside its own
transaction, cannot interleave. A client already streaming a removed blob keeps its open
descriptor and receives every byte.

Synchronous and blocking: the server runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..oci.digest import Digest
from .files import Layout
from .index import SEP, Index
from .keys import referrer_keys


@dataclass
class Plan:
    started: float
    candidates: dict[str, int]  # digest -> size, what a real run would delete
    links: dict[str, list[str]]  # candidate digest -> repositories linking it
    live: int = 0
    gen: int = 0  # the reference counter of the snapshot marked from
    # Candidates the grace window applies to: content linked into a pushed repository (an
    # upload whose manifest is not pushed yet). Proxied content needs no grace (fetches in
    # flight are roots), or eviction could not free what was pulled in the last hour; unlinked
    # content was deleted or evicted on purpose.
    graced: set[str] = field(default_factory=set)
    # Content kept only because it is inside the grace window (digest -> size), and when the
    # last of it leaves the window: what `edgecache gc` tells an operator who freed nothing.
    young: dict[str, int] = field(default_factory=dict)
    young_until: float = 0.0

    def summary(self) -> dict[str, Any]:
        per_repo: dict[str, dict[str, int]] = defaultdict(lambda: {"objects": 0, "bytes": 0})
        for digest, size in self.candidates.items():
            repos = self.links.get(digest)
            entry = per_repo[repos[0] if repos else "(unreferenced)"]
            entry["objects"] += 1
            entry["bytes"] += size
        return {
            "candidates": len(self.candidates),
            "bytes": sum(self.candidates.values()),
            "live": self.live,
            "by_repository": dict(sorted(per_repo.items())),
            "kept_young": {
                "objects": len(self.young),
                "bytes": sum(self.young.values()),
                "until": self.young_until,
            },
        }


@dataclass
class SweepResult:
    deleted: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # digest -> why
    stopped: int = 0  # candidates left untouched because `stop` said so

    @property
    def freed_bytes(self) -> int:
        return sum(self.deleted.values())


def _split(key: bytes) -> list[str]:
    return key.decode().split(SEP)


def mark(
    index: Index,
    *,
    grace: float,
    delete_untagged: bool,
    is_proxied: Callable[[str], bool],
    in_flight: Iterable[str] = (),
    now: float | None = None,
) -> Plan:
    started = time.time() if now is None else now
    young_before = started - grace
    with index.env.begin() as txn:
        gen = int(txn.get(b"gen", db=index.db["meta"]) or 0)
        manifests: dict[str, dict[str, Any]] = {
            k.decode(): json.loads(v) for k, v in txn.cursor(db=index.db["manifests"])
        }
        blobs: dict[str, dict[str, Any]] = {
            k.decode(): json.loads(v) for k, v in txn.cursor(db=index.db["blobs"])
        }
        tagged: set[tuple[str, str]] = set()
        roots: set[str] = set(in_flight)
        for key, value in txn.cursor(db=index.db["tags"]):
            repo, _ = _split(key)
            digest = json.loads(value)["digest"]
            tagged.add((repo, digest))
            roots.add(digest)
        linked_in: dict[str, list[str]] = defaultdict(list)
        for key, value in txn.cursor(db=index.db["links"]):
            repo, digest = _split(key)
            linked_in[digest].append(repo)
            if json.loads(value)["kind"] != "manifest":
                continue
            if not delete_untagged or is_proxied(repo) or (repo, digest) in tagged:
                roots.add(digest)
        referrers: dict[str, list[str]] = defaultdict(list)
        for key, value in txn.cursor(db=index.db["referrers"]):
            # The key's last part is a hash of the referrer's digest (store/keys.py); the
            # value, its descriptor, has the digest itself.
            _, subject, _ = _split(key)
            referrers[subject].append(json.loads(value)["digest"])

    def graced(digest: str) -> bool:
        return any(not is_proxied(repo) for repo in linked_in.get(digest, ()))

    young_roots: dict[str, float] = {}  # young root -> when it leaves the grace window
    for digest, record in blobs.items():
        born = max(record.get("created", 0), record.get("ref", 0))
        if record.get("pinned"):
            roots.add(digest)
        elif born >= young_before and graced(digest):
            young_roots[digest] = born + grace

    def reach(start: Iterable[str], live: set[str]) -> None:
        stack = list(start)
        while stack:
            digest = stack.pop()
            if digest in live:
                continue
            live.add(digest)
            children = manifests.get(digest)
            if children is not None:
                stack.extend(children["blobs"])
                stack.extend(children["manifests"])
            stack.extend(referrers.get(digest, ()))

    live: set[str] = set()
    reach(roots, live)
    # Then from the young roots alone: what they add is kept only by the grace window.
    old_live = set(live)
    reach(young_roots, live)
    young = {d: int(blobs[d]["size"]) for d in live - old_live if d in blobs}
    until = max((t for d, t in young_roots.items() if d not in old_live), default=0.0)

    candidates = {d: int(r["size"]) for d, r in blobs.items() if d not in live}
    links = {d: linked_in[d] for d in candidates if d in linked_in}
    return Plan(
        started,
        candidates,
        links,
        live=len(live & blobs.keys()),
        gen=gen,
        graced={d for d in candidates if graced(d)},
        young=young,
        young_until=until,
    )


def sweep(
    index: Index,
    layout: Layout,
    plan: Plan,
    *,
    grace: float,
    in_flight: Callable[[], set[str]] = set,
    batch: int = 128,
    stop: Callable[[], bool] = lambda: False,
) -> SweepResult:
    """Delete the plan's candidates that are still garbage, `batch` per write transaction.
    `stop` is asked before each batch: True leaves the rest (counted in `stopped`) as it is."""
    result = SweepResult()
    young_from = time.time() - grace
    pending = sorted(plan.candidates)
    for start in range(0, len(pending), batch):
        if stop():
            result.stopped = len(pending) - start
            break
        chunk = pending[start : start + batch]
        fetching = in_flight()
        trashed: list[Path] = []
        with index.env.begin(write=True) as txn:
            for digest in chunk:
                repos = plan.links.get(digest, [])
                young_from_here = young_from if digest in plan.graced else float("inf")
                why = _delete_in(
                    txn, index, layout, digest, repos, plan.gen, young_from_here, fetching
                )
                if why is None:
                    result.deleted[digest] = plan.candidates[digest]
                    trashed.append(layout.trash / digest.replace(":", "-"))
                else:
                    result.skipped[digest] = why
        # Committed: the files in trash/ belong to nobody now. (A crash before this point is
        # undone at start-up by recover_trash, which puts back what the index still names.)
        for path in trashed:
            path.unlink(missing_ok=True)
    return result


def _delete_in(
    txn: Any,
    index: Index,
    layout: Layout,
    digest: str,
    repos: list[str],
    marked_gen: int,
    young_from: float,
    fetching: set[str],
) -> str | None:
    """Delete one candidate inside `txn`, or say why it must stay."""
    raw = txn.get(digest.encode(), db=index.db["blobs"])
    if raw is None:
        return "already gone"
    record = json.loads(raw)
    if record.get("pinned"):
        return "pinned since the mark"
    if int(record.get("gen", 0)) > marked_gen:
        return "referenced since the mark began"
    if max(record.get("created", 0), record.get("ref", 0)) >= young_from:
        return "younger than the grace window"
    if digest in fetching:
        return "being fetched"
    manifest_raw = txn.get(digest.encode(), db=index.db["manifests"])
    subject = json.loads(manifest_raw).get("subject") if manifest_raw is not None else None
    # Links made after the mark bumped "ref" (checked above), so the mark's list is complete.
    for repo in repos:
        key = f"{repo}{SEP}{digest}".encode()
        txn.delete(key, db=index.db["links"])
        txn.delete(key, db=index.db["access"])
        if subject:
            for key in referrer_keys(repo, subject, digest):
                txn.delete(key, db=index.db["referrers"])
    if manifest_raw is not None:
        txn.delete(digest.encode(), db=index.db["manifests"])
        # Sizes this manifest declared for children never downloaded (cache/fetch.py caps
        # downloads by them); a stored child's entry goes when the child itself is swept.
        for child in json.loads(manifest_raw).get("blobs", []):
            if txn.get(child.encode(), db=index.db["blobs"]) is None:
                txn.delete(child.encode(), db=index.db["declared"])
    txn.delete(digest.encode(), db=index.db["blobs"])
    txn.delete(digest.encode(), db=index.db["declared"])
    total = int(txn.get(b"store_bytes", db=index.db["meta"]) or 0)
    txn.put(b"store_bytes", str(max(0, total - int(record["size"]))).encode(), db=index.db["meta"])
    # Moved aside, not deleted: if this transaction never commits (a crash), the file can be
    # put back. Renamed inside the transaction, so a concurrent publish of the same digest
    # (which renames inside its own) cannot interleave.
    with contextlib.suppress(FileNotFoundError):
        os.rename(layout.blob_path(Digest.parse(digest)), layout.trash / digest.replace(":", "-"))
    return None


def recover_trash(index: Index, layout: Layout) -> tuple[int, int]:
    """At start-up, before serving: finish or undo the sweep a crash interrupted.

    A file in trash/ whose digest the index still records belongs to a transaction that
    never committed: it goes back. Any other file there is garbage whose deletion committed.
    """
    restored = removed = 0
    for path in layout.trash.iterdir():
        digest = Digest.parse(path.name.replace("-", ":", 1))
        target = layout.blob_path(digest)
        if index.blob(str(digest)) is not None and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, target)
            restored += 1
        else:
            path.unlink(missing_ok=True)
            removed += 1
    return restored, removed
