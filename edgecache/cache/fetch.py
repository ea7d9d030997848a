"""One upstream download per blob, streamed to every waiting client as it arrives.

A `BlobFetch` downloads into a temp file in the store's tmp/ and publishes it when the digest
checks out. Clients never wait for the end: each holds its own read descriptor on the growing
temp file (dup'ed from the fetch's, so the publish rename cannot pull it away) and reads what
has arrived, then waits for more. A late joiner reads the downloaded prefix at disk speed.

A dropped upstream connection resumes with `Range` from the byte where it stopped; a digest
mismatch discards the bytes and starts over once (a new `generation`: whoever streamed the old
bytes must fail, never carry on with the new ones). The fetch runs in the server's nursery, so
a client that disconnects does not cancel it: the cache still warms. Clients are not told the
bytes are good until `verified` (server/proxied.py holds back the end of their bodies).

With peers (edgecache/peers/), a download has several sources in turn: the members ranked
above this node for the digest (the owner first), then the uplink, then (the uplink failed)
the members ranked below. A source that fails, whether
before its first byte or mid-body, or sends bytes that do not verify, hands over to the next,
which resumes with `Range` at the byte reached; only the last source's failure is the
download's. A peer's request itself starts a download from the uplink only (the loop guard).

A download never grows past the size it may have: the size the manifest declared for the
digest (store.index.declared_size; an upstream stating another size is corrupt and is not
read), else the upstream's Content-Length, else the configured maximum for unsized bodies.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import trio

from ..concurrency import unwrapped_errors
from ..oci import errors
from ..oci.digest import Digest
from ..store import Store
from ..store.files import BlobWriter, DigestMismatch, publish_file
from ..upstream import Upstream, UpstreamError, UpstreamNotFound, UpstreamUnavailable, rawget
from ..upstream.client import BlobStream, RawBlob
from ..upstream.errors import UpstreamCorrupt
from .failures import not_cached
from .owner import PACE

if TYPE_CHECKING:
    from ..peers.site import Site

log = logging.getLogger("edgecache.fetch")

# Consecutive resumes that make no progress before the fetch is declared failed.
MAX_STALLED_RESUMES = 5
READ_CHUNK = 1 << 20
# Upstream bytes are written (and waiters woken) in pieces of this size: per ~64 KiB network
# read, the worker-thread hop and the wake-ups of every waiter cost more than the copy
# (py-spy on a 50-client cold pull), and a 1 MiB sendfile costs waiters no more than 256 KiB.
# A piece is written as soon as it is full or the network pauses (rawget.pump; on the httpx
# path the writer takes whatever is queued), so on a slow link a waiter is not held back by it.
WRITE_CHUNK = 1 << 20
# A capped download reads this much between waits: at the lowest cap (100 KB/s) a member's
# stream then never pauses near the 3 s a reader gives up after.
PACED_CHUNK = 64 << 10
# A member whose stream moves fewer bytes than this in a window is given up for the next
# source (a member streams what its own download receives: a slow uplink there still moves
# far more than this).
PEER_WINDOW = 10.0
PEER_MIN_BYTES = 64 << 10
# The httpx path queues at most this much ahead of the disk writer (back-pressure upstream).
QUEUE_LIMIT = 4 * WRITE_CHUNK


class Pacer:
    """A bandwidth cap (bytes a second) for downloads that must not compete with clients
    (preheat windows): a token bucket with one second of burst, safe across threads."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._allowance = float(rate)
        self._last = clock()

    def delay(self, n: int) -> float:
        """Take n bytes; the seconds to wait before using them."""
        with self._lock:
            now = self._clock()
            self._allowance = min(
                float(self.rate), self._allowance + (now - self._last) * self.rate
            )
            self._last = now
            self._allowance -= n
            return 0.0 if self._allowance >= 0 else -self._allowance / self.rate


