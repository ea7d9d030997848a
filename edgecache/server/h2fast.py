"""Coalesced DATA frames for hypercorn's HTTP/2 (h2 over TLS and h2c).

Why: hypercorn 0.18's H2Protocol sends a response body one DATA frame per socket write. Its
send task pops at most one frame's worth (max_outbound_frame_size, 16 KiB with every common
client) from the stream's buffer, frames it and flushes it through the TCP server's send lock;
over TLS each such write is its own SSL write (two TLS records: 16 KiB and the 9-byte frame
header's spill-over) and socket send. A 1 MiB body chunk thus costs 64 trips through the
event loop, and large blobs went at 0.14-0.22x of HTTP/1.1 over TLS (RESULTS.md, issue 9).

How: `FastH2Protocol._send_data` takes everything the stream's flow-control window (stream and
connection, as h2 accounts them) allows, up to WRITE_MAX, cuts it into DATA frames of the
peer's SETTINGS_MAX_FRAME_SIZE, puts END_STREAM on the last frame when the body is complete,
and writes once: one socket (or SSL) write per visit instead of one per frame. The last frame
of a write is made by h2's send_data (state and window checks, END_STREAM); the ones before it
are packed here and counted against h2's windows, because h2 spends ~25 us per frame.
`FastStreamBuffer` queues the app's chunks without copying them into one bytearray, and lets
the app produce its next chunk as soon as the buffer runs low, so reading the next chunk
overlaps the write of this one; it never holds more than about one app chunk, even with a
client that opens its window byte by byte.

Nothing else changes: a client that opens no window still stalls the stream (connguard's send
deadline then resets it), priorities still pick the stream. hypercorn is pinned in
pyproject.toml and install() refuses another hypercorn, or an h2 other than 4.x (whose
outbound_flow_control_window attributes this counts against); server/connguard.py extends
FastH2Protocol and calls install(); tests/integration/test_h2fast.py proves the path is taken
(TLS records on the wire) and that frame size and windows are respected.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections import deque
from importlib.metadata import version
from typing import Any, cast

import h2.errors
import h2.exceptions
import hypercorn.protocol as hc_protocol
import hypercorn.protocol.h2 as hc_h2
import priority
import trio
from hypercorn.events import RawData
from hypercorn.protocol.events import Body
from hypercorn.protocol.events import Event as StreamEvent

from . import zerocopy

PINNED = "0.18.0"  # the hypercorn whose h2.py (StreamBuffer, H2Protocol._send_data) was read
# Bytes one visit of the send task may write for one stream: large enough that the per-write
# cost (a trip through the event loop, an SSL write, a send call) is spread over 64 frames,
# small enough that other streams of the connection get their turn every ~1 MiB.
WRITE_MAX = 1 << 20
# The same for h2c, whose write is one sendmsg of the pieces (no join, no TLS records to cut):
# the cost of a visit is spread over 256 frames.
SENDMSG_MAX = 4 << 20
_HEAD = struct.Struct(">IBI")  # a frame header: length (24 bits) and type, flags, stream id
_DATA = 0x0
_END_STREAM = 0x1
# A mapped file is mapped this much at a time, and the pages a write has sent are dropped from
# the mapping (not from the page cache) before the next: RSS stays flat in the blob's size.
MAP_WINDOW = 4 << 20


class _Mapped:
    """Body bytes that are pages of a mapped file: only the kernel may read them."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)


