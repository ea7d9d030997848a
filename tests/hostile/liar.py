"""An upstream registry that answers with hostile JSON: a fake, because no real registry can be
made to serve these bytes (docker-registry validates what is pushed to it).

It listens on 127.0.0.1 in a thread of the test process. The repository name chooses the lie,
so one instance covers every case: `/v2/<kind>/...` answers the body KINDS[kind] to a tag
list, a referrers or a manifest request. With `token=True` it asks for a bearer token at its
own `/token`, which answers a token response nested 100,000 deep.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import LOOPBACK

DEEP = b"[" * 100_000 + b"]" * 100_000
KINDS: dict[str, bytes] = {
    "deep": DEEP,
    "deep-inside": b'{"schemaVersion":2,"tags":[],"manifests":[],"x":' + DEEP + b"}",
    "bignum": b'{"schemaVersion":2,"tags":[],"manifests":[],"size":' + b"7" * 5000 + b"}",
    "array": b"[]",
    "not-descriptors": b'{"schemaVersion":2,"manifests":[1,"two",null,[]]}',
    "nan": b'{"schemaVersion":NaN,"tags":[],"manifests":[]}',
}
JSON = "application/json"


class Liar:
    def __init__(self, *, token: bool = False) -> None:
        self.token = token
        self.requests: list[str] = []
        liar = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                liar._answer(self, with_body=True)

            def do_HEAD(self) -> None:
                liar._answer(self, with_body=False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def __enter__(self) -> Liar:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _answer(self, handler: BaseHTTPRequestHandler, with_body: bool) -> None:
        self.requests.append(handler.path)
        status, headers, body = self._route(handler)
        handler.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if with_body:
            handler.wfile.write(body)

    def _route(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        path = handler.path.split("?")[0]
        if path == "/token":
            return 200, {"Content-Type": JSON}, DEEP
        if self.token and not handler.headers.get("Authorization"):
            challenge = f'Bearer realm="{self.url}/token",service="liar"'
            return 401, {"WWW-Authenticate": challenge, "Content-Type": JSON}, b"{}"
        if path in ("/v2/", "/v2"):
            return 200, {"Content-Type": JSON}, b"{}"
        kind = path.split("/")[2] if path.count("/") >= 3 else ""
        return 200, {"Content-Type": JSON}, KINDS.get(kind, b"{}")
