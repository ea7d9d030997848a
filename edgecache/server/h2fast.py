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
import struct
from collections import deque
from importlib.metadata import version
from typing import Any, cast

import h2.exceptions
import hypercorn.protocol as hc_protocol
import hypercorn.protocol.h2 as hc_h2
import priority
from hypercorn.events import RawData

PINNED = "0.18.0"  # the hypercorn whose h2.py (StreamBuffer, H2Protocol._send_data) was read
# Bytes one visit of the send task may write for one stream: large enough that the per-write
# cost (a trip through the event loop, an SSL write, a send call) is spread over 64 frames,
# small enough that other streams of the connection get their turn every ~1 MiB.
WRITE_MAX = 1 << 20
_HEAD = struct.Struct(">IBI")  # a frame header: length (24 bits) and type, flags, stream id
_DATA = 0x0


class _Chunks:
    """A stream's queued body: the app's chunks as they came (hypercorn copies each into one
    bytearray), and their total length, which is what everyone else reads (len())."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def take(self, limit: int) -> bytes | memoryview:
        """Up to `limit` bytes from the front: a whole chunk or a slice of one uncopied, or
        several small ones joined."""
        first = self.chunks[0]
        if len(first) > limit:
            with memoryview(first) as view:
                self.chunks[0] = view[limit:]
                out: bytes | memoryview = view[:limit]
        elif len(self.chunks) == 1 or len(first) + len(self.chunks[1]) > limit:
            out = self.chunks.popleft()
        else:
            parts = []
            left = limit
            while self.chunks and len(self.chunks[0]) <= left:
                left -= len(self.chunks[0])
                parts.append(self.chunks.popleft())
            out = b"".join(parts)
        self.size -= len(out)
        return out


class FastStreamBuffer(hc_h2.StreamBuffer):
    def __init__(self, event_class: Any) -> None:
        super().__init__(event_class)
        self.buffer = _Chunks()  # type: ignore[assignment]

    async def close(self) -> None:
        self._complete = True
        self.buffer = _Chunks()  # type: ignore[assignment]
        await self._is_empty.set()
        await self._paused.set()

    async def push(self, data: bytes) -> None:
        if self._complete:
            raise hc_h2.BufferCompleteError()
        cast(_Chunks, self.buffer).append(data)
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


class FastH2Protocol(hc_h2.H2Protocol):
    # Process-wide counts (frames per write is the point), ready for /metrics to export.
    data_writes = 0
    data_frames = 0

    async def _send_data(self, stream_id: int) -> None:
        try:
            buffer = self.stream_buffers[stream_id]
            window = self.connection.local_flow_control_window(stream_id)
            data = await buffer.pop(max(0, min(window, WRITE_MAX)))
            if not data:
                self.priority.block(stream_id)
            ended = buffer.complete
            if data or ended:
                wire = self._frame(stream_id, data, ended)
                if ended:
                    del self.stream_buffers[stream_id]
                    self.priority.remove_stream(stream_id)
                FastH2Protocol.data_writes += 1
                await self.send(RawData(data=wire))
        except (h2.exceptions.StreamClosedError, KeyError, h2.exceptions.ProtocolError):
            # The stream or connection closed while this one waited to send: drop it, as
            # hypercorn does.
            if stream_id in self.stream_buffers:
                await self.stream_buffers.pop(stream_id).close()
            with contextlib.suppress(priority.MissingStreamError):
                self.priority.remove_stream(stream_id)

    def _frame(self, stream_id: int, data: bytes | memoryview, end: bool) -> bytes:
        """What h2 had queued, then `data` as DATA frames of the peer's maximum size with
        END_STREAM on the last when `end`: the bytes of one write.

        The last frame is h2's own (send_data checks the stream's state and window, moves
        END_STREAM through the state machine); the ones before it are framed here and only
        counted against the stream's and the connection's windows, as h2's send_data does:
        h2 costs ~25 us per frame, a third of the CPU of an h2 download over TLS (measured).
        """
        size = self.connection.max_outbound_frame_size
        cut = (len(data) - 1) // size * size if data else 0  # where h2's last frame starts
        with memoryview(data) as view:
            if data:
                self.connection.send_data(stream_id, view[cut:], end_stream=end)
            else:
                self.connection.end_stream(stream_id)
            queued = memoryview(self.connection.data_to_send())  # ends with that last frame
            last = len(queued) - (len(data) - cut + _HEAD.size)
            head = _HEAD.pack(size << 8 | _DATA, 0, stream_id)  # the same for each full frame
            parts: list[bytes | memoryview] = [queued[:last]]
            for start in range(0, cut, size):
                parts += (head, view[start : start + size])
            parts.append(queued[last:])
            wire = b"".join(parts)
        if cut:
            self.connection.outbound_flow_control_window -= cut
            self.connection.streams[stream_id].outbound_flow_control_window -= cut
        FastH2Protocol.data_frames += cut // size + 1
        return wire


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