class _FileRegion:
    """Part of a stored file queued as a stream's body, mapped MAP_WINDOW at a time.

    This process never reads the mapped bytes: they go to sendmsg, which copies them into the
    socket in the kernel. A file cut short or a disk error then fails that call (EFAULT), and
    the connection is reset; read here, they would be a SIGBUS that ends the whole process.
    The mapping needs no descriptor: the app may close its file once the body is queued.
    """

    __slots__ = ("_base", "_dropped", "count", "map", "offset", "view")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.offset, self.count = offset, count
        # One mapping of the whole region (address space only); the pages the send has
        # passed are dropped from it as it moves on (drop_sent), so the resident set stays
        # within about MAP_WINDOW per stream whatever the blob's size.
        self._base = offset - offset % mmap.ALLOCATIONGRANULARITY
        self._dropped = self._base  # the file offset up to which pages were dropped
        self.map: mmap.mmap | None = mmap.mmap(
            fd, offset + count - self._base, prot=mmap.PROT_READ, offset=self._base
        )
        self.view = memoryview(self.map)[offset - self._base :]

    def __len__(self) -> int:
        return self.count

    def take(self, limit: int) -> _Mapped:
        self.drop_sent()
        n = min(limit, self.count)
        out = _Mapped(self.view[:n])
        self.view = self.view[n:]
        self.offset += n
        self.count -= n
        return out

    def drop_sent(self) -> None:
        """Unmap (MADV_DONTNEED: the page cache keeps them) the pages before the offset,
        once a window's worth have been sent (each take's bytes are sent before the next)."""
        page = mmap.PAGESIZE
        upto = self.offset - self.offset % page
        if self.map is not None and upto - self._dropped >= MAP_WINDOW:
            self.map.madvise(mmap.MADV_DONTNEED, self._dropped - self._base, upto - self._dropped)
            self._dropped = upto

    def release(self) -> None:
        """Forget the mapping; it is unmapped when the last piece taken from it is sent."""
        self.view.release()
        self.map = None
        self.count = 0


class _OpenFile:
    """A descriptor of its own for a queued file body (the app closes its own once the body
    is queued), closed when the last holder lets go: the queued region and each piece being
    read. Never closed under a read in flight on a thread, so never reused under one."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)
        self.refs = 1

    def retain(self) -> _OpenFile:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            os.close(self.fd)

    def __del__(self) -> None:  # a buffer dropped with its connection, unreleased
        if self.refs > 0:
            self.refs = 0
            os.close(self.fd)


class _Unread:
    """A piece of a queued file not read yet: the send task reads it straight into the
    write's buffer, between the frame headers (one copy of the bytes in this process)."""

    __slots__ = ("count", "file", "offset")

    def __init__(self, file: _OpenFile, offset: int, count: int) -> None:
        self.file, self.offset, self.count = file, offset, count

    def __len__(self) -> int:
        return self.count


class _FileRead:
    """Part of a stored file queued as a stream's body over TLS, where the bytes must pass
    through this process to be encrypted: read when the send task frames them (_Unread)."""

    __slots__ = ("count", "file", "offset")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.file = _OpenFile(fd)
        self.offset, self.count = offset, count

    def __len__(self) -> int:
        return self.count

    def take(self, limit: int) -> _Unread:
        n = min(limit, self.count)
        out = _Unread(self.file.retain(), self.offset, n)
        self.offset += n
        self.count -= n
        return out

    def release(self) -> None:
        self.count = 0
        self.file.release()


_REGIONS = (_FileRegion, _FileRead)  # queued file parts: never joined, taken piece by piece


