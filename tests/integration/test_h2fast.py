"""The coalesced HTTP/2 send path (server/h2fast.py), seen on the wire.

hypercorn alone writes each 16 KiB DATA frame on its own; over TLS every write becomes its own
TLS records, so a frame of 16384 + 9 bytes goes out as a full record plus a 9-byte one. With
h2fast a whole window's worth of frames is one write, cut into full records. The client here
does TLS itself through memory BIOs so that it can count the records the server wrote.

Coalescing must not bend the protocol: frames stay within the peer's SETTINGS_MAX_FRAME_SIZE,
a stream whose window is used up stalls (checked with a PING round trip before each
WINDOW_UPDATE: a DATA frame before the PING's ACK would be an overrun, which the h2 package
refuses), and END_STREAM rides on the last DATA frame instead of an empty frame of its own.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from tests.integration.test_workers import serving
from tests.support import EdgecacheServer, anonymous_push_config, make_tls_cert

MiB = 1 << 20
SIZE = 5 * MiB + 4321  # not a multiple of any frame or window size
DEFAULT_WINDOW = 65535
TLS_APPLICATION_DATA = 23


class Wire:
    """One TCP connection, plain or with TLS done here (memory BIOs), counting the TLS
    application-data records the server sends."""

    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.records = 0
        self._head = b""
        self._skip = 0
        self.tls: ssl.SSLObject | None = None
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = tls.wrap_bio(self._in, self._out, server_hostname="127.0.0.1")
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._push_out()
                    self._pull_in()
            self._push_out()
            assert self.tls.selected_alpn_protocol() == "h2"

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            return
        self.tls.write(data)
        self._push_out()

    def recv(self) -> bytes:
        if self.tls is None:
            data = self.sock.recv(MiB)
            assert data, "server closed the connection"
            return data
        plain = bytearray()
        while not plain:
            self._pull_in()
            while True:
                try:
                    plain += self.tls.read(MiB)
                except ssl.SSLWantReadError:
                    break
        return bytes(plain)

    def _push_out(self) -> None:
        pending = self._out.read()
        if pending:
            self.sock.sendall(pending)

    def _pull_in(self) -> None:
        raw = self.sock.recv(MiB)
        assert raw, "server closed the connection"
        self._count_records(raw)
        self._in.write(raw)

    def _count_records(self, raw: bytes) -> None:
        at = 0
        while at < len(raw):
            if self._skip:
                step = min(self._skip, len(raw) - at)
                self._skip -= step
                at += step
                continue
            take = 5 - len(self._head)
            self._head += raw[at : at + take]
            at += take
            if len(self._head) == 5:
                kind, _, length = struct.unpack("!BHH", self._head)
                self._head = b""
                self.records += kind == TLS_APPLICATION_DATA
                self._skip = length

    def close(self) -> None:
        self.sock.close()


@dataclass
class Fetched:
    body: bytearray = field(default_factory=bytearray)
    frames: list[int] = field(default_factory=list)  # DATA frame payload sizes, in order
    last_frame_ends_stream: bool = False
    stalls: int = 0  # times the window was used up and the server was seen to stop
    records: int = 0  # TLS records the server sent while the body came (0 without TLS)


def fetch(
    wire: Wire,
    path: str,
    *,
    max_frame: int = 16384,
    stream_window: int = DEFAULT_WINDOW,
    conn_window: int = DEFAULT_WINDOW,
    stingy: bool = False,
) -> Fetched:
    """GET `path` over HTTP/2. stingy: the window is given back only once it is used up and a
    PING round trip showed that the server stopped; otherwise as the h2 package (and Go) do."""
    settings = h2.settings.SettingCodes
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.local_settings = h2.settings.Settings(
        client=True,
        initial_values={
            settings.ENABLE_PUSH: 0,
            settings.INITIAL_WINDOW_SIZE: stream_window,
            settings.MAX_FRAME_SIZE: max_frame,
        },
    )
    # Replacing local_settings skips what h2 derives from them when they are acknowledged.
    conn.max_inbound_frame_size = conn.incoming_buffer.max_frame_size = max_frame
    conn.initiate_connection()
    if conn_window > DEFAULT_WINDOW:
        conn.increment_flow_control_window(conn_window - DEFAULT_WINDOW)
    stream_id = conn.get_next_available_stream_id()
    scheme = "https" if wire.tls is not None else "http"
    headers = [(":method", "GET"), (":scheme", scheme), (":authority", "127.0.0.1")]
    conn.send_headers(stream_id, [*headers, (":path", path)], end_stream=True)
    wire.send(conn.data_to_send())
    records_before = wire.records
    out = Fetched()
    left = min(stream_window, conn_window)  # window left (stingy mode)
    status, ended, waiting_ack = b"", False, False
    while not ended:
        for event in conn.receive_data(wire.recv()):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                assert not waiting_ack, "DATA beyond the window, before the PING's ACK"
                if event.data:
                    out.frames.append(len(event.data))
                out.body += event.data
                out.last_frame_ends_stream = bool(event.data) and event.stream_ended is not None
                if stingy:
                    left -= event.flow_controlled_length
                else:
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
            elif isinstance(event, h2.events.PingAckReceived):
                waiting_ack = False
                out.stalls += 1
                conn.increment_flow_control_window(stream_window, stream_id)
                conn.increment_flow_control_window(stream_window)
                left = stream_window
            elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                raise AssertionError(f"server ended the stream: {event}")
        if stingy and left == 0 and not ended and not waiting_ack:
            conn.ping(b"h2fast!!")
            waiting_ack = True
        wire.send(conn.data_to_send())
    out.records = wire.records - records_before
    assert status == b"200", status
    return out


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(SIZE)


def digest_of(data: bytes | bytearray) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_tls_cert(tmp_path_factory.mktemp("tls"))


Served = tuple[EdgecacheServer, ssl.SSLContext | None, str]


def _serve(
    base: Path, tls_files: tuple[Path, Path, Path], blob: bytes, tls: bool
) -> Iterator[Served]:
    """A server holding `blob`, over TLS or h2c: the server, a client TLS context, the path."""
    ca, cert, key = tls_files
    extra = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n' if tls else ""
    context = ssl.create_default_context(cafile=str(ca)) if tls else None
    with EdgecacheServer(base, config_text=anonymous_push_config(extra)) as server:
        digest = digest_of(blob)
        with server.client(verify=context or True) as client:
            r = client.post("/v2/h2fast/blobs/uploads/", params={"digest": digest}, content=blob)
            assert r.status_code == 201, r.text
        yield server, context, f"/v2/h2fast/blobs/{digest}"


@pytest.fixture(scope="module")
def tls_served(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path, Path], blob: bytes
) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("h2fast-tls"), tls_files, blob, tls=True)


@pytest.fixture(scope="module")
def h2c_served(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path, Path], blob: bytes
) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("h2fast-h2c"), tls_files, blob, tls=False)


@pytest.fixture(params=["h2c", "tls"])
def served(request: pytest.FixtureRequest) -> Served:
    served: Served = request.getfixturevalue(f"{request.param}_served")
    return served


def fetch_with_go_windows(served: Served, blob: bytes) -> Fetched:
    """The blob with Go's windows (4 MiB per stream, 1 GiB per connection), checked whole."""
    server, context, path = served
    wire = Wire(server.port, context)
    try:
        got = fetch(wire, path, stream_window=4 * MiB, conn_window=1 << 30)
    finally:
        wire.close()
    assert digest_of(got.body) == digest_of(blob)
    return got