class BlobFetch:
    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        remote_repo: str,
        store_repo: str,
        digest: Digest,
        declared: int | None = None,
        peers: Sequence[Upstream] = (),
        last_resort: Sequence[Upstream] = (),
    ) -> None:
        self.store = store
        # The sources in turn: (upstream, the repository to ask it for). Peers are asked for
        # the store's repository: every node routes it the same way.
        sources = [
            *((peer, store_repo) for peer in peers),
            (upstream, remote_repo),
            *((peer, store_repo) for peer in last_resort),
        ]
        self.upstream, self.remote_repo = sources[0]
        self._later = sources[1:]
        self._uplink = upstream
        self.store_repo = store_repo
        # Every repository the bytes are linked into when they are published: the one that
        # started the fetch, and those whose clients joined it after the upstream confirmed
        # that their repository has the blob too (see also_link).
        self.repos = {store_repo}
        self.digest = digest
        self.declared = declared  # the size a stored manifest gave this digest
        self.generation = 0  # bumped when the bytes so far are thrown away (a mismatch)
        self.writer = BlobWriter.in_tmp(store.layout)
        self._read_fd = os.open(self.writer.path, os.O_RDONLY)
        self.total: int | None = None
        self.written = 0
        self.upstream_bytes = 0  # what the upstream actually sent (resumes re-send nothing)
        self.error: Exception | None = None
        self.finished = False
        self.started = trio.Event()  # total known, or failed
        self._progress = trio.Event()
        self.on_bytes: Callable[[str, int], None] = lambda name, n: None
        self.on_disk_full: Callable[[], None] = lambda: None
        self.on_body: Callable[[str, str], None] = lambda name, reader: None
        # A cap on this download's rate (a preheat's); a client joining lifts it.
        self.pace: Pacer | None = None
        self._cancelled = False

    def _paced_sleep(self, n: int) -> None:
        """In the pump's thread: wait out the cap for n bytes, a slice at a time, so that a
        client joining (pace lifted) or a cancel is not kept waiting."""
        pace = self.pace
        wait = pace.delay(n) if pace is not None else 0.0
        while wait > 0 and self.pace is not None and not self._cancelled:
            time.sleep(min(wait, 0.1))
            wait -= 0.1

    def also_link(self, repo: str) -> None:
        """Link the blob into `repo` too when it is published (the caller checked upstream)."""
        self.repos.add(repo)

    def dup_fd(self) -> int:
        """A private read descriptor on the temp file; valid even after the publish rename."""
        return os.dup(self._read_fd)

    def _next_source(self, why: object) -> bool:
        """Hand the download over to the next source (False: this was the last)."""
        if not self._later:
            return False
        failed = self.upstream.name
        self.upstream, self.remote_repo = self._later.pop(0)
        log.info(
            "%s: %s failed at byte %d (%s); asking %s",
            self.digest, failed, self.written, why, self.upstream.name,
        )  # fmt: skip
        return True

    def _notify(self) -> None:
        event, self._progress = self._progress, trio.Event()
        event.set()

    @property
    def verified(self) -> bool:
        """The download ended, its digest checked out and it is published."""
        return self.finished and self.error is None

    async def changed(self) -> None:
        """Return at the next change: bytes written, a restart, the end (good or bad)."""
        await self._progress.wait()

    @property
    def cap(self) -> int:
        """The most bytes this download may hold."""
        if self.declared is not None:
            return self.declared
        if self.total is not None:
            return self.total
        return self.upstream.max_unsized_blob

    def _check_size(self, what: str, total: int | None, offset: int, length: int | None) -> None:
        """Refuse, before reading it, a body that cannot be the blob."""
        if self.declared is not None and total is not None and total != self.declared:
            raise UpstreamCorrupt(
                self.upstream.name,
                f"{what}: the upstream says {total} bytes, the manifest declared "
                f"{self.declared}; nothing was downloaded",
            )
        if self.total is not None and total is not None and total != self.total:
            # A source resumed after another must be giving the same blob: clients were
            # told the first one's size.
            raise UpstreamCorrupt(
                self.upstream.name,
                f"{what}: {total} bytes, where the download under way has {self.total}",
            )
        limit = self.declared if self.declared is not None else total
        if length is not None and limit is not None and offset + length > limit:
            raise UpstreamCorrupt(
                self.upstream.name,
                f"{what}: a {length}-byte body from byte {offset} exceeds the blob's {limit}",
            )

    # ---- the download --------------------------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                await self._download()
                await self._publish()
            except DigestMismatch:
                log.warning(
                    "%s from %s: digest mismatch, fetching again", self.digest, self.upstream.name
                )
                self._next_source("its bytes did not verify")  # a peer's: the next source
                await self._restart()
                await self._download()
                await self._publish()
        except DigestMismatch as exc:
            self.error = errors.Unavailable(
                f"upstream {self.upstream.name} sent bytes with digest {exc.actual} for "
                f"{self.digest} twice; nothing was stored"
            )
        except UpstreamNotFound:
            self.error = errors.BlobUnknown(
                f"blob {self.digest} is not in {self.remote_repo} at {self.upstream.name}"
            )
        except UpstreamError as exc:
            self.error = not_cached(self.upstream.name, f"blob {self.digest}", exc)
        except OSError as exc:  # a disk error: the waiters still need an answer
            if exc.errno == errno.ENOSPC:
                self.error = errors.InsufficientStorage(
                    f"the cache's disk is full while fetching {self.digest}; eviction has "
                    "been started, retry later"
                )
                self.on_disk_full()
            else:
                log.exception("fetch of %s failed", self.digest)
                self.error = errors.InternalError(f"fetching {self.digest} failed: {exc}")
        except Exception as exc:  # whatever a source sent: the waiters, and the server, go on
            log.warning("fetch of %s failed: %s: %s", self.digest, type(exc).__name__, exc)
            self.error = errors.Unavailable(
                f"fetching {self.digest} from {self.upstream.name} failed ({type(exc).__name__})"
            )
        finally:
            self.finished = True
            self.started.set()
            self._notify()
            if self.error is not None:
                await trio.to_thread.run_sync(self.writer.discard)

    def close(self) -> None:
        os.close(self._read_fd)

    async def _restart(self) -> None:
        def reset() -> None:
            self.writer.discard()
            self.writer = BlobWriter.in_tmp(self.store.layout)
            os.close(self._read_fd)
            self._read_fd = os.open(self.writer.path, os.O_RDONLY)

        # Waiters streaming the bad bytes are failed rather than fed a different stream.
        self.generation += 1
        self.error = errors.Unavailable(f"upstream sent corrupt bytes for {self.digest}")
        self._notify()
        await trio.to_thread.run_sync(reset)
        self.error = None
        self.written = 0
        # The size came with the bad bytes (a member may state any): the next source says
        # it again, and clients joining meanwhile wait for it, never given the old one.
        self.total = None
        self.started = trio.Event()

    async def _download(self) -> None:
        stalled = 0
        while True:
            before = self.written
            try:
                if self.upstream is self._uplink:
                    await self._stream_from(self.written)
                else:
                    await self._stream_watched(self.written)
                if self.total is None or self.written >= self.total:
                    return
                raise UpstreamUnavailable(self.upstream.name, "response ended early")
            except Exception as exc:
                if not isinstance(exc, UpstreamError):
                    if self.upstream is self._uplink:
                        raise  # run() reports it
                    # A member's answer no client library expected (a body it cannot
                    # decode, a client closed as the member left): the next source.
                    exc = UpstreamUnavailable(self.upstream.name, f"{type(exc).__name__}: {exc}")
                if self.upstream is self._uplink and isinstance(exc, UpstreamUnavailable):
                    # The uplink is resumed as long as it makes progress: a member asked
                    # instead would fetch the blob over the uplink a second time.
                    stalled = 0 if self.written > before else stalled + 1
                    if stalled < MAX_STALLED_RESUMES and self.upstream.available:
                        log.info(
                            "%s: upstream dropped at byte %d (%s); resuming",
                            self.digest, self.written, exc,
                        )  # fmt: skip
                        await trio.sleep(min(2.0, 0.1 * 2**stalled) * random.random())
                        continue
                if not self._next_source(exc):  # a member: the next one at once
                    raise
                stalled = 0

    async def _stream_watched(self, offset: int) -> None:
        """A member's stream, given up when it moves fewer than PEER_MIN_BYTES in any
        PEER_WINDOW seconds: a member that trickles a byte now and then stays within every
        read timeout, and would hold the download (and its clients) for ever."""
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    while True:
                        mark = self.written
                        await trio.sleep(PEER_WINDOW)
                        if self.written - mark < PEER_MIN_BYTES:
                            scope.cancel()
                            return

                nursery.start_soon(watch)
                await self._stream_from(offset)
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught:
            raise UpstreamUnavailable(
                self.upstream.name,
                f"fewer than {PEER_MIN_BYTES} bytes in {PEER_WINDOW:g} s at byte {self.written}",
            )

    def _extra(self) -> dict[str, str]:
        """A member asked for a capped download caps its own uplink fetch too (PACE)."""
        pace = self.pace
        if pace is None or self.upstream is self._uplink:
            return {}
        return {PACE: str(pace.rate)}

    async def _stream_from(self, offset: int) -> None:
        raw = await self.upstream.raw_blob(self.remote_repo, self.digest, offset, self._extra())
        if raw is not None and raw.offset == offset:
            try:
                await self._pump(raw)
            finally:
                raw.close()
            return
        if raw is not None:
            raw.close()  # the upstream ignored Range: httpx's path skips what we have
        await self._stream_httpx(offset)

    async def _pump(self, raw: RawBlob) -> None:
        """The body read, written and hashed by a worker thread (upstream/rawget.py); the
        event loop only counts what reached the disk and wakes the waiters."""
        self._check_size(raw.what, raw.total, raw.offset, raw.response.length)
        if self.total is None:
            self.total = raw.total
        self.started.set()
        self.on_body(self.upstream.name, "thread")
        token = trio.lowlevel.current_trio_token()

        def advance(n: int) -> None:  # in the event loop, in order
            self.written += n
            self.upstream_bytes += n
            self.on_bytes(self.upstream.name, n)
            self._notify()

        def progress(n: int) -> None:  # in the worker thread, after each write
            token.run_sync_soon(advance, n)
            if self.pace is not None:
                self._paced_sleep(n)

        def work() -> rawget.BodyBroken | None:
            try:
                rawget.pump(raw.response, raw.response.length, self.writer.write, progress,
                            chunk=WRITE_CHUNK if self.pace is None else PACED_CHUNK)  # fmt: skip
            except rawget.BodyBroken as exc:
                return exc
            return None

        async def wake_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                self._cancelled = True  # a paced thread stops waiting
                raw.response.shutdown()  # the thread's recv returns at once

        with unwrapped_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wake_when_cancelled)
                # Not abandoned on cancel: the thread writes into our file, so it must be over
                # before anyone discards it.
                broken = await trio.to_thread.run_sync(work, limiter=_PUMP_LIMITER)
                nursery.cancel_scope.cancel()
        if broken is not None:
            raise UpstreamUnavailable(
                self.upstream.name, f"{raw.what}: {broken} at byte {self.written}"
            )

    async def _stream_httpx(self, offset: int) -> None:
        async with self.upstream.open_blob(
            self.remote_repo, self.digest, offset, self._extra()
        ) as stream:
            self._check_size(stream.what, stream.total, stream.offset, stream.length)
            if self.total is None:
                # A chunked body of a declared blob still gets its clients a Content-Length.
                self.total = stream.total if stream.total is not None else self.declared
            self.started.set()
            self.on_body(self.upstream.name, "httpx")
            # The next bytes are read from the network while the last ones are written and
            # hashed in a worker thread (one after the other, a 1-client cold pull ran ~1.2x
            # slower than the upstream alone).
            queue = _Queue(QUEUE_LIMIT)
            dropped_at: UpstreamUnavailable | None = None
            with unwrapped_errors():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_queued, queue)
                    try:
                        await self._read_httpx(stream, offset, queue)
                    except UpstreamUnavailable as exc:
                        # Write what already arrived before resuming after it.
                        dropped_at = exc
                    finally:
                        queue.close()
            if dropped_at is not None:
                raise dropped_at

    async def _read_httpx(self, stream: BlobStream, offset: int, queue: _Queue) -> None:
        skip = offset - stream.offset  # the upstream ignored Range: drop what we have
        cap = self.cap
        async for chunk in stream.chunks():
            if self.pace is not None:
                await trio.sleep(self.pace.delay(len(chunk)))
            self.upstream_bytes += len(chunk)
            self.on_bytes(self.upstream.name, len(chunk))
            if stream.offset + stream.received > cap:
                # Endless or oversized: stop here rather than fill the disk.
                raise UpstreamCorrupt(
                    self.upstream.name, f"{stream.what}: the body runs past the blob's {cap} "
                    "bytes; nothing was stored",
                )  # fmt: skip
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
                if not chunk:
                    continue
            await queue.put(chunk)

    async def _write_queued(self, queue: _Queue) -> None:
        while (data := await queue.take()) is not None:
            # Shielded: a write that happened must be counted, or a resume would append
            # after bytes `written` does not know about.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.writer.write, memoryview(data))
                self.written += len(data)
            self._notify()

    async def _publish(self) -> None:
        linked = set(self.repos)

        def work() -> None:
            self.writer.seal(self.digest)
            self.store.index.commit_blob(
                self.store_repo,
                str(self.digest),
                self.written,
                partial(publish_file, self.store.layout, self.writer.path, self.digest),
            )
            for repo in linked - {self.store_repo}:
                self.store.index.link_blob(repo, str(self.digest))

        await trio.to_thread.run_sync(work)
        # Joiners that arrived while the thread ran. No checkpoint between the last check
        # and the fetch leaving `inflight`: a later client finds the blob in the store.
        while extra := self.repos - linked:
            linked |= extra
            for repo in extra:
                await self.store.link_blob(repo, self.digest)