class _Chunks:
    """A stream's queued body: the app's chunks as they came (hypercorn copies each into one
    bytearray) and mapped file regions, and their total length, which is what everyone else
    reads (len())."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview | _FileRegion | _FileRead] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes | _FileRegion | _FileRead) -> None:
        if len(data):
            self.chunks.append(data)
            self.size += len(data)

    def take(self, limit: int) -> bytes | memoryview | _Mapped | _Unread:
        """Up to `limit` bytes from the front: a whole chunk or a slice of one uncopied, a
        piece of a file region (mapped, or to read), or several small chunks joined."""
        first = self.chunks[0]
        out: bytes | memoryview | _Mapped | _Unread
        if isinstance(first, _REGIONS):
            out = first.take(limit)
            if not first:
                self.chunks.popleft()
                first.release()
        elif len(first) > limit:
            with memoryview(first) as view:
                self.chunks[0] = view[limit:]
                out = view[:limit]
        elif (
            len(self.chunks) == 1
            or isinstance(self.chunks[1], _REGIONS)
            or len(first) + len(self.chunks[1]) > limit
        ):
            out = self.chunks.popleft()  # type: ignore[assignment]  # not a region (above)
        else:
            parts = []
            left = limit
            while (
                self.chunks
                and not isinstance(self.chunks[0], _REGIONS)
                and len(self.chunks[0]) <= left
            ):
                left -= len(self.chunks[0])
                parts.append(self.chunks.popleft())
            out = b"".join(parts)  # type: ignore[arg-type]  # bytes and memoryviews only
        self.size -= len(out)
        return out

    def discard(self) -> None:
        for chunk in self.chunks:
            if isinstance(chunk, _REGIONS):
                chunk.release()
        self.chunks.clear()
        self.size = 0


class FastStreamBuffer(hc_h2.StreamBuffer):
    def __init__(self, event_class: Any) -> None:
        super().__init__(event_class)
        self.buffer = _Chunks()  # type: ignore[assignment]

    async def close(self) -> None:
        self._complete = True
        cast(_Chunks, self.buffer).discard()
        await self._is_empty.set()
        await self._paused.set()

    async def push(  # type: ignore[override]
        self, data: bytes | _FileRegion | _FileRead, last: bool = False
    ) -> None:
        """Queue `data`; `last`: nothing follows, so that the send task that takes the last
        of it knows to end the stream on that frame (the app's EndBody would come only once
        this push returns, after the buffer ran low: too late for the last write)."""
        if self._complete:
            raise hc_h2.BufferCompleteError()
        cast(_Chunks, self.buffer).append(data)
        self._complete = last
        await self._is_empty.clear()
        if len(self.buffer) >= hc_h2.BUFFER_HIGH_WATER:
            await self._paused.wait()
            await self._paused.clear()

    async def pop(self, max_length: int) -> bytes:
        queued = cast(_Chunks, self.buffer)
        data = queued.take(max_length) if max_length > 0 and queued else b""
        # hypercorn releases the producer only when a pop came out short (len(data) < low
        # water): with large pops it then waits for an extra empty visit, and with a window
        # opened a few bytes at a time it lets the producer add a chunk per visit. Here it is
        # released once what is left falls under the low water mark, and only then.
        if len(self.buffer) < hc_h2.BUFFER_LOW_WATER:
            await self._paused.set()
        if not self.buffer:
            await self._is_empty.set()
        return data  # type: ignore[return-value]  # bytes or an uncopied memoryview


class _Layout:
    """A connection's write buffer for file pieces over TLS, laid out as DATA frames of one
    shape (stream, length, frame size): a frame header, then the payload's slot, frame after
    frame. A stream sends piece after piece of the same shape (1 MiB with a wide window), so
    the headers and the slots are made once, and each write only reads the file into the
    slots: the layout cost ~5% of an h2 download over TLS (py-spy) when it was made per write.
    """

    __slots__ = ("buffer", "last_head", "shape", "slots", "view")
    buffer: bytearray

    def __init__(self, old: _Layout | None, shape: tuple[int, int, int]) -> None:
        stream_id, length, size = self.shape = shape
        total = length + (length + size - 1) // size * _HEAD.size
        if old is not None and len(old.buffer) >= total:
            # One buffer per connection, reused write after write (each is sent before the
            # next is laid out, and every byte of it is overwritten): a fresh 1 MiB buffer per
            # write costs the kernel's page faults and zeroing, every time.
            self.buffer = old.buffer
        else:
            self.buffer = bytearray(total)
        self.view = memoryview(self.buffer)[:total]
        self.slots = []
        at = self.last_head = 0
        for start in range(0, length, size):
            n = min(size, length - start)
            _HEAD.pack_into(self.buffer, at, n << 8 | _DATA, 0, stream_id)
            self.slots.append(self.view[at + _HEAD.size : at + _HEAD.size + n])
            self.last_head = at
            at += _HEAD.size + n

    def laid_out(self) -> tuple[bytearray, memoryview, list[memoryview], int]:
        self.buffer[self.last_head + 4] = 0  # the flags of the last frame (END_STREAM)
        return self.buffer, self.view, self.slots, self.last_head


class FastH2Protocol(hc_h2.H2Protocol):
    # Process-wide counts (frames per write is the point), ready for /metrics to export.
    data_writes = 0
    data_frames = 0
    _layout: _Layout | None = None  # the write buffer of _send_unread, laid out as last used

    async def stream_send(self, event: StreamEvent) -> None:
        if isinstance(event, zerocopy.FileBody):
            await self._push_file(event)
            return
        await super().stream_send(event)

    async def _push_file(self, event: zerocopy.FileBody) -> None:
        """Queue part of a file as body (the app's zerocopysend). h2c: mapped, so that the
        send task hands its pages to sendmsg without reading them itself. TLS: the send task
        reads the file straight into its write buffer between the frame headers."""
        buffer = self.stream_buffers.get(event.stream_id)
        if buffer is None:
            return  # the stream is gone (reset, or the connection closed)
        region: _FileRegion | _FileRead | None
        try:
            if self.ssl:
                region = _FileRead(event.fd, event.offset, event.count)
            else:
                region = _FileRegion(event.fd, event.offset, event.count)
        except (OSError, ValueError):
            region = None  # not mappable: sent as read chunks below
        if region is not None:
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await cast(FastStreamBuffer, buffer).push(region, last=event.last)
            return
        end = event.offset + event.count
        for start in range(event.offset, end, zerocopy.MAX_CALL):
            data = os.pread(event.fd, min(zerocopy.MAX_CALL, end - start), start)
            if not data:
                raise OSError("file shorter than the announced Content-Length")
            await self.stream_send(Body(stream_id=event.stream_id, data=data))

    async def _send_data(self, stream_id: int) -> None:
        try:
            buffer = self.stream_buffers[stream_id]
            window = self.connection.local_flow_control_window(stream_id)
            data = await buffer.pop(max(0, min(window, WRITE_MAX if self.ssl else SENDMSG_MAX)))
            if not data:
                self.priority.block(stream_id)
            ended = buffer.complete
            if isinstance(data, _Unread):
                await self._send_unread(stream_id, data, ended)
            elif data or ended:
                parts = self._frame(stream_id, data, ended)
                if ended:
                    del self.stream_buffers[stream_id]
                    self.priority.remove_stream(stream_id)
                FastH2Protocol.data_writes += 1
                if self.ssl:  # one SSL write: TLS records are cut from contiguous bytes
                    await self.send(RawData(data=b"".join(parts)))
                else:  # one sendmsg of the pieces, uncopied
                    await self.send(zerocopy.SendParts(parts))
        except (h2.exceptions.StreamClosedError, KeyError, h2.exceptions.ProtocolError):
            # The stream or connection closed while this one waited to send: drop it, as
            # hypercorn does.
            if stream_id in self.stream_buffers:
                await self.stream_buffers.pop(stream_id).close()
            with contextlib.suppress(priority.MissingStreamError):
                self.priority.remove_stream(stream_id)

    async def _send_unread(self, stream_id: int, unread: _Unread, end: bool) -> None:
        """A piece of a file over TLS: laid out as DATA frames in one buffer, the file read
        into the frames' payloads (what the page cache holds on this thread, the rest on a
        worker thread), then h2 consulted and the buffer written: one copy of the bytes
        before OpenSSL's, where bytes chunks cost three (a read, a copy into the queue, a
        join). h2's state is only touched once the bytes are in: nothing else is sent for
        the stream in between."""
        size = self.connection.max_outbound_frame_size
        length = unread.count
        shape = (stream_id, length, size)
        if self._layout is None or self._layout.shape != shape:
            self._layout = _Layout(self._layout, shape)
        wire, view, slots, last_head = self._layout.laid_out()
        try:
            await _read_into(unread.file.fd, slots, unread.offset)
        except OSError:
            # Cut short on disk, or a read error: the body can no longer be what its head
            # announced. The stream is reset (never END_STREAM), the connection lives on.
            await self._abort(stream_id)
            return
        finally:
            unread.file.release()
        if self.connection.local_flow_control_window(stream_id) < length:
            await self._abort(stream_id)  # the peer shrank its window (SETTINGS) meanwhile
            return
        queued, stripped = self._account(stream_id, length, end)
        if end and stripped:  # END_STREAM on the last frame packed here (its flags byte)
            wire[last_head + 4] = _END_STREAM
        FastH2Protocol.data_frames += len(slots)
        FastH2Protocol.data_writes += 1
        if end:
            self.stream_buffers.pop(stream_id, None)
            with contextlib.suppress(priority.MissingStreamError):
                self.priority.remove_stream(stream_id)
        if queued and stripped:
            await self.send(RawData(data=queued))  # h2's frames before (a SETTINGS ACK...)
        await self.send(RawData(data=view))  # type: ignore[arg-type]  # any buffer is sent
        if not self.stream_buffers:
            self._layout = None  # an idle connection holds no write buffer
        if queued and not stripped:  # never seen: h2's frame, END_STREAM and all, goes last
            await self.send(RawData(data=queued))

    def _account(self, stream_id: int, length: int, end: bool) -> tuple[bytes, bool]:
        """h2's part of a write of `length` body bytes whose DATA frames are packed here.

        h2 validates and accounts, the frames are packed by the caller: h2's send_data of an
        empty frame checks the stream's state and moves END_STREAM through its state machine;
        that empty frame is then left out (END_STREAM goes on the last frame packed), and the
        bytes are counted against the stream's and the connection's windows as h2's send_data
        does. h2 costs ~25 us per frame, a third of the CPU of an h2 download over TLS
        (measured), and framing the last piece through h2 would copy it (for a mapped file:
        read it in this process, where a file cut short is a SIGBUS, not an error).

        Returns what h2 has to send besides, and whether its empty frame was left out: then
        those bytes go before the packed frames and END_STREAM on the last of them; if not
        (never seen), they go after, END_STREAM and all.
        """
        self.connection.send_data(stream_id, b"", end_stream=end)
        queued = self.connection.data_to_send()
        empty = _HEAD.pack(_DATA, _END_STREAM if end else 0, stream_id)
        stripped = bool(length) and queued.endswith(empty)
        if stripped:
            queued = queued[: -len(empty)]
        if length:
            self.connection.outbound_flow_control_window -= length
            self.connection.streams[stream_id].outbound_flow_control_window -= length
        return queued, stripped

    async def _abort(self, stream_id: int) -> None:
        """Reset a stream whose body cannot be sent whole, and forget its queue."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        buffer = self.stream_buffers.pop(stream_id, None)
        if buffer is not None:
            await buffer.close()
        with contextlib.suppress(priority.MissingStreamError):
            self.priority.remove_stream(stream_id)
        await self._flush()

    def _frame(
        self, stream_id: int, data: bytes | memoryview | _Mapped, end: bool
    ) -> list[bytes | memoryview]:
        """What h2 had queued, then `data` as DATA frames of the peer's maximum size with
        END_STREAM on the last when `end`: the pieces of one write (h2's part: _account)."""
        size = self.connection.max_outbound_frame_size
        body = data.view if isinstance(data, _Mapped) else memoryview(data)
        length = len(body)
        queued, stripped = self._account(stream_id, length, end)
        parts: list[bytes | memoryview] = []
        if queued and (stripped or not length):
            parts.append(queued)
        if length:
            head = _HEAD.pack(size << 8 | _DATA, 0, stream_id)  # the same for each full frame
            last = (length - 1) // size * size
            for start in range(0, last, size):
                parts += (head, body[start : start + size])
            flags = _END_STREAM if end and stripped else 0
            parts += (_HEAD.pack((length - last) << 8 | _DATA, flags, stream_id), body[last:])
            FastH2Protocol.data_frames += last // size + 1
            if queued and not stripped:  # never seen: h2's frame, END_STREAM and all, goes last
                parts.append(queued)
        return parts