def test_tls_body_goes_out_in_full_records(tls_served: Served, blob: bytes) -> None:
    """With Go's windows the frames of a write share TLS records: about one record per 16 KiB
    frame, not two (hypercorn's frame per write)."""
    got = fetch_with_go_windows(tls_served, blob)
    # Each write ends with one short record; writes carry up to 1 MiB (64 frames).
    assert got.records <= len(got.frames) * 1.1 + 8, (got.records, len(got.frames))
    assert max(got.frames) == 16384
    assert got.last_frame_ends_stream


@pytest.mark.parametrize("max_frame", [16384, 65536])
def test_small_window_stalls_the_stream_within_the_peer_frame_size(
    served: Served, blob: bytes, max_frame: int
) -> None:
    server, context, path = served
    wire = Wire(server.port, context)
    try:
        got = fetch(wire, path, max_frame=max_frame, stingy=True)
    finally:
        wire.close()
    assert digest_of(got.body) == digest_of(blob)
    assert max(got.frames) == min(max_frame, DEFAULT_WINDOW)
    assert got.stalls == SIZE // DEFAULT_WINDOW  # the server waited at every window's end
    # END_STREAM is on the last DATA frame, not on an empty frame sent after it.
    assert got.last_frame_ends_stream


def test_h2c_with_go_windows_sends_the_file_in_full_frames(h2c_served: Served, blob: bytes) -> None:
    """h2c sends a stored blob from mapped pages, one sendmsg of frame headers and page ranges
    per visit (up to 4 MiB): the frames are still the peer's size, in order, and END_STREAM
    rides on the last one."""
    got = fetch_with_go_windows(h2c_served, blob)
    assert set(got.frames[:-1]) == {16384}, "every frame but the last is full"
    assert got.last_frame_ends_stream