# The download threads' own limiter: one thread per download in flight, and a long download
# must not hold one of the default limiter's tokens that the store's short thread calls need.
_PUMP_LIMITER = trio.CapacityLimiter(10_000)


class _Queue:
    """Network reads queue here; the disk writer takes everything queued at once.

    On a fast link the writer finds a large batch (its last write took a while), so each
    worker-thread hop moves much; on a slow link it writes each read as it arrives, and the
    waiting clients see those bytes at once instead of after a batch has filled.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.closed = False
        self._changed = trio.Event()

    def _wake(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    async def put(self, data: bytes) -> None:
        while len(self.buffer) >= self.limit:
            await self._changed.wait()
        self.buffer += data
        self._wake()

    async def take(self) -> bytearray | None:
        """Everything queued (None once closed and empty)."""
        while not self.buffer:
            if self.closed:
                return None
            await self._changed.wait()
        data, self.buffer = self.buffer, bytearray()
        self._wake()
        return data

    def close(self) -> None:
        self.closed = True
        self._wake()


class Fetcher:
    """The in-flight blob downloads of this node, one per digest."""

    def __init__(self, store: Store, nursery: trio.Nursery) -> None:
        self.store = store
        self.nursery = nursery
        self.inflight: dict[Digest, BlobFetch] = {}
        self.started_fetches = 0
        self.site: Site | None = None  # the peers asked before the uplink (peers/site.py)
        # Metrics hooks: a fetch started, bytes received (as they arrive, not at the end, so
        # that they are counted before any waiting client has seen the last byte).
        self.on_fetch: Callable[[str], None] = lambda name: None
        self.on_upstream_bytes: Callable[[str, int], None] = lambda name, n: None
        self.on_disk_full: Callable[[], None] = lambda: None
        self.on_body: Callable[[str, str], None] = lambda name, reader: None

    def join(
        self,
        upstream: Upstream,
        remote_repo: str,
        store_repo: str,
        digest: Digest,
        *,
        via_peers: bool = True,
        pace: Pacer | None = None,
    ) -> tuple[BlobFetch, int]:
        """The fetch for `digest` (started if needed) and a read descriptor of its temp file.
        `via_peers` False (a peer's request): a new fetch asks the uplink only. A peer's
        request that finds a fetch in flight joins it, whatever its source: sources are only
        ever members ranked above this node (peers/ring.py), so that cannot loop.

        Synchronous on purpose: no checkpoint between finding the fetch and dup'ing its
        descriptor, so the fetch cannot finish and close it in between.

        `pace` caps a new download's rate (a preheat's); anyone joining without one lifts it.
        """
        fetch = self.inflight.get(digest)
        if fetch is not None and pace is None:
            fetch.pace = None
        if fetch is None:
            declared = self.store.index.declared_size(str(digest))
            above, below = self.site.sources(str(digest)) if self.site and via_peers else ([], [])
            fetch = BlobFetch(
                self.store, upstream, remote_repo, store_repo, digest, declared, above, below
            )
            fetch.on_bytes = self.on_upstream_bytes
            fetch.on_disk_full = self.on_disk_full
            fetch.on_body = self.on_body
            fetch.pace = pace
            self.inflight[digest] = fetch
            self.started_fetches += 1
            self.on_fetch(fetch.upstream.name)
            self.nursery.start_soon(self._run, fetch)
        return fetch, fetch.dup_fd()

    async def _run(self, fetch: BlobFetch) -> None:
        try:
            await fetch.run()
        finally:
            del self.inflight[fetch.digest]
            fetch.close()


@asynccontextmanager
async def reading(fd: int) -> AsyncIterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
