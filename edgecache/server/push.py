"""Write side of the distribution API: uploads, mounts, manifest PUT, deletes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from ..oci import errors
from ..oci.digest import Digest
from ..oci.manifest import parse_manifest
from ..oci.names import Reference, validate_repository
from ..oci.ranges import parse_content_range
from ..oci.routes import Route
from ..scan.service import REPORT_ARTIFACT
from .http import Request
from .pull import _repo

if TYPE_CHECKING:
    from .app import App


def _upload_headers(repo: str, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{repo}/blobs/uploads/{upload_id}",
        "Docker-Upload-UUID": upload_id,
        # The spec's Range here is inclusive and has no "bytes=" unit; an empty upload is 0-0.
        "Range": f"0-{max(offset - 1, 0)}",
    }


def _blob_created(repo: str, digest: Digest) -> dict[str, str]:
    return {"Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": str(digest)}


def _query_digest(req: Request) -> Digest:
    raw = req.query.get("digest")
    if raw is None:
        raise errors.DigestInvalid("the digest query parameter is required to finish an upload")
    return Digest.parse(raw)


async def start_upload(app: App, req: Request, route: Route) -> None:
    repo = _repo(route)
    mount, source = req.query.get("mount"), req.query.get("from")
    if mount is not None:
        digest = Digest.parse(mount)
        if source is not None:
            validate_repository(source)
            if await app.store.mount_blob(repo, source, digest):
                await req.respond(201, _blob_created(repo, digest))
                return
        # The spec's fallback: the source lacks the blob (or was not named), so open a session.
    if "digest" in req.query:
        digest = _query_digest(req)
        await app.store.put_blob_stream(repo, digest, req.chunks())
        await req.respond(201, _blob_created(repo, digest))
        return
    limits = app.config.limits
    upload_id = await app.store.start_upload(
        repo,
        _client(req),
        max_per_client=limits.max_uploads_per_client,
        max_total=limits.max_uploads,
    )
    await req.respond(202, _upload_headers(repo, upload_id, 0))


def _client(req: Request) -> str:
    """The client's address, what upload sessions are counted by."""
    client = req.scope.get("client")
    return str(client[0]) if client else "unknown"


def _upload_id(route: Route) -> str:
    upload_id = route.ref or ""
    # Session ids are our own UUIDs; anything else cannot name a file under uploads/.
    if len(upload_id) != 36 or not all(c in "0123456789abcdef-" for c in upload_id):
        raise errors.BlobUploadUnknown(f"{upload_id!r} is not an upload session id")
    return upload_id


async def upload_status(app: App, req: Request, route: Route) -> None:
    repo, upload_id = _repo(route), _upload_id(route)
    offset = app.store.upload_offset(repo, upload_id)
    await req.respond(204, _upload_headers(repo, upload_id, offset))


def _chunk_range(req: Request) -> tuple[int | None, int | None]:
    """(start, length) a chunk's Content-Range states, or (None, None) when it has none."""
    content_range = req.headers.get("content-range")
    if not content_range:
        return None, None
    start, end = parse_content_range(content_range)
    length = end - start + 1
    declared = req.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != length:
        raise errors.RangeNotSatisfiable(
            f"Content-Range {content_range} covers {length} bytes but Content-Length is {declared}"
        )
    return start, length


async def patch_upload(app: App, req: Request, route: Route) -> None:
    repo, upload_id = _repo(route), _upload_id(route)
    with _with_offset(app, repo, upload_id):
        start, length = _chunk_range(req)
        offset = await app.store.append_upload(repo, upload_id, start, req.chunks(), length)
    await req.respond(202, _upload_headers(repo, upload_id, offset))


async def finish_upload(app: App, req: Request, route: Route) -> None:
    repo, upload_id = _repo(route), _upload_id(route)
    digest = _query_digest(req)
    with _with_offset(app, repo, upload_id):
        start, length = _chunk_range(req)
        await app.store.finish_upload(repo, upload_id, digest, req.chunks(), start, length)
    await req.respond(201, _blob_created(repo, digest))


@contextmanager
def _with_offset(app: App, repo: str, upload_id: str) -> Iterator[None]:
    """A 416 (chunk out of order, session busy, body unlike its Content-Range) tells the
    client where the session stands, as the answer to a status GET would."""
    try:
        yield
    except errors.RangeNotSatisfiable as exc:
        with suppress(errors.BlobUploadUnknown):
            offset = app.store.upload_offset(repo, upload_id)
            exc.headers.update(_upload_headers(repo, upload_id, offset))
        raise


async def cancel_upload(app: App, req: Request, route: Route) -> None:
    repo, upload_id = _repo(route), _upload_id(route)
    await app.store.cancel_upload(repo, upload_id)
    await req.respond(204)


async def put_manifest(app: App, req: Request, route: Route) -> None:
    repo, ref = _repo(route), Reference.parse(route.ref or "")
    data = await req.read_body(app.config.limits.max_manifest_size)
    manifest = parse_manifest(data, req.headers.get("content-type"))
    if manifest.effective_artifact_type == REPORT_ARTIFACT:
        # The pull gate trusts these (scan/gate.py): only scans, members and preload make them.
        raise errors.Denied(
            f"artifactType {REPORT_ARTIFACT} is edgecache's own vulnerability report; it "
            "cannot be pushed"
        )
    digest = ref.digest.algorithm if ref.digest else "sha256"
    computed = Digest.of_bytes(data, digest)
    if ref.digest is not None and ref.digest != computed:
        raise errors.DigestInvalid(
            f"manifest body has digest {computed}, not {ref.digest} as in the URL",
            detail={"expected": str(ref.digest), "actual": str(computed)},
        )
    await app.store.put_manifest(repo, data, manifest, computed, ref.tag)
    app.event("push", repo, ref.tag, str(computed))
    headers = {
        "Location": f"/v2/{repo}/manifests/{computed}",
        "Docker-Content-Digest": str(computed),
    }
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject.digest)
    await req.respond(201, headers)


async def delete_manifest(app: App, req: Request, route: Route) -> None:
    repo, ref = _repo(route), Reference.parse(route.ref or "")
    if ref.digest is not None:
        if not await app.store.delete_manifest(repo, ref.digest):
            raise errors.ManifestUnknown(f"manifest {ref.digest} is not in {repo}")
    else:
        assert ref.tag is not None
        if not await app.store.delete_tag(repo, ref.tag):
            raise errors.ManifestUnknown(f"tag {ref.tag} is not in {repo}")
    await req.respond(202)


async def delete_blob(app: App, req: Request, route: Route) -> None:
    repo, digest = _repo(route), Digest.parse(route.ref or "")
    if not await app.store.delete_blob(repo, digest):
        raise errors.BlobUnknown(f"blob {digest} is not in {repo}")
    await req.respond(202)
