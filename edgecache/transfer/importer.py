"""`edgecache preload`: read inputs, check everything, then publish.

Per input: every entry is spooled (spool.py) while the progress bar runs, the images are
planned and checked (docker_save.py / oci_layout.py), and only then are blobs published and
manifests and tags committed, children before parents, so that a reader (the server, which may
be running on the same data directory) never sees a tag whose content is incomplete. What the
store already has is linked, not written: a second import of the same file writes nothing.

Referrers of an OCI layout (oci_layout.py) follow the images of their input: each is stored
untagged, the same way (blobs, then manifests, children first, each verified), in every
repository its subject was just stored in, or, when the input leaves the subject out, in those
of the input's repositories that already hold it; a referrer of a referrer after the one it
refers to, so that the referrers API never lists something whose subject is not there yet.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TextIO

import trio

from ..config import Config, load
from ..oci.digest import Digest
from ..oci.errors import OCIError
from ..store import Store
from ..store.files import publish_file
from ..usererror import open_store
from . import docker_save, oci_layout
from .archive import Limits, input_size, iter_members
from .errors import TransferError
from .names import ImageName, in_store, literal
from .plan import ImagePlan, ManifestDoc, ReferrerPlan, counted
from .progress import Progress, human_bytes
from .spool import Inventory, Spool, Spooled


@dataclass
class Summary:
    images: list[tuple[str, Digest]] = field(default_factory=list)  # "repo:tag", manifest
    manifests: set[Digest] = field(default_factory=set)  # distinct manifests and indexes
    blobs: set[Digest] = field(default_factory=set)  # distinct configs and layers
    referrers: set[Digest] = field(default_factory=set)  # distinct referrer manifests
    new_blobs: int = 0
    new_bytes: int = 0
    skipped: int = 0  # blobs the store already had

    def line(self) -> str:
        moved = counted(len(self.images), len(self.manifests), len(self.blobs), len(self.referrers))
        return (
            f"{moved} ({self.new_blobs} new, {human_bytes(self.new_bytes)}; {self.skipped} already "
            "stored)"
        )


def preload(
    data: Path,
    files: list[Path],
    *,
    rename: str | None = None,
    pin: bool = True,
    err: TextIO | None = None,
    tty: bool | None = None,
    limits: Limits | None = None,
    config: Config | None = None,
) -> Summary:
    """Import `files` into the store at `data`; raises TransferError on bad input.

    `config` maps names to the repositories the server serves them from (names.py); by
    default the embedded one."""
    err = err if err is not None else sys.stderr
    config = config if config is not None else load(env={})
    target = literal(rename, "--as") if rename is not None else None
    if target is not None and len(files) != 1:
        raise TransferError("--as names one image: give exactly one FILE with it")
    for path in files:
        if not path.exists():
            raise TransferError(f"{path}: no such file or directory")
    store = open_store(data)
    spool = Spool(store)
    summary = Summary()
    try:
        spool.acquire()
        for path in files:
            plans, referrers = _read(store, spool, path, target, limits or Limits(), err, tty)
            placed = _placed(store, plans, referrers, config)  # refusals before any publish
            for plan in plans:
                _publish(store, plan, pin, summary, config)
            for referrer, repos in placed:
                _publish_referrer(store, referrer, repos, pin, summary)
        spool.sweep()
    except TransferError:
        spool.sweep()
        raise
    finally:
        spool.release()
        store.close()
    return summary


def _read(
    store: Store,
    spool: Spool,
    path: Path,
    rename: ImageName | None,
    limits: Limits,
    err: TextIO,
    tty: bool | None,
) -> tuple[list[ImagePlan], list[ReferrerPlan]]:
    inv = Inventory(str(path))
    with Progress(f"preload {path.name}", input_size(path), out=err, tty=tty) as progress:
        for member in iter_members(path, limits, progress):
            spool.add(inv, member)
        spool.settle(inv)
        spool.drain()
    if "index.json" in inv.meta:
        return oci_layout.plans(inv, rename, spool.known)
    if "manifest.json" in inv.meta:
        return docker_save.plans(inv, rename), []
    raise TransferError(
        f"{path}: neither an OCI image layout (no index.json) nor a docker save archive "
        "(no manifest.json)"
    )


def _publish(store: Store, plan: ImagePlan, pin: bool, summary: Summary, config: Config) -> None:
    for name in dict.fromkeys(in_store(config, n, plan.origin) for n in plan.names):
        for blob in plan.blobs:
            _put_blob(store, name.repo, blob, pin, summary, plan.origin)
        for child in plan.children:
            _put_manifest(store, name.repo, child, None, pin, plan.origin)
            summary.manifests.add(child.digest)
        _put_manifest(store, name.repo, plan.top, name.tag, pin, plan.origin)
        summary.manifests.add(plan.top.digest)
        summary.images.append((str(name), plan.top.digest))


def _placed(
    store: Store, plans: list[ImagePlan], referrers: list[ReferrerPlan], config: Config
) -> list[tuple[ReferrerPlan, list[str]]]:
    """Each referrer with the repositories it goes to, in an order that puts every referrer
    after its subject; a referrer whose subject is nowhere to be found is refused."""
    repos_of: dict[Digest, list[str]] = {}
    targets: list[str] = []
    for plan in plans:
        for name in dict.fromkeys(in_store(config, n, plan.origin) for n in plan.names):
            targets.append(name.repo)
            for doc in (plan.top, *plan.children):
                repos_of.setdefault(doc.digest, []).append(name.repo)
    targets = list(dict.fromkeys(targets))
    waiting = {r.top.digest for r in referrers}
    placed: list[tuple[ReferrerPlan, list[str]]] = []
    pending = referrers
    while pending:
        later = []
        for referrer in pending:
            subject = referrer.subject
            if subject in repos_of:
                repos = list(dict.fromkeys(repos_of[subject]))
            elif subject in waiting:
                later.append(referrer)  # its subject is a referrer not placed yet
                continue
            else:
                repos = [t for t in targets if store.resolve(t, str(subject)) is not None]
                if not repos:
                    raise TransferError(
                        f"{referrer.origin}: a referrer of {subject}, which is neither in the "
                        f"input nor in {' or '.join(targets)}: refused"
                    )
            for doc in (referrer.top, *referrer.children):
                repos_of.setdefault(doc.digest, []).extend(repos)
            waiting.discard(referrer.top.digest)
            placed.append((referrer, repos))
        if len(later) == len(pending):  # content addressing makes a cycle impossible
            raise TransferError(f"{later[0].origin}: referrers refer to each other: refused")
        pending = later
    return placed


def _publish_referrer(
    store: Store, referrer: ReferrerPlan, repos: list[str], pin: bool, summary: Summary
) -> None:
    for repo in repos:
        for blob in referrer.blobs:
            _put_blob(store, repo, blob, pin, summary, referrer.origin)
        for child in referrer.children:
            _put_manifest(store, repo, child, None, pin, referrer.origin)
            summary.manifests.add(child.digest)
        _put_manifest(store, repo, referrer.top, None, pin, referrer.origin)
    summary.referrers.add(referrer.top.digest)


def _put_blob(
    store: Store, repo: str, blob: Spooled, pin: bool, summary: Summary, origin: str
) -> None:
    key = str(blob.digest)
    first = blob.digest not in summary.blobs
    summary.blobs.add(blob.digest)
    record = store.index.blob(key)
    if record is not None:
        summary.skipped += first
        if store.index.linked(repo, key) and (record.get("pinned") or not pin):
            return
        if store.index.link_blob(repo, key, pin=pin):
            return
    if blob.stored or not blob.path.exists():
        raise TransferError(
            f"{origin}: {key} was removed from the store during the import (evicted?); "
            "run the preload again"
        )
    publish = partial(publish_file, store.layout, blob.path, blob.digest)
    store.index.commit_blob(repo, key, blob.size, publish, pin=pin)
    summary.new_blobs += 1
    summary.new_bytes += blob.size


def _put_manifest(
    store: Store, repo: str, doc: ManifestDoc, tag: str | None, pin: bool, origin: str
) -> None:
    existing = store.manifest(repo, tag or str(doc.digest))
    if existing is not None and existing.digest == doc.digest:
        record = store.index.blob(str(doc.digest)) or {}
        if record.get("pinned") or not pin:
            return
    put = partial(store.put_manifest, repo, doc.data, doc.manifest, doc.digest, tag, pin=pin)
    try:
        trio.run(put)
    except OCIError as exc:
        raise TransferError(f"{origin}: {exc.message}") from None
