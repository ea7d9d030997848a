"""The async face of the store: what the server and the CLI call.

Reads of the index run inline (LMDB reads are memory-mapped and take microseconds); anything
that writes, hashes or fsyncs runs in a worker thread so that the event loop never waits on
the disk.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..oci import errors
from ..oci.digest import Digest
from ..oci.manifest import Manifest, referrer_descriptor
from .files import BlobWriter, DigestMismatch, Layout, publish_file, seal_bytes
from .index import Index, MissingChildren, NotManifests, WrongSizes
from .keys import check_keys
from .uploads import Uploads, drain

_log = logging.getLogger("edgecache.store")


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    path: Path


@dataclass(frozen=True)
class ManifestInfo:
    digest: Digest
    size: int
    media_type: str
    path: Path


@dataclass(frozen=True)
class TagInfo:
    tag: str
    digest: Digest
    updated: float


class Store:
    def __init__(self, root: Path) -> None:
        self.layout = Layout(root)
        self.layout.create()
        self.index = Index(self.layout.index)
        self.uploads = Uploads(self.layout, self.index)

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, sweep: bool = False) -> Store:
        """Open a data directory; `sweep` (the server at start-up) also clears what a crash
        left: unfinished writes in tmp/ and an interrupted garbage-collection batch."""
        store = cls(Path(root))
        if sweep:
            from .collect import recover_trash

            store.layout.sweep_tmp()
            recover_trash(store.index, store.layout)
        return store

    def close(self) -> None:
        self.index.close()

    # ---- blobs ---------------------------------------------------------------------------

    def blob(self, repo: str, digest: Digest) -> BlobInfo | None:
        """A blob (or manifest bytes) visible in repo."""
        record = self.index.linked_blob(repo, str(digest))
        if record is None:
            return None
        return BlobInfo(digest, int(record["size"]), self.layout.blob_path(digest))

    async def put_blob_stream(
        self, repo: str, expected: Digest, chunks: Any, *, pin: bool = False
    ) -> BlobInfo:
        """Monolithic upload: stream `chunks` (async iterator of bytes) into the store."""
        check_keys(repo, digest=str(expected))
        writer = await trio.to_thread.run_sync(BlobWriter.in_tmp, self.layout)
        try:
            await drain(chunks, writer)
            return await self._publish(repo, writer, expected, pin=pin)
        finally:
            await trio.to_thread.run_sync(writer.discard)

    async def _publish(
        self, repo: str, writer: BlobWriter, expected: Digest, *, pin: bool = False
    ) -> BlobInfo:
        def work() -> BlobInfo:
            try:
                writer.seal(expected)
            except DigestMismatch as exc:
                raise errors.DigestInvalid(
                    f"uploaded content has digest {exc.actual}, not {exc.expected}",
                    detail={"expected": str(exc.expected), "actual": str(exc.actual)},
                ) from None
            self.index.commit_blob(
                repo,
                str(expected),
                writer.size,
                partial(publish_file, self.layout, writer.path, expected),
                pin=pin,
            )
            return BlobInfo(expected, writer.size, self.layout.blob_path(expected))

        return await trio.to_thread.run_sync(work)

    def has_content(self, digest: Digest) -> bool:
        """Whether the store holds these bytes, in whatever repository."""
        return self.index.blob(str(digest)) is not None

    async def link_blob(self, repo: str, digest: Digest, *, pin: bool = False) -> BlobInfo | None:
        """Make stored bytes visible in repo (they are the same bytes whoever fetched them)."""
        link = partial(self.index.link_blob, repo, str(digest), pin=pin)
        if not await trio.to_thread.run_sync(link):
            return None
        return self.blob(repo, digest)

    async def mount_blob(self, repo: str, source: str, digest: Digest) -> bool:
        return await trio.to_thread.run_sync(self.index.mount_blob, repo, source, str(digest))

    async def delete_blob(self, repo: str, digest: Digest) -> bool:
        return await trio.to_thread.run_sync(self.index.delete_blob_link, repo, str(digest))

    # ---- upload sessions (store/uploads.py) -----------------------------------------------

    async def start_upload(
        self,
        repo: str,
        client: str = "",
        *,
        max_per_client: int | None = None,
        max_total: int | None = None,
    ) -> str:
        """A new session; TooManyRequests past the limits (None: unbounded)."""
        check_keys(repo)  # its blob's link, whatever digest the client names at the end
        return await self.uploads.start(
            repo, client, max_per_client=max_per_client, max_total=max_total
        )

    def upload_offset(self, repo: str, upload_id: str) -> int:
        """Bytes received so far; raises BlobUploadUnknown for an unknown session."""
        return self.uploads.offset(repo, upload_id)

    async def append_upload(
        self,
        repo: str,
        upload_id: str,
        start: int | None,
        chunks: Any,
        length: int | None = None,
    ) -> int:
        """Append a chunk; `start` (from Content-Range) must equal the current offset and the
        body must be `length` bytes (when given). All or nothing; SessionBusy (416) while
        another request writes to the session."""
        return await self.uploads.append(repo, upload_id, start, chunks, length)

    async def finish_upload(
        self,
        repo: str,
        upload_id: str,
        expected: Digest,
        chunks: Any,
        start: int | None = None,
        length: int | None = None,
    ) -> BlobInfo:
        """The closing PUT: its body (if any) is the last chunk, checked like a PATCH's."""

        async def publish(writer: BlobWriter) -> BlobInfo:
            return await self._publish(repo, writer, expected)

        check_keys(repo, digest=str(expected))
        return await self.uploads.finish(repo, upload_id, chunks, publish, start, length)

    async def cancel_upload(self, repo: str, upload_id: str) -> None:
        await self.uploads.cancel(repo, upload_id)

    async def expire_uploads(self, idle: float) -> None:
        """Run for the server's lifetime: remove upload sessions idle for `idle` seconds."""
        await self.uploads.expire_forever(idle)

    # ---- manifests and tags --------------------------------------------------------------

    def _named(self, repo: str, reference: str) -> Digest | None:
        """The digest a tag of repo names (the reference itself when it is a digest)."""
        if ":" in reference:
            return Digest.parse(reference)
        record = self.index.tag(repo, reference)
        return None if record is None else Digest.parse(record["digest"])

    def resolve(self, repo: str, reference: str) -> Digest | None:
        """Tag or digest -> digest of a manifest visible in repo."""
        digest = self._named(repo, reference)
        if digest is None or self.index.linked(repo, str(digest)) != "manifest":
            return None
        return digest

    def manifest(self, repo: str, reference: str) -> ManifestInfo | None:
        digest = self.resolve(repo, reference)
        if digest is None:
            return None
        record = self.index.manifest(str(digest))
        if record is None:
            return None
        return ManifestInfo(
            digest, int(record["size"]), record["media_type"], self.layout.blob_path(digest)
        )

    async def put_manifest(
        self,
        repo: str,
        data: bytes,
        manifest: Manifest,
        digest: Digest,
        tag: str | None,
        *,
        require_children: bool = True,
        pin: bool = False,
    ) -> None:
        """Store a manifest. Pushed ones need their children linked in repo; proxied ones
        (`require_children=False`) are cached before the children, which come by digest."""
        record = {
            "media_type": manifest.media_type,
            "size": len(data),
            "blobs": [str(d.digest) for d in manifest.blob_children if _must_exist(d.media_type)],
            "manifests": [str(d.digest) for d in manifest.manifest_children],
            "subject": str(manifest.subject.digest) if manifest.subject else None,
            "artifact_type": manifest.effective_artifact_type,
        }
        # Sizes are claims about the content; a client trusts them (containerd refuses a
        # layer whose size differs), so a pushed manifest must state them right.
        declared = {
            str(d.digest): d.size
            for d in (*manifest.blob_children, *manifest.manifest_children)
            if _must_exist(d.media_type)
        }
        check_keys(
            repo,
            digest=str(digest),
            tag=tag,
            subject=str(manifest.subject.digest) if manifest.subject else None,
        )
        referrer = None
        if manifest.subject is not None:
            referrer = (
                str(manifest.subject.digest),
                referrer_descriptor(manifest, digest, len(data)),
            )

        def work() -> None:
            writer = seal_bytes(self.layout, data, digest)
            publish = partial(publish_file, self.layout, writer.path, digest)
            try:
                self.index.commit_manifest(
                    repo,
                    str(digest),
                    len(data),
                    record,
                    tag,
                    referrer,
                    publish,
                    require_children=require_children,
                    pin=pin,
                    declared=declared if require_children else None,
                )
            except MissingChildren as exc:
                writer.discard()
                raise errors.ManifestBlobUnknown(
                    f"manifest references content not in {repo}: {', '.join(exc.digests)}",
                    detail={"missing": list(exc.digests)},
                ) from None
            except WrongSizes as exc:
                writer.discard()
                wrong = (f"{d} is {stored} bytes, not {size}" for d, size, stored in exc.mismatches)
                raise errors.ManifestInvalid(
                    "manifest declares sizes its content does not have: " + ", ".join(wrong),
                    detail={"wrong_sizes": [list(m) for m in exc.mismatches]},
                ) from None
            except NotManifests as exc:
                writer.discard()
                raise errors.ManifestInvalid(
                    f"index lists content of {repo} that is a blob, not a manifest: "
                    f"{', '.join(exc.digests)}",
                    detail={"not_manifests": list(exc.digests)},
                ) from None
            except BaseException:
                writer.discard()
                raise

        await trio.to_thread.run_sync(work)
        _log.debug("manifest %s committed in %s (tag %s)", digest, repo, tag)

    def quarantined_in(self, repo: str, reference: str) -> Digest | None:
        """The digest a tag or digest names in repo, when its content was found corrupt on
        disk and is in quarantine now (see store/scrub.py): a miss then says why."""
        digest = self._named(repo, reference)
        if digest is None or self.index.raw_link(repo, str(digest)) is None:
            return None  # never linked here: not this repository's business
        quarantined = self.layout.root / "quarantine" / digest.algorithm / digest.hex
        return digest if quarantined.exists() else None

    def tags(self, repo: str) -> list[str]:
        return self.index.tags(repo)

    def tag(self, repo: str, tag: str) -> TagInfo | None:
        record = self.index.tag(repo, tag)
        if record is None:
            return None
        return TagInfo(tag, Digest.parse(record["digest"]), float(record["updated"]))

    def repo_exists(self, repo: str) -> bool:
        return self.index.repo_exists(repo)

    def repositories(self) -> list[str]:
        return self.index.repositories()

    def referrers(self, repo: str, subject: Digest) -> list[dict[str, Any]]:
        return self.index.referrers(repo, str(subject))

    async def delete_manifest(self, repo: str, digest: Digest) -> bool:
        return await trio.to_thread.run_sync(self.index.delete_manifest, repo, str(digest))

    async def delete_tag(self, repo: str, tag: str) -> bool:
        return await trio.to_thread.run_sync(self.index.delete_tag, repo, tag)

    # ---- statistics ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        counts = self.index.counts()
        return {
            "store_bytes": self.index.meta_int("store_bytes"),
            "blobs": counts["blobs"],
            "manifests": counts["manifests"],
            "tags": counts["tags"],
            "repositories": counts["repos"],
            "uploads_in_progress": len(self.uploads),
            "time": time.time(),
        }


# Foreign / non-distributable layers live elsewhere by design (Windows base layers): a manifest
# may name them without the registry holding them.
_NONDISTRIBUTABLE_MARKERS = ("foreign", "nondistributable")


def _must_exist(media_type: str) -> bool:
    return not any(marker in media_type for marker in _NONDISTRIBUTABLE_MARKERS)
