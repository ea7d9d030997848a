"""Upstream registries for the pull-through tests: real `docker-registry` in three flavours.

- "anonymous": no auth at all.
- "basic": htpasswd (bcrypt) auth, the registry answers `Basic realm=...` challenges.
- "token": Docker token auth. A small token server (a thread in this process, 127.0.0.1 only)
  issues ES256 JWTs that the registry verifies against the certificate in its
  `rootcertbundle`. It checks basic credentials on token requests, grants what the scope asks
  to the configured user and only `pull` to anonymous requests, and records every request so
  tests can count token fetches.

What the upstream served is read back from the registry's own log: with `formatter: json`,
distribution 2.8 writes one `"msg": "response completed"` entry per request carrying
`http.request.method`, `http.request.uri`, `http.response.status` and
`http.response.written` (bytes of body written). `served_bytes` and `request_count` parse it.

The JWT `kid` is the libtrust key ID of the signing key, because that is how distribution 2.8
looks up a token's key among the public keys of `rootcertbundle` (registry/auth/token:
`trustedKeys[libtrust key ID] = key`): base32 of the first 240 bits of SHA-256 over the DER
SubjectPublicKeyInfo, in 4-character groups joined by ':'.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support import (  # the OCI_* media types are imported from here too
    LOOPBACK,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    DockerRegistry,
    require_tool,
    run,
    sha256_bytes,
    wait_for,
)

Flavour = Literal["anonymous", "basic", "token"]
FLAVOURS: tuple[Flavour, ...] = ("anonymous", "basic", "token")

USERNAME = "edgeuser"
PASSWORD = "s3cret-upstream-pw"
SERVICE = "edgecache-test-registry"
ISSUER = "edgecache-test-token-issuer"


# ---------------------------------------------------------------------------- JWT


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class TokenSigner:
    """A P-256 key with a self-signed certificate (the registry's rootcertbundle)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgecache test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(self.key, hashes.SHA256())
        )
        self.kid = libtrust_key_id(self.key.public_key())

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self.key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS ES256 wants the raw 64-byte r||s, not the DER SEQUENCE cryptography returns.
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


# -------------------------------------------------------------------- token server


@dataclass(frozen=True)
class TokenRequest:
    user: str | None  # None: anonymous
    service: str | None
    scopes: tuple[str, ...]
    status: int


