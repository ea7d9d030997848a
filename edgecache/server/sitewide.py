"""Pushed and preloaded content of another member, relayed (edgecache/peers/).

A local (pushed) repository's manifest or blob that is not on this node is asked of the
other members in turn (rendezvous order of the content: the load spreads), each within
ANSWER_BUDGET (peers/site.py) to answer, and the first that has it is relayed to the
client: content pushed or preloaded on one node pulls from every node. Nothing is stored
here: the copy stays where it was pushed (the origin's GC governs it), so no node holds
pinned content it did not receive.
A blob's body is hashed as it is relayed and its last bytes go only once the digest checks:
a client never holds a complete 200 of bytes that did not verify. A peer's own request is
never relayed on (it is answered from this node's store alone).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from ..oci import errors
from ..oci.digest import Digest
from ..peers.site import ANSWER_BUDGET
from ..upstream import UpstreamError
from .http import Request

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("edgecache.peers")


async def manifest(app: App, req: Request, repo: str, reference: str) -> bool:
    """Relay a member's copy of a manifest (False: no member has it)."""
    site = app.fetcher.site
    if site is None or req.peer is not None:
        return False
    async for _, remote in site.manifests(repo, reference):
        # The pull policy of this node applies as to anything it serves (scan/gate.py).
        await app.gate.check_relayed(req, repo, remote)
        req.extra["cache"] = "peer"
        headers = {
            "Content-Type": remote.media_type,
            "Docker-Content-Digest": str(remote.digest),
            "ETag": f'"{remote.digest}"',
        }
        await req.respond(200, headers, remote.data)
        return True
    return False


async def blob(app: App, req: Request, repo: str, digest: Digest, headers: dict[str, str]) -> bool:
    """Relay a member's copy of a blob, whole (False: no member has it). A Range is not
    relayed: the whole blob is a valid answer to it."""
    site = app.fetcher.site
    if site is None or req.peer is not None:
        return False
    for peer in site.all(str(digest)):
        try:
            if req.method == "HEAD":
                info = await peer.head_blob(repo, digest, deadline=ANSWER_BUDGET)
                if info.size is None:
                    continue
                await req.start(200, {**headers, "Content-Length": str(info.size)})
                await req.finish()
                return True
            async with peer.open_blob(repo, digest) as stream:
                if stream.total is None:
                    continue  # a length is needed to hold the last bytes back
                req.extra["cache"] = "peer"
                unverified = {k: v for k, v in headers.items() if k.lower() != "cache-control"}
                await req.start(200, {**unverified, "Content-Length": str(stream.total)})
                await _relay(req, stream.chunks(1 << 20), digest)
                return True
        except UpstreamError as exc:
            if req.started:  # mid-body: the connection is broken off, never finished
                raise errors.Unavailable(f"{peer.name} broke off {digest}: {exc}") from None
            log.debug("blob %s of %s: %s: %s", digest, repo, peer.name, exc)
    return False


async def _relay(req: Request, chunks: object, digest: Digest) -> None:
    """Send the body, holding each chunk until the next arrives; the last goes only once
    the whole verified. A mismatch raises (the server breaks the connection off)."""
    hasher = hashlib.new(digest.algorithm)
    held = b""
    async for chunk in chunks:  # type: ignore[attr-defined]
        hasher.update(chunk)
        if held:
            await req.send({"type": "http.response.body", "body": held, "more_body": True})
            req.sent_bytes += len(held)
        held = chunk
    if hasher.hexdigest() != digest.hex:
        log.warning("a member sent bytes that are not %s; broken off", digest)
        raise errors.Unavailable(f"a member sent bytes that are not {digest}")
    await req.send({"type": "http.response.body", "body": held, "more_body": False})
    req.sent_bytes += len(held)
