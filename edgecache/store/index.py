"""The LMDB index: the content graph (see the data-directory layout in store/__init__.py).

All methods are synchronous. Reads are microseconds and may run on the event loop; writes
take LMDB's single writer lock and must run in a worker thread. Every invariant that a
concurrent writer could break (a child deleted between check and link) is re-checked inside
the write transaction that depends on it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lmdb

from .keys import MAX_KEY, SEP, referrer_key, referrer_keys
from .keys import key as _k
from .keys import write_key as _wk

_DBS = (
    "blobs",
    "manifests",
    "tags",
    "links",
    "referrers",
    "repos",
    "uploads",
    "meta",
    "access",
    "gcruns",
    "declared",
    "preheat",
    "scans",
    "policies",
)
GC_RUNS_KEPT = 1000  # records of past garbage-collection runs (runs can be asked for at will)


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _load(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(raw)
    return result


class MissingChildren(Exception):
    """Raised inside a manifest commit when referenced content is not in the repository."""

    def __init__(self, digests: tuple[str, ...]) -> None:
        super().__init__(*digests)
        self.digests = digests


class WrongSizes(Exception):
    """Raised inside a manifest commit when a descriptor's size is not its content's."""

    def __init__(self, mismatches: tuple[tuple[str, int, int], ...]) -> None:
        super().__init__(*mismatches)
        self.mismatches = mismatches  # (digest, size declared, size stored)


class NotManifests(Exception):
    """Raised inside a manifest commit when an index names content that is not a manifest."""

    def __init__(self, digests: tuple[str, ...]) -> None:
        super().__init__(*digests)
        self.digests = digests


class Index:
    def __init__(self, path: Path, map_size: int = 1 << 36) -> None:
        # map_size is address space, not disk: the file grows only as data is written.
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=len(_DBS), max_readers=512, metasync=True
        )
        self.db = {name: self.env.open_db(name.encode()) for name in _DBS}
        if self.env.max_key_size() < MAX_KEY:
            raise RuntimeError(f"this LMDB build takes keys of {self.env.max_key_size()} bytes")

    def close(self) -> None:
        self.env.close()

    # ---- reads ---------------------------------------------------------------------------

    def _get(self, db: str, key: bytes) -> dict[str, Any] | None:
        with self.env.begin(db=self.db[db]) as txn:
            raw = txn.get(key)
        return None if raw is None else _load(raw)

    def blob(self, digest: str) -> dict[str, Any] | None:
        return self._get("blobs", digest.encode())

    def manifest(self, digest: str) -> dict[str, Any] | None:
        return self._get("manifests", digest.encode())

    def tag(self, repo: str, tag: str) -> dict[str, Any] | None:
        return self._get("tags", _k(repo, tag))

    def upload(self, upload_id: str) -> dict[str, Any] | None:
        return self._get("uploads", upload_id.encode())

    def linked(self, repo: str, digest: str) -> str | None:
        """The kind ("blob"/"manifest") of content linked into repo, if it is there."""
        with self.env.begin() as txn:
            raw = txn.get(_k(repo, digest), db=self.db["links"])
            if raw is None or txn.get(digest.encode(), db=self.db["blobs"]) is None:
                return None
        kind: str = _load(raw)["kind"]
        return kind

    def raw_link(self, repo: str, digest: str) -> dict[str, Any] | None:
        """The link record, whether or not the content it names is stored now."""
        return self._get("links", _k(repo, digest))

    def linked_blob(self, repo: str, digest: str) -> dict[str, Any] | None:
        """The blob record of content linked into repo (one read transaction: a hot path)."""
        with self.env.begin() as txn:
            if txn.get(_k(repo, digest), db=self.db["links"]) is None:
                return None
            raw = txn.get(digest.encode(), db=self.db["blobs"])
        return None if raw is None else _load(raw)

    def _scan(self, db: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        with self.env.begin(db=self.db[db]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                yield key, value

    def tags(self, repo: str) -> list[str]:
        prefix = _k(repo, "")
        return [key[len(prefix) :].decode() for key, _ in self._scan("tags", prefix)]

    def tags_for_digest(self, repo: str, digest: str) -> list[str]:
        prefix = _k(repo, "")
        return [
            key[len(prefix) :].decode()
            for key, value in self._scan("tags", prefix)
            if _load(value)["digest"] == digest
        ]

    def repositories(self) -> list[str]:
        return [key.decode() for key, _ in self._scan("repos", b"")]

    def repo_exists(self, repo: str) -> bool:
        return self._get("repos", repo.encode()) is not None

    def referrers(self, repo: str, subject: str) -> list[dict[str, Any]]:
        return [_load(value) for _, value in self._scan("referrers", _k(repo, subject, ""))]

    def meta_int(self, name: str) -> int:
        with self.env.begin(db=self.db["meta"]) as txn:
            raw = txn.get(name.encode())
        return int(raw) if raw else 0

    def counts(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {name: txn.stat(self.db[name])["entries"] for name in _DBS if name != "meta"}

    def all_blobs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, value in self._scan("blobs", b""):
            yield key.decode(), _load(value)

    def all_uploads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for key, value in self._scan("uploads", b""):
            yield key.decode(), _load(value)

    # ---- writes (worker thread) ----------------------------------------------------------

    def _ensure_repo(self, txn: lmdb.Transaction, repo: str) -> None:
        key = repo.encode()
        if txn.get(key, db=self.db["repos"]) is None:
            txn.put(key, _dump({"created": time.time()}), db=self.db["repos"])

    def _add_blob(self, txn: lmdb.Transaction, digest: str, size: int, pin: bool = False) -> None:
        key = digest.encode()
        raw = txn.get(key, db=self.db["blobs"])
        if raw is None:
            record: dict[str, Any] = {
                "size": size,
                "created": time.time(),
                "gen": self._next_gen(txn),
            }
            if pin:
                record["pinned"] = True
            txn.put(key, _dump(record), db=self.db["blobs"])
            total = txn.get(b"store_bytes", db=self.db["meta"])
            txn.put(b"store_bytes", str(int(total or 0) + size).encode(), db=self.db["meta"])
        else:
            record = _load(bytes(raw))
            if pin:
                record["pinned"] = True
            self._stamp(txn, key, record)

    def _next_gen(self, txn: lmdb.Transaction) -> int:
        """A counter bumped by every transaction that references content, in commit order."""
        gen = int(txn.get(b"gen", db=self.db["meta"]) or 0) + 1
        txn.put(b"gen", str(gen).encode(), db=self.db["meta"])
        return gen

    def _stamp(self, txn: lmdb.Transaction, key: bytes, record: dict[str, Any]) -> None:
        # "gen" orders this reference against garbage collection's mark: the sweep spares
        # anything stamped after the snapshot it marked from, so a push or fetch racing it can
        # never lose content. (Wall-clock times cannot do this: a transaction's commit, with
        # its fsync, lands well after the times taken inside it.) "ref" is for the grace window.
        record["ref"] = time.time()
        record["gen"] = self._next_gen(txn)
        txn.put(key, _dump(record), db=self.db["blobs"])

    def _link_blob(self, txn: lmdb.Transaction, key: bytes) -> None:
        # Never turns a manifest's link into a blob's: manifest bytes uploaded as a blob would
        # otherwise make the manifest unresolvable in the repository.
        raw = txn.get(key, db=self.db["links"])
        if raw is None or _load(bytes(raw))["kind"] != "manifest":
            txn.put(key, _dump({"kind": "blob"}), db=self.db["links"])

    @contextlib.contextmanager
    def _publishing(
        self, digest: str, publish: Callable[[], object] | None
    ) -> Iterator[tuple[lmdb.Transaction, Callable[[], None]]]:
        """A write transaction in which `publish()` puts content's file in place.

        If the transaction fails after a rename that created the file, the file is removed
        again: nothing in blobs/ without an index entry. A file that the rename replaced
        stays, its old entry still names it (and its bytes are verified ones).
        """
        created: list[Path] = []

        def publish_now() -> None:
            if publish is not None:
                path = publish()
                if isinstance(path, Path):
                    created.append(path)

        try:
            with self.env.begin(write=True) as txn:
                yield txn, publish_now
        except BaseException:
            if created:
                self._unpublish(digest, created[0])
            raise

    def _unpublish(self, digest: str, path: Path) -> None:
        # In a write transaction of its own: another writer (this process or another one) may
        # have published and recorded the same digest since; then the file is theirs.
        with contextlib.suppress(lmdb.Error, OSError), self.env.begin(write=True) as txn:
            if txn.get(digest.encode(), db=self.db["blobs"]) is None:
                path.unlink(missing_ok=True)

    def _touch(self, txn: lmdb.Transaction, digest: str) -> None:
        raw = txn.get(digest.encode(), db=self.db["blobs"])
        if raw is not None:
            self._stamp(txn, digest.encode(), _load(bytes(raw)))

    def commit_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        publish: Callable[[], object] | None = None,
        *,
        pin: bool = False,
    ) -> None:
        """Record a blob and link it into repo; `publish` puts its file in place first.

        `pin` protects the content from eviction (preloaded images)."""
        link = _wk(repo, digest)
        with self._publishing(digest, publish) as (txn, publish_now):
            publish_now()
            self._add_blob(txn, digest, size, pin)
            self._link_blob(txn, link)
            self._ensure_repo(txn, repo)

    def link_blob(self, repo: str, digest: str, *, pin: bool = False) -> bool:
        """Link stored content into repo; False when the store does not have it (any more)."""
        link = _wk(repo, digest)
        with self.env.begin(write=True) as txn:
            raw = txn.get(digest.encode(), db=self.db["blobs"])
            if raw is None:
                return False
            self._add_blob(txn, digest, int(_load(raw)["size"]), pin)
            self._link_blob(txn, link)
            self._ensure_repo(txn, repo)
            return True

    def mount_blob(self, repo: str, source: str, digest: str) -> bool:
        """Link a blob from another repository; False when the source does not have it."""
        link = _wk(repo, digest)
        with self.env.begin(write=True) as txn:
            raw = txn.get(_k(source, digest), db=self.db["links"])
            if raw is None or txn.get(digest.encode(), db=self.db["blobs"]) is None:
                return False
            if _load(raw)["kind"] != "blob":
                return False
            self._touch(txn, digest)
            self._link_blob(txn, link)
            self._ensure_repo(txn, repo)
            return True

    def commit_manifest(
        self,
        repo: str,
        digest: str,
        size: int,
        record: dict[str, Any],
        tag: str | None,
        referrer: tuple[str, dict[str, Any]] | None,
        publish: Callable[[], object],
        *,
        require_children: bool = True,
        pin: bool = False,
        declared: Mapping[str, int] | None = None,
    ) -> None:
        """Record a manifest; its children must be linked into repo (an index's children must
        be manifests there, and each must have the size `declared` for it), else nothing
        changes."""
        link_key = _wk(repo, digest)
        tag_key = _wk(repo, tag) if tag is not None else None
        referrer_at = referrer_key(repo, referrer[0], digest) if referrer is not None else None
        with self._publishing(digest, publish) as (txn, publish_now):
            missing, not_manifests, wrong_sizes = [], [], []
            indexed = set(record["manifests"])
            children = (*record["blobs"], *record["manifests"]) if require_children else ()
            for child in children:
                link = txn.get(_k(repo, child), db=self.db["links"])
                blob = txn.get(child.encode(), db=self.db["blobs"])
                if link is None or blob is None:
                    missing.append(child)
                    continue
                if child in indexed and _load(bytes(link))["kind"] != "manifest":
                    not_manifests.append(child)
                stored = int(_load(bytes(blob))["size"])
                if declared is not None and declared.get(child, stored) != stored:
                    wrong_sizes.append((child, declared[child], stored))
            if missing:
                raise MissingChildren(tuple(missing))
            if not_manifests:
                raise NotManifests(tuple(not_manifests))
            if wrong_sizes:
                raise WrongSizes(tuple(wrong_sizes))
            publish_now()
            for child in (*record["blobs"], *record["manifests"]):
                self._touch(txn, child)
            self._add_blob(txn, digest, size, pin)
            txn.put(digest.encode(), _dump(record), db=self.db["manifests"])
            txn.put(link_key, _dump({"kind": "manifest"}), db=self.db["links"])
            if tag_key is not None:
                txn.put(
                    tag_key, _dump({"digest": digest, "updated": time.time()}), db=self.db["tags"]
                )
            if referrer is not None and referrer_at is not None:
                txn.put(referrer_at, _dump(referrer[1]), db=self.db["referrers"])
            self._ensure_repo(txn, repo)

    def delete_tag(self, repo: str, tag: str) -> bool:
        with self.env.begin(write=True) as txn:
            return bool(txn.delete(_k(repo, tag), db=self.db["tags"]))

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Unlink a manifest from repo with every tag naming it and its referrer entry.

        The bytes stay until garbage collection proves nothing else uses them.
        """
        with self.env.begin(write=True) as txn:
            raw = txn.get(_k(repo, digest), db=self.db["links"])
            if raw is None or _load(bytes(raw))["kind"] != "manifest":
                return False
            txn.delete(_k(repo, digest), db=self.db["links"])
            cursor = txn.cursor(db=self.db["tags"])
            prefix = _k(repo, "")
            doomed = []
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    if _load(value)["digest"] == digest:
                        doomed.append(key)
            for key in doomed:
                txn.delete(key, db=self.db["tags"])
            record = txn.get(digest.encode(), db=self.db["manifests"])
            subject = _load(record).get("subject") if record else None
            if subject:
                for key in referrer_keys(repo, subject, digest):
                    txn.delete(key, db=self.db["referrers"])
            return True

    def delete_blob_link(self, repo: str, digest: str) -> bool:
        with self.env.begin(write=True) as txn:
            raw = txn.get(_k(repo, digest), db=self.db["links"])
            if raw is None or _load(raw)["kind"] != "blob":
                return False
            return bool(txn.delete(_k(repo, digest), db=self.db["links"]))

    def start_upload(self, upload_id: str, record: dict[str, Any]) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(upload_id.encode(), _dump(record), db=self.db["uploads"])

    def touch_upload(self, upload_id: str, active: float) -> None:
        """Record an upload session's last activity (what its idle expiry goes by)."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(upload_id.encode(), db=self.db["uploads"])
            if raw is not None:
                record = _load(raw)
                record["active"] = active
                txn.put(upload_id.encode(), _dump(record), db=self.db["uploads"])

    def end_upload(self, upload_id: str) -> bool:
        with self.env.begin(write=True) as txn:
            return bool(txn.delete(upload_id.encode(), db=self.db["uploads"]))

    def forget_blob(self, digest: str) -> bool:
        """Drop a blob record (fsck --repair of an entry whose file is gone or wrong)."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(digest.encode(), db=self.db["blobs"])
            if raw is None:
                return False
            txn.delete(digest.encode(), db=self.db["blobs"])
            txn.delete(digest.encode(), db=self.db["manifests"])
            total = int(txn.get(b"store_bytes", db=self.db["meta"]) or 0)
            size = int(_load(raw)["size"])
            txn.put(b"store_bytes", str(max(0, total - size)).encode(), db=self.db["meta"])
            return True

    # ---- sizes that proxied manifests declared for their blobs -------------------------

    def declare_sizes(self, sizes: dict[str, int]) -> None:
        """Remember the size a proxied manifest gave each child: a later download of that
        digest stops there (cache/fetch.py). One digest has one true size, so the latest
        manifest's word stands; a wrong one only makes that download fail as corrupt."""
        with self.env.begin(write=True, db=self.db["declared"]) as txn:
            for digest, size in sizes.items():
                txn.put(digest.encode(), str(size).encode())

    def declared_size(self, digest: str) -> int | None:
        with self.env.begin(db=self.db["declared"]) as txn:
            raw = txn.get(digest.encode())
        return None if raw is None else int(raw)

    # ---- housekeeping: pull times and garbage-collection history ---------------------------

    def record_access(self, times: dict[tuple[str, str], float]) -> None:
        """Store last-pulled times collected in memory: one transaction for many pulls."""
        with self.env.begin(write=True) as txn:
            for (repo, digest), when in times.items():
                txn.put(_k(repo, digest), str(when).encode(), db=self.db["access"])

    def access_times(self) -> dict[tuple[str, str], float]:
        result: dict[tuple[str, str], float] = {}
        for key, value in self._scan("access", b""):
            repo, digest = key.decode().split(SEP)
            result[(repo, digest)] = float(value)
        return result

    def manifest_links(self) -> list[tuple[str, str, float]]:
        """(repo, digest, created) of every manifest linked into a repository."""
        result = []
        with self.env.begin() as txn:
            blobs = self.db["blobs"]
            for key, value in txn.cursor(db=self.db["links"]):
                if _load(value)["kind"] != "manifest":
                    continue
                repo, digest = key.decode().split(SEP)
                raw = txn.get(digest.encode(), db=blobs)
                created = float(_load(raw).get("created", 0)) if raw else 0.0
                result.append((repo, digest, created))
        return result

    def add_gc_run(self, record: dict[str, Any], keep: int = GC_RUNS_KEPT) -> None:
        """Record a run; only the newest `keep` records are kept."""
        key = f"{record['started']:020.6f}".encode()
        with self.env.begin(write=True, db=self.db["gcruns"]) as txn:
            txn.put(key, _dump(record))
            extra = txn.stat(self.db["gcruns"])["entries"] - keep
            cursor = txn.cursor()
            while extra > 0 and cursor.first():
                cursor.delete()
                extra -= 1

    def gc_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        with self.env.begin(db=self.db["gcruns"]) as txn:
            cursor = txn.cursor()
            if limit > 0 and cursor.last():
                for _, value in cursor.iterprev():
                    runs.append(_load(value))
                    if len(runs) >= limit:
                        break
        return runs

    # ---- preheat: jobs (bounded history) and policies set through the admin API ------------

    def put_preheat(self, key: str, record: dict[str, Any] | None, keep: int = 0) -> None:
        """Write (None: delete) one record; with `keep`, only the newest `keep` records under
        the key's prefix ("job/") stay (keys sort by creation)."""
        prefix = key.split("/", 1)[0].encode() + b"/"
        with self.env.begin(write=True, db=self.db["preheat"]) as txn:
            if record is None:
                txn.delete(key.encode())
                return
            txn.put(key.encode(), _dump(record))
            if keep:
                cursor = txn.cursor()
                count = 0
                if cursor.set_range(prefix):
                    for k in cursor.iternext(values=False):
                        if not k.startswith(prefix):
                            break
                        count += 1
                extra = count - keep
                if extra > 0 and cursor.set_range(prefix):
                    while extra > 0 and cursor.key().startswith(prefix):
                        cursor.delete()
                        extra -= 1

    def preheat_records(self, prefix: str, limit: int = 0) -> list[dict[str, Any]]:
        """Records under `prefix`, newest (last key) first; limit 0 = all."""
        found: list[dict[str, Any]] = []
        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])  # just past the prefix's keys
        with self.env.begin(db=self.db["preheat"]) as txn:
            cursor = txn.cursor()
            # The last key before `end`, then backwards: only `limit` records are read.
            positioned = cursor.prev() if cursor.set_range(end) else cursor.last()
            while positioned and cursor.key().startswith(start):
                found.append(_load(cursor.value()))
                if limit and len(found) >= limit:
                    break
                positioned = cursor.prev()
        return found

    def preheat_record(self, key: str) -> dict[str, Any] | None:
        with self.env.begin(db=self.db["preheat"]) as txn:
            raw = txn.get(key.encode())
        return None if raw is None else _load(raw)

    # ---- scans: the pull gate's record of each stored report (scan/service.py) --------------

    def put_scan(self, digest: str, scanner: str, record: dict[str, Any]) -> None:
        """Record a manifest's report and bump `scan_gen` (cached gate decisions drop)."""
        with self.env.begin(write=True) as txn:
            txn.put(_wk(digest, scanner), _dump(record), db=self.db["scans"])
            gen = int(txn.get(b"scan_gen", b"0", db=self.db["meta"]))
            txn.put(b"scan_gen", str(gen + 1).encode(), db=self.db["meta"])

    def scans_of(self, digest: str) -> list[tuple[str, dict[str, Any]]]:
        """(scanner, record) of every report of a manifest, newest first."""
        found = [
            (key.decode().partition(SEP)[2], _load(value))
            for key, value in self._scan("scans", _k(digest, ""))
        ]
        return sorted(found, key=lambda item: -float(item[1].get("scanned", 0)))

    def scans(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(digest, scanner, record) of every report."""
        result = []
        for key, value in self._scan("scans", b""):
            digest, _, scanner = key.decode().partition(SEP)
            result.append((digest, scanner, _load(value)))
        return result

    # ---- pull policies set through the admin API (scan/gate.py) ----------------------------

    def put_pull_policy(self, name: str, table: dict[str, Any] | None) -> None:
        """Set (None: delete) a pull policy and bump `policy_gen`: every serving process
        reloads them."""
        with self.env.begin(write=True) as txn:
            if table is None:
                txn.delete(name.encode(), db=self.db["policies"])
            else:
                txn.put(name.encode(), _dump(table), db=self.db["policies"])
            gen = int(txn.get(b"policy_gen", b"0", db=self.db["meta"]))
            txn.put(b"policy_gen", str(gen + 1).encode(), db=self.db["meta"])

    def pull_policies(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, table) of the policies set through the admin API, by name."""
        return [(k.decode(), _load(v)) for k, v in self._scan("policies", b"")]