@dataclass
class TokenServer:
    """GET /token?service=..&scope=repository:NAME:ACTIONS (Docker token protocol)."""

    signer: TokenSigner
    username: str = USERNAME
    password: str = field(default=PASSWORD, repr=False)
    expires_in: int = 300
    anonymous_pull: bool = True
    requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "token server not started"
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}/token"

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server._handle(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are recorded in server.requests instead

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def count(self, scope_fragment: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if any(scope_fragment in s for s in r.scopes))

    def _user(self, authorization: str | None) -> tuple[str | None, bool]:
        """(user, ok): ok is False for credentials that are present but wrong."""
        if not authorization:
            return None, True
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            user, _, pw = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None, False
        ok = secrets.compare_digest(user, self.username) and secrets.compare_digest(
            pw, self.password
        )
        return user, ok

    def _handle(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        query = parse_qs(urlsplit(path).query)
        service = query["service"][0] if query.get("service") else None
        scopes = tuple(s for v in query.get("scope", []) for s in v.split(" ") if s)
        user, ok = self._user(authorization)
        status = 200 if ok else 401
        with self._lock:
            self.requests.append(TokenRequest(user, service, scopes, status))
        if not ok:
            return 401, b'{"details":"incorrect username or password"}'
        return 200, json.dumps(self.issue(user, scopes, service or SERVICE)).encode()

    def issue(
        self, user: str | None, scopes: tuple[str, ...], service: str = SERVICE
    ) -> dict[str, Any]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            granted = wanted if user is not None else (["pull"] if self.anonymous_pull else [])
            granted = [a for a in wanted if a in granted]
            if kind == "repository" and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        token = self.signer.sign(
            {
                "iss": ISSUER,
                "sub": user or "",
                "aud": service,
                "exp": now + self.expires_in,
                "nbf": now - 10,
                "iat": now,
                "jti": secrets.token_hex(8),
                "access": access,
            }
        )
        return {"token": token, "access_token": token, "expires_in": self.expires_in}


# ------------------------------------------------------------------------ registry


class UpstreamRegistry(DockerRegistry):
    """docker-registry with a JSON log (parsed by served_bytes/request_count)."""

    def _config(self) -> str:
        text = super()._config()
        plain = "log:\n  level: info\n"
        assert plain in text, "DockerRegistry config layout changed: update UpstreamRegistry"
        return text.replace(plain, plain + "  formatter: json\n", 1)

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if str(entry.get("msg", "")).startswith("response completed"):
                    entries.append(entry)
        return entries


@dataclass
class RunningUpstream:
    flavour: Flavour
    registry: UpstreamRegistry
    token_server: TokenServer | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def pid(self) -> int:
        return self.registry.pid

    def stop(self) -> None:
        self.registry.stop()

    # -- what the upstream served

    def request_count(self, path_fragment: str, method: str | None = None) -> int:
        return sum(
            1
            for e in self.registry.log_entries()
            if path_fragment in str(e.get("http.request.uri", ""))
            and (method is None or e.get("http.request.method") == method)
        )

    def served_bytes(self, digest: str) -> int:
        """Body bytes the registry wrote for GETs of blob `digest` (all repositories)."""
        return sum(
            int(e.get("http.response.written", 0))
            for e in self.registry.log_entries()
            if e.get("http.request.method") == "GET"
            and f"/blobs/{digest}" in str(e.get("http.request.uri", ""))
        )

    # docker-registry writes a request's log line after the response is on its way: a client
    # can hold the whole body before the line exists. Counts that a test compares right after
    # a request therefore wait for the line first (then the exact comparison still catches a
    # count that went too far).

    def settled_served_bytes(self, digest: str, at_least: int, timeout: float = 10.0) -> int:
        wait_for(
            lambda: self.served_bytes(digest) >= at_least,
            timeout=timeout,
            what=f"the registry log to show {at_least} bytes of {digest} served",
        )
        return self.served_bytes(digest)

    def settled_request_count(
        self, path_fragment: str, method: str | None, at_least: int, timeout: float = 10.0
    ) -> int:
        wait_for(
            lambda: self.request_count(path_fragment, method) >= at_least,
            timeout=timeout,
            what=f"the registry log to show {at_least} requests for {path_fragment}",
        )
        return self.request_count(path_fragment, method)

    # -- pushing content straight into the upstream (not through edgecache)

    def _auth_headers(self, repo: str) -> dict[str, str]:
        if self.flavour == "basic":
            assert self.username and self.password
            raw = f"{self.username}:{self.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if self.flavour == "token":
            assert self.token_server is not None
            # Minted directly: pushes are set-up, and must not count as client token fetches.
            issued = self.token_server.issue(self.username, (f"repository:{repo}:pull,push",))
            return {"Authorization": f"Bearer {issued['token']}"}
        return {}

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_bytes(data)
        headers = self._auth_headers(repo)
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client:
            # distribution 2.8 ignores a monolithic POST's body: open an upload, then PUT it.
            r = client.post(f"/v2/{repo}/blobs/uploads/")
            assert r.status_code == 202, f"upload start in {repo}: {r.status_code} {r.text}"
            location = httpx.URL(self.url).join(r.headers["location"])
            r = client.put(location.copy_merge_params({"digest": digest}), content=data)
            assert r.status_code == 201, f"blob push to {repo}: {r.status_code} {r.text}"
        return digest

    def push_manifest(
        self, repo: str, reference: str, data: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        headers = {**self._auth_headers(repo), "Content-Type": media_type}
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client:
            r = client.put(f"/v2/{repo}/manifests/{reference}", content=data)
            assert r.status_code == 201, f"manifest push to {repo}: {r.status_code} {r.text}"
        return sha256_bytes(data)

    def push_test_image(
        self, repo: str, tags: tuple[str, ...] = ("v1",), layer: bytes | None = None
    ) -> PushedImage:
        """A one-layer OCI image pushed under `tags`; the layer is random unless given."""
        layer = layer if layer is not None else os.urandom(256 * 1024)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha256_bytes(layer)]},
            }
        ).encode()
        config_digest = self.push_blob(repo, config)
        layer_digest = self.push_blob(repo, layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            },
            indent=2,  # not the compact form: digests must be of the exact bytes
        ).encode()
        digest = ""
        for tag in tags:
            digest = self.push_manifest(repo, tag, manifest)
        return PushedImage(repo, tags, manifest, digest, config, config_digest, layer, layer_digest)

    def push_image(self, layout_ref: str, ref_in_upstream: str) -> None:
        """skopeo copy an OCI layout ("oci:dir:tag") to "repo:tag" in this upstream."""
        argv = [require_tool("skopeo"), "--insecure-policy", "copy", "--dest-tls-verify=false"]
        if self.username:
            argv += ["--dest-creds", f"{self.username}:{self.password}"]
        run([*argv, layout_ref, f"docker://{self.host}/{ref_in_upstream}"], timeout=300)


@dataclass(frozen=True)
class PushedImage:
    repo: str
    tags: tuple[str, ...]
    manifest: bytes
    digest: str
    config: bytes
    config_digest: str
    layer: bytes
    layer_digest: str


@contextlib.contextmanager
def start_registry(tmp: str | os.PathLike[str], flavour: Flavour) -> Iterator[RunningUpstream]:
    """A running docker-registry of the given flavour; stopped (by pid) on exit."""
    base = Path(tmp)
    base.mkdir(parents=True, exist_ok=True)
    token_server: TokenServer | None = None
    htpasswd: str | None = None
    extra = ""
    if flavour == "basic":
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd = f"{USERNAME}:{hashed}\n"
    elif flavour == "token":
        signer = TokenSigner()
        bundle = base / "token-signer.pem"
        bundle.write_bytes(signer.cert_pem())
        token_server = TokenServer(signer).start()
        extra = (
            "auth:\n  token:\n"
            f"    realm: {token_server.url}\n"
            f"    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n"
            f"    rootcertbundle: {bundle}\n"
        )
    elif flavour != "anonymous":
        raise ValueError(f"unknown upstream flavour {flavour!r}")
    registry = UpstreamRegistry(base, htpasswd=htpasswd, extra_config=extra)
    creds = flavour in ("basic", "token")
    upstream = RunningUpstream(
        flavour,
        registry,
        token_server,
        USERNAME if creds else None,
        PASSWORD if creds else None,
    )
    try:
        registry.start()
        yield upstream
    finally:
        registry.stop()
        if token_server is not None:
            token_server.stop()