def test_h2c_file_cut_short_mid_body_resets_the_connection_and_no_process_dies(
    tmp_path: Path, tls_files: tuple[Path, Path, Path], blob: bytes
) -> None:
    """The mapped pages are read only by the kernel: a file cut short while it is being sent
    (a disk going bad, a hand in the data directory) fails that sendmsg with EFAULT, and the
    connection is reset. Read by Python instead, it would be a SIGBUS, the end of the process
    and of every connection it serves."""
    for served in _serve(tmp_path, tls_files, blob, tls=False):
        server, context, path = served
        before = {row["pid"]: row.get("restarts") for row in serving(server)}
        wire = Wire(server.port, context)
        try:
            conn = _cut_short_mid_body(server, wire, path)
            ended = _read_until_closed(wire, conn)
        finally:
            wire.close()
        assert not ended, "the body must not look complete"
        assert {row["pid"]: row.get("restarts") for row in serving(server)} == before
        with server.client() as client:
            assert client.get("/v2/").status_code == 200


def _cut_short_mid_body(
    server: EdgecacheServer, wire: Wire, path: str
) -> h2.connection.H2Connection:
    """GET the blob at `path`, take its first window's worth (the server then waits), cut its
    file on disk to nothing, and open the windows for the rest."""
    digest = path.rsplit("/", 1)[1].removeprefix("sha256:")
    stored = server.data / "blobs" / "sha256" / digest[:2] / digest
    conn, stream_id = _start_get(wire, path)
    got = 0
    while got < DEFAULT_WINDOW:
        for event in conn.receive_data(wire.recv()):
            if isinstance(event, h2.events.DataReceived):
                got += event.flow_controlled_length
    assert got == DEFAULT_WINDOW
    os.truncate(stored, 0)
    conn.increment_flow_control_window(SIZE, stream_id)
    conn.increment_flow_control_window(SIZE)
    wire.send(conn.data_to_send())
    return conn


def _start_get(
    wire: Wire, path: str, conn: h2.connection.H2Connection | None = None
) -> tuple[h2.connection.H2Connection, int]:
    if conn is None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    scheme = "https" if wire.tls is not None else "http"
    conn.send_headers(
        stream_id,
        [(":method", "GET"), (":scheme", scheme), (":authority", "127.0.0.1"), (":path", path)],
        end_stream=True,
    )
    wire.send(conn.data_to_send())
    return conn, stream_id


def test_tls_file_cut_short_mid_body_resets_the_stream_and_the_connection_lives(
    tmp_path: Path, tls_files: tuple[Path, Path, Path], blob: bytes
) -> None:
    """Over TLS the file is read into the write buffer as the send goes: a file cut short
    meanwhile fails that read, and the stream is reset (never END_STREAM, so the body cannot
    pass for complete); the connection carries the next request."""
    for served in _serve(tmp_path, tls_files, blob, tls=True):
        server, context, path = served
        wire = Wire(server.port, context)
        try:
            conn = _cut_short_mid_body(server, wire, path)
            outcome: h2.events.Event | None = None
            while outcome is None:
                for event in conn.receive_data(wire.recv()):
                    if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        outcome = event
                wire.send(conn.data_to_send())
            assert isinstance(outcome, h2.events.StreamReset), outcome
            conn, _ = _start_get(wire, "/v2/", conn)
            status = None
            while status is None:
                for event in conn.receive_data(wire.recv()):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
            assert status == b"200"
        finally:
            wire.close()


def _read_until_closed(wire: Wire, conn: h2.connection.H2Connection) -> bool:
    """Read until the server closes the connection; whether a stream ended (END_STREAM)."""
    ended = False
    while True:
        try:
            data = wire.sock.recv(MiB)
        except ConnectionResetError:
            return ended
        if not data:
            return ended
        for event in conn.receive_data(data):
            ended = ended or isinstance(event, h2.events.StreamEnded)
