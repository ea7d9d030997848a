"""Low-level HTTP clients for hostile tests: they report exactly what came over the wire.

httpx hides framing (a short body, a reset, a missing last chunk) behind exceptions or
retries; these helpers say whether a response was complete, so a test can assert that a
broken one never is.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h11

TCP_CLOSE = 7  # tcpi_state of a socket whose connection is gone (Linux include/net/tcp_states.h)


@dataclass
class Outcome:
    """What a client saw of one response."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the protocol said the body ended (Content-Length, last chunk,
    # END_STREAM); False after a short body, a reset or a timeout
    error: str = ""  # how it ended otherwise


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of a client socket (TCP_INFO's first byte)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def http1_get(
    host: str,
    port: int,
    path: str,
    *,
    tls: ssl.SSLContext | None = None,
    timeout: float = 30.0,
    max_body: int = 1 << 30,
) -> Outcome:
    """GET over one fresh HTTP/1.1 connection, parsed by h11 (which knows when a body is
    complete), read to the end of the response or of the connection (or past `max_body`)."""
    outcome = Outcome()
    raw = socket.create_connection((host, port), timeout=timeout)
    sock: socket.socket = raw
    if tls is not None:
        tls.set_alpn_protocols(["http/1.1"])
        sock = tls.wrap_socket(raw, server_hostname=host)
    conn = h11.Connection(h11.CLIENT)
    try:
        sock.sendall(
            conn.send(h11.Request(method="GET", target=path, headers=[("Host", host)]))
            + conn.send(h11.EndOfMessage())
        )
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(1 << 20)
                except (OSError, ssl.SSLError) as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    break
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                outcome.status = event.status_code
                outcome.headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    outcome.error = f"body longer than {max_body} bytes"
                    break
            elif isinstance(event, h11.EndOfMessage):
                outcome.complete = True
                break
    except h11.RemoteProtocolError as exc:  # e.g. the connection closed mid-body
        outcome.error = f"RemoteProtocolError: {exc}"
    finally:
        sock.close()
    outcome.body = bytes(body)
    return outcome


class H2Client:
    """An HTTP/2 client on the h2 package over one socket (h2c with prior knowledge, or h2
    over TLS), for tests that need frames: resets, flow-control windows, GOAWAY."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        window: int | None = None,
    ) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock: socket.socket = raw
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            self.sock = tls.wrap_socket(raw, server_hostname=host)
            assert self.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        self.host = host
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flow_control = window is None  # False: never give the server more window
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.outcomes: dict[int, Outcome] = {}
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self, path: str, method: str = "GET", body: bytes | None = None, length: int | None = None
    ) -> int:
        """Open a stream; with a body it stays open (more may follow), announcing `length`
        (default: the body's) as Content-Length."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", method),
            (":path", path),
            (":scheme", "https" if isinstance(self.sock, ssl.SSLSocket) else "http"),
            (":authority", self.host),
        ]
        if body is not None:
            headers.append(("content-length", str(len(body) if length is None else length)))
        self.conn.send_headers(stream_id, headers, end_stream=body is None)
        if body:
            self.conn.send_data(stream_id, body, end_stream=False)
        self.outcomes[stream_id] = Outcome()
        self._flush()
        return stream_id

    def done(self, stream_id: int) -> bool:
        outcome = self.outcomes[stream_id]
        return outcome.complete or bool(outcome.error)

    def pump(self) -> bool:
        """Read and handle one batch of frames; False once the connection is closed."""
        if self.closed:
            return False
        try:
            data = self.sock.recv(1 << 20)
        except (OSError, ssl.SSLError) as exc:
            self._close(f"{type(exc).__name__}: {exc}")
            return False
        if not data:
            self._close("connection closed")
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # e.g. frames after the server's GOAWAY
            self._close(f"protocol error: {exc}")
            return False
        for event in events:
            self._handle(event)
        self._flush()
        return True

    def _handle(self, event: h2.events.Event) -> None:
        stream_id = getattr(event, "stream_id", 0)
        outcome = self.outcomes.get(stream_id)
        if isinstance(event, h2.events.ResponseReceived) and outcome is not None:
            headers = {k.decode(): v.decode() for k, v in event.headers}
            outcome.status = int(headers.pop(":status"))
            outcome.headers = headers
        elif isinstance(event, h2.events.DataReceived) and outcome is not None:
            outcome.body += event.data
            if self.flow_control:
                self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, h2.events.StreamEnded) and outcome is not None:
            outcome.complete = True
        elif isinstance(event, h2.events.StreamReset) and outcome is not None:
            outcome.error = f"RST_STREAM {event.error_code!r}"
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def _close(self, why: str) -> None:
        self.closed = True
        for outcome in self.outcomes.values():
            if not outcome.complete and not outcome.error:
                outcome.error = why

    def close(self) -> None:
        self.sock.close()


def h2_get(
    host: str, port: int, path: str, *, tls: ssl.SSLContext | None = None, timeout: float = 30.0
) -> Outcome:
    client = H2Client(host, port, tls=tls, timeout=timeout)
    try:
        stream_id = client.request(path)
        while not client.done(stream_id) and client.pump():
            pass
        return client.outcomes[stream_id]
    finally:
        client.close()


def linger_reset(sock: socket.socket) -> None:
    """Close with RST, as a client that vanishes does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
