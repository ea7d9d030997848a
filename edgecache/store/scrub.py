"""Finding rot: verify stored files against their names, and quarantine the ones that fail.

The background scrub (gc/scrub.py drives it) walks the blobs table in key order, a batch at a
time, from a cursor kept in the meta table, so a pass survives restarts. Each object's file
is stat'ed, hashed at a bounded rate (`Pacer`), and stat'ed again: a file that is missing,
has the wrong size or does not hash to its name is bad.

Quarantine happens in one LMDB write transaction, which is what makes it safe against the
other writers: inside it the blob record must still exist and the file must still be the one
that was found bad (same inode, size and mtime: a verified copy renamed over it in between is
left alone). Then the file moves to <data>/quarantine/<algorithm>/<hex> (kept for a post
mortem, never read again; delete at will) next to a <hex>.json record of what was found, and
the blob and manifest records are dropped. Links, tags and referrers stay: nothing serves
content without its blob record, and when the right bytes come back (a re-push, a re-fetch
from upstream) the same links make it visible again in every repository that had it.

Synchronous and blocking: the server runs all of it in worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..oci.digest import Digest
from .files import Layout, hash_file
from .index import SEP, Index

log = logging.getLogger("edgecache.scrub")

CURSOR_KEY = b"scrub_cursor"  # last digest verified by the pass in progress ("" = none)
LAST_PASS_KEY = b"scrub_last_pass"  # wall time the last full pass ended
# When the data dir was first served with the scrub: the first pass is due an interval later
# (content written since was verified as it arrived; no surprise full read at first start).
SINCE_KEY = b"scrub_since"
HASH_CHUNK = 1 << 20  # the pacer sleeps between chunks: small enough to keep the rate smooth


class Stopped(Exception):
    """The scrub was asked to stop in the middle of a file."""


class Pacer:
    """Holds reads to `rate` bytes a second, with at most one second's worth in a burst.

    Called from the scrub's thread after every chunk; `stop` wakes a sleeping pacer at once
    (the server is shutting down) and makes it raise Stopped.
    """

    def __init__(
        self,
        rate: int,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._allowance = float(rate)
        self._at = clock()

    def __call__(self, count: int) -> None:
        if self.stop.is_set():
            raise Stopped
        now = self._clock()
        self._allowance = min(float(self.rate), self._allowance + (now - self._at) * self.rate)
        self._at = now
        self._allowance -= count
        if self._allowance < 0 and self.stop.wait(-self._allowance / self.rate):
            raise Stopped


FileId = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def _file_id(path: Path) -> FileId | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Verdict:
    digest: str
    size: int  # bytes read (0 when the file was missing or had the wrong size)
    problem: str | None  # None: the file is good
    file_id: FileId | None  # the file that was checked (None: missing)


def verify_object(layout: Layout, digest: str, size: int, pace: Pacer) -> Verdict:
    parsed = Digest.parse(digest)
    path = layout.blob_path(parsed)
    before = _file_id(path)
    if before is None:
        return Verdict(digest, 0, "its file is missing", None)
    if before[2] != size:
        return Verdict(digest, 0, f"its file has {before[2]} bytes, not {size}", before)
    try:
        actual = hash_file(path, parsed.algorithm, HASH_CHUNK, pace)
    except FileNotFoundError:
        return Verdict(digest, 0, None, None)  # removed meanwhile (collected): not ours to judge
    if _file_id(path) != before:
        return Verdict(digest, size, None, None)  # replaced while hashed: judged next pass
    if actual != parsed:
        return Verdict(digest, size, f"its bytes hash to {actual}", before)
    return Verdict(digest, size, None, before)


def batch_after(index: Index, cursor: str, limit: int) -> list[tuple[str, int]]:
    """Up to `limit` (digest, size) of stored objects whose digest sorts after `cursor`."""
    out: list[tuple[str, int]] = []
    with index.env.begin(db=index.db["blobs"]) as txn:
        cur = txn.cursor()
        if not cur.set_range(cursor.encode() + b"\0" if cursor else b""):
            return out
        for key, value in cur:
            out.append((key.decode(), int(json.loads(value)["size"])))
            if len(out) >= limit:
                break
    return out


def read_progress(index: Index) -> tuple[str, float | None, float]:
    """(cursor of the pass in progress or "", end time of the last full pass, and the time
    the next pass is counted from: that end, or when the scrub first ran on this store)."""
    with index.env.begin(write=True, db=index.db["meta"]) as txn:
        cursor = bytes(txn.get(CURSOR_KEY) or b"").decode()
        last = txn.get(LAST_PASS_KEY)
        since = txn.get(SINCE_KEY)
        if since is None:
            since = repr(time.time()).encode()
            txn.put(SINCE_KEY, since)
    return cursor, float(last) if last else None, float(last or since)


def save_progress(index: Index, cursor: str, last_pass: float | None = None) -> None:
    with index.env.begin(write=True, db=index.db["meta"]) as txn:
        txn.put(CURSOR_KEY, cursor.encode())
        if last_pass is not None:
            txn.put(LAST_PASS_KEY, repr(last_pass).encode())


def linking_repositories(index: Index, digest: str) -> list[str]:
    """Every repository that links `digest` (a scan of all links: only for the rare bad one)."""
    suffix = (SEP + digest).encode()
    with index.env.begin(db=index.db["links"]) as txn:
        return sorted(key.decode().split(SEP)[0] for key, _ in txn.cursor() if key.endswith(suffix))


@dataclass(frozen=True)
class QuarantineRecord:
    digest: str
    kind: str  # "blob" or "manifest"
    size: int
    found: float
    problem: str
    repositories: dict[str, str]  # repository -> "proxied" (fetched again) | "pushed"

    @property
    def needs_push(self) -> bool:
        return "proxied" not in self.repositories.values()


def quarantine_dir(layout: Layout) -> Path:
    return layout.root / "quarantine"


def quarantine(
    index: Index,
    layout: Layout,
    verdict: Verdict,
    is_proxied: Callable[[str], bool],
    now: float | None = None,
) -> QuarantineRecord | None:
    """Move a bad file out of blobs/ and drop its records; None when it was no longer the
    bad file (collected, or replaced by a verified copy) and nothing was done."""
    assert verdict.problem is not None
    parsed = Digest.parse(verdict.digest)
    path = layout.blob_path(parsed)
    repos = linking_repositories(index, verdict.digest)
    target_dir = quarantine_dir(layout) / parsed.algorithm
    target_dir.mkdir(parents=True, exist_ok=True)
    key = verdict.digest.encode()
    with index.env.begin(write=True) as txn:
        raw = txn.get(key, db=index.db["blobs"])
        if raw is None or _file_id(path) != verdict.file_id:
            return None
        kind = "manifest" if txn.get(key, db=index.db["manifests"]) is not None else "blob"
        size = int(json.loads(raw)["size"])
        record = QuarantineRecord(
            verdict.digest,
            kind,
            size,
            time.time() if now is None else now,
            verdict.problem,
            {repo: "proxied" if is_proxied(repo) else "pushed" for repo in repos},
        )
        if verdict.file_id is not None:
            os.replace(path, target_dir / parsed.hex)
        (target_dir / f"{parsed.hex}.json").write_text(json.dumps(asdict(record), indent=1))
        txn.delete(key, db=index.db["blobs"])
        txn.delete(key, db=index.db["manifests"])
        meta = index.db["meta"]
        total = int(txn.get(b"store_bytes", db=meta) or 0)
        # A missing file's bytes were never on disk: store_bytes counted them all the same.
        txn.put(b"store_bytes", str(max(0, total - size)).encode(), db=meta)
    return record


def quarantined(layout: Layout, index: Index, limit: int = 100) -> list[dict[str, Any]]:
    """Records of quarantined objects, newest first, each marked restored once the store
    holds its digest again (re-pushed, fetched again)."""
    records: list[dict[str, Any]] = []
    root = quarantine_dir(layout)
    if not root.is_dir():
        return records
    for path in root.glob("*/*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        record["restored"] = index.blob(record["digest"]) is not None
        records.append(record)
    records.sort(key=lambda r: -float(r.get("found", 0)))
    return records[:limit]