async def _read_into(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill `views`, in order, with the file's bytes from `offset`: what the page cache holds
    now on this thread, the rest on a worker thread. A file shorter than that: OSError."""
    total = sum(len(v) for v in views)
    done = zerocopy.read_cached(fd, views[: zerocopy.IOV_MAX], offset)
    while done < total:
        rest = _skip(views, done)[: zerocopy.IOV_MAX]
        n = await trio.to_thread.run_sync(os.preadv, fd, rest, offset + done)
        if n == 0:
            raise OSError("file shorter than the announced Content-Length")
        done += n


def _skip(views: list[memoryview], n: int) -> list[memoryview]:
    """`views` without their first `n` bytes."""
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:])
        n = 0
    return out


def install() -> None:
    """Swap the classes into hypercorn's modules (the trio worker looks them up there);
    idempotent. Raises on another hypercorn or h2 than the ones this was written against."""
    found = version("hypercorn"), version("h2")
    if found[0] != PINNED or found[1].split(".")[0] != "4":
        raise RuntimeError(
            f"edgecache's h2 send path was written for hypercorn {PINNED} and h2 4.x, "
            f"not hypercorn {found[0]} and h2 {found[1]}"
        )
    hc_h2.StreamBuffer = FastStreamBuffer  # type: ignore[misc]
    hc_protocol.H2Protocol = FastH2Protocol  # type: ignore[misc]
