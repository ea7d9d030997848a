"""Read side of the distribution API: base, manifests, blobs, tags, referrers, catalog."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

import trio

from ..cache.owner import NeedOwner
from ..oci import errors, mediatypes
from ..oci.digest import Digest
from ..oci.manifest import referrers_index
from ..oci.names import lookup_reference
from ..oci.pagination import link_header, paginate, parse_n
from ..oci.ranges import if_range_allows, parse_range
from ..oci.routes import Route
from ..store import ManifestInfo
from ..store.scrub import FileId, Verdict
from . import sitewide
from .http import Request

if TYPE_CHECKING:
    from .app import App

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


async def base(app: App, req: Request, route: Route) -> None:
    await req.respond_json(200, {}, API_VERSION)


async def get_manifest(app: App, req: Request, route: Route) -> None:
    repo, ref = _repo(route), lookup_reference(route.ref or "")
    info = app.store.manifest(repo, str(ref))
    if info is None:
        if _ask_site(app, req) and await sitewide.manifest(app, req, repo, str(ref)):
            return
        raise errors.ManifestUnknown(_missing(app, "manifest", repo, str(ref)))
    await send_manifest(app, req, info, repo)


def _ask_site(app: App, req: Request) -> bool:
    """Whether a local miss is asked of the other members (server/sitewide.py): with peers,
    for a client (never for a peer), by the process that has the site (a worker hands the
    request to it)."""
    if not app.config.peers.enabled or req.peer is not None:
        return False
    if app.owner is not None:
        raise NeedOwner("local content another member may have")
    return True


def _missing(app: App, kind: str, repo: str, reference: str) -> str:
    bad = app.store.quarantined_in(repo, reference)
    if bad is None:
        return f"{kind} {reference} is not in {repo}"
    return f"{kind} {bad} was found corrupt on disk and is quarantined; push it to {repo} again"


async def send_manifest(app: App, req: Request, info: ManifestInfo, repo: str) -> None:
    await app.gate.check(req, repo, info)  # [[pull_policies]]: 412 if refused (scan/gate.py)
    headers = {
        "Content-Type": info.media_type,
        "Docker-Content-Digest": str(info.digest),
        "ETag": f'"{info.digest}"',
    }
    body = await app.manifest_cache.read(info.digest, info.path)
    await req.respond(200, headers, body)
    app.metrics.served("memory", len(body) if req.method != "HEAD" else 0)


async def get_blob(app: App, req: Request, route: Route) -> None:
    repo, digest = _repo(route), Digest.parse(route.ref or "")
    info = app.store.blob(repo, digest)
    if info is None:
        if _ask_site(app, req) and await sitewide.blob(
            app, req, repo, digest, blob_headers(digest)
        ):
            return
        raise errors.BlobUnknown(
            _missing(app, "blob", repo, str(digest)), detail={"digest": str(digest)}
        )
    await send_stored(
        app, req, info.path, info.size, blob_headers(digest), req.headers.get("range")
    )


def requested_range(req: Request, headers: Mapping[str, str]) -> str | None:
    """The request's Range, unless its If-Range names another version than the ETag in
    ``headers`` (the response's): then the whole blob is the answer (RFC 9110 §13.1.5)."""
    range_header = req.headers.get("range")
    if range_header is None or if_range_allows(
        req.headers.get("if-range"), headers.get("ETag", "")
    ):
        return range_header
    return None


def blob_headers(digest: Digest) -> dict[str, str]:
    return {
        "Content-Type": mediatypes.OCTET_STREAM,
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        # Content-addressed: the bytes behind this URL can never change.
        "Cache-Control": "max-age=31536000, immutable",
    }


async def send_stored(
    app: App,
    req: Request,
    path: os.PathLike[str],
    size: int,
    headers: dict[str, str],
    range_header: str | None,
) -> None:
    if not if_range_allows(req.headers.get("if-range"), headers.get("ETag", "")):
        range_header = None  # here, so that every caller honours If-Range
    byte_range = parse_range(range_header, size) if range_header else None
    try:
        fd, file_id = await trio.to_thread.run_sync(_open, path)
    except FileNotFoundError:
        # The index says it is here, the disk disagrees: fsck territory, not the client's fault.
        raise errors.BlobUnknown("content is indexed but its file is missing; run fsck") from None
    if file_id[2] != size:
        # Cut short or grown on disk: served as is, a client would wait for bytes that never
        # come (or get others). Checked on every open, since fstat is free; what the size
        # cannot show is left to the scrub.
        os.close(fd)
        await _quarantine(app, headers["Docker-Content-Digest"], size, file_id)
    try:
        if byte_range is None:
            status, offset, count = 200, 0, size
        else:
            status, offset, count = 206, byte_range.start, byte_range.length
            headers["Content-Range"] = byte_range.content_range(size)
        headers["Content-Length"] = str(count)
        await req.start(status, headers)
        used = await req.send_file(fd, offset, count, app.config.server.sendfile)
        app.metrics.served(used, count if req.method != "HEAD" else 0)
    finally:
        os.close(fd)


class StoredFileBad(errors.BlobUnknown):
    """A stored file failed its check as it was opened; it is quarantined now (a proxied
    caller fetches it again)."""


def _open(path: os.PathLike[str]) -> tuple[int, FileId]:
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    return fd, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


async def _quarantine(app: App, digest: str, size: int, file_id: FileId) -> NoReturn:
    problem = f"its file has {file_id[2]} bytes, the index says {size}"
    await app.heal(Verdict(digest, 0, problem, file_id), kind="blob")
    raise StoredFileBad(
        f"blob {digest} was corrupt on disk and has been quarantined; push it again "
        "(a proxied one is fetched again from its upstream)",
        detail={"digest": digest},
    )


async def tags_list(app: App, req: Request, route: Route) -> None:
    repo = _repo(route)
    if not app.store.repo_exists(repo):
        raise errors.NameUnknown(f"repository {repo} is not known")
    n = parse_n(req.query.get("n"))
    last = req.query.get("last")
    tags, more = paginate(app.store.tags(repo), n, last)
    headers = {}
    if more and n and tags:
        headers["Link"] = link_header(f"/v2/{repo}/tags/list", n, tags[-1])
    await req.respond_json(200, {"name": repo, "tags": tags}, headers)


async def catalog(app: App, req: Request, route: Route) -> None:
    n = parse_n(req.query.get("n"))
    repos, more = paginate(app.store.repositories(), n, req.query.get("last"))
    headers = {}
    if more and n and repos:
        headers["Link"] = link_header("/v2/_catalog", n, repos[-1])
    await req.respond_json(200, {"repositories": repos}, headers)


async def referrers(app: App, req: Request, route: Route) -> None:
    repo, subject = _repo(route), Digest.parse(route.ref or "")
    descriptors = app.store.referrers(repo, subject)
    headers = {"Content-Type": mediatypes.OCI_INDEX}
    wanted = req.query.get("artifactType")
    if wanted is not None:
        descriptors = [d for d in descriptors if d.get("artifactType") == wanted]
        headers["OCI-Filters-Applied"] = "artifactType"
    await req.respond(200, headers, referrers_index(descriptors))


def _repo(route: Route) -> str:
    # The app validated the name before dispatch; this only narrows the type.
    assert route.name is not None
    return route.name
