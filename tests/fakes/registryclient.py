"""A tiny synchronous OCI pull client for the fakes (Dragonfly's seed peer, Kraken's origin).

Not a general client: it does what those services do when they preheat an image from a
registry, and checks everything it receives, so a test learns exactly what edgecache served.

`pull_image(manifest_url, headers, platform, verify)`:
1. GET the manifest URL (`<scheme>://<host>/v2/<repo>/manifests/<ref>`; the repository may
   contain slashes) with the given headers and `Accept` of every manifest media type, one
   header line each, as Go's `req.Header.Add` sends them (Dragonfly: internal/job/image.go,
   `resolveManifests`, which adds `distribution.ManifestMediaTypes()`).
2. Check the answer: status 200 (anything else is an error, recorded with its status), a
   `Content-Type` that is a manifest media type and agrees with the body's `mediaType` (what
   `distribution.UnmarshalManifest` needs), sha256 of the body equal to the digest when pulled
   by digest, and to `Docker-Content-Digest` whenever that header is present.
3. An index (OCI index or Docker manifest list) selects the platform's manifests (default
   linux/amd64; `match_variant=False, all_matches=True` is Dragonfly's `filterManifests`:
   os and architecture only, every match), each fetched from `<base>/v2/<repo>/manifests/<d>`.
4. The config and every layer are fetched from `<base>/v2/<repo>/blobs/<digest>` with the same
   headers, streamed, hashed (sha256) and checked against the descriptor's digest and size.

Every HTTP exchange is in `PullResult.exchanges`; `PullResult.ok` is true only when nothing
went wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_V2})
# What docker/distribution registers (schema1, schema2, manifestlist incl. the OCI index,
# ocischema) and `distribution.ManifestMediaTypes()` therefore returns; schema1 also registers
# "application/json".
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_LIST,
    DOCKER_V2,
    DOCKER_V1_SIGNED,
    DOCKER_V1,
    "application/json",
)

# Dragonfly's internal/job/image.go: accessURLRegexp, greedy groups and all.
MANIFEST_URL = re.compile(r"^(.*)://(.*)/v2/(.*)/manifests/(.*)")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
CHUNK = 1 << 20


@dataclass
class Exchange:
    method: str
    url: str
    status: int | None  # None: no answer (connection error)
    error: str = ""


@dataclass
class BlobPull:
    url: str
    digest: str
    media_type: str
    expected_size: int | None
    size: int = 0
    status: int | None = None
    ok: bool = False
    error: str = ""
    data: bytes | None = None  # the bytes, when fetch_blob was asked to keep them


@dataclass
class PullResult:
    manifest_url: str
    base: str = ""
    repository: str = ""
    reference: str = ""
    manifest_digests: list[str] = field(default_factory=list)  # the top one first
    manifest_media_types: list[str] = field(default_factory=list)
    blobs: list[BlobPull] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.manifest_digests)

    @property
    def blob_digests(self) -> list[str]:
        return [b.digest for b in self.blobs]

    @property
    def blob_sizes(self) -> dict[str, int]:
        return {b.digest: b.size for b in self.blobs}

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def statuses(self) -> list[int | None]:
        return [e.status for e in self.exchanges]

    def error_text(self) -> str:
        return "; ".join(self.errors)


class ManifestUrlError(ValueError):
    pass


def parse_manifest_url(url: str) -> tuple[str, str, str]:
    """(base URL, repository, reference) of `<scheme>://<host>/v2/<repo>/manifests/<ref>`."""
    match = MANIFEST_URL.match(url)
    if match is None:
        raise ManifestUrlError("parse access url failed")  # Dragonfly's words
    scheme, host, repo, ref = match.groups()
    return f"{scheme}://{host}", repo, ref


# containerd/platforms normalisation, the parts that matter for image indexes.
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
}


def parse_platform(text: str | None) -> tuple[str, str, str]:
    """(os, architecture, variant) of "os/arch[/variant]", normalised like containerd's
    platforms.Parse (default linux/amd64); ValueError for what it would reject."""
    if not text:
        return ("linux", "amd64", "")
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"{text!r}: unknown operating system or architecture: invalid argument")
    os_, arch = parts[0], _ARCH_ALIASES.get(parts[1], parts[1])
    variant = parts[2] if len(parts) == 3 else ""
    if arch == "arm" and not variant:
        variant = "v7"
    if arch == "arm64" and variant == "v8":
        variant = ""
    return (os_, arch, variant)


def make_client(verify: str | bool, timeout: float) -> httpx.Client:
    """An httpx client that follows redirects (as Go's http.Client does)."""
    ssl_verify: ssl.SSLContext | bool = verify if isinstance(verify, bool) else False
    if isinstance(verify, str):
        ssl_verify = ssl.create_default_context(cafile=verify)
    return httpx.Client(verify=ssl_verify, timeout=timeout, follow_redirects=True)


def _headers(base: Mapping[str, str], accept: Iterable[str] | None) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in base.items() if not (accept is not None and k.lower() == "accept")]
    if accept is not None:
        out.extend(("Accept", a) for a in accept)
    return out


def _body_media_type(doc: Any) -> str | None:
    if isinstance(doc, dict) and isinstance(doc.get("mediaType"), str):
        return str(doc["mediaType"])
    return None


def fetch_manifest(
    client: httpx.Client,
    url: str,
    headers: Mapping[str, str],
    result: PullResult,
    *,
    accept: Iterable[str] | None = MANIFEST_MEDIA_TYPES,
    expect_digest: str | None = None,
    check_content_type: bool = True,
) -> tuple[bytes, Any, str] | None:
    """GET one manifest; (raw bytes, parsed JSON, media type) or None (errors recorded)."""
    try:
        response = client.get(url, headers=_headers(headers, accept))
    except httpx.HTTPError as exc:
        result.exchanges.append(Exchange("GET", url, None, repr(exc)))
        result.errors.append(f"GET {url}: {exc!r}")
        return None
    result.exchanges.append(Exchange("GET", url, response.status_code))
    if response.status_code != 200:
        result.errors.append(f"GET {url}: HTTP {response.status_code}: {response.text[:300]}")
        return None
    raw = response.content
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    header_digest = response.headers.get("Docker-Content-Digest")
    if expect_digest is not None and digest != expect_digest:
        result.errors.append(f"GET {url}: body digest {digest} is not {expect_digest}")
    if header_digest is not None and header_digest != digest:
        result.errors.append(f"GET {url}: Docker-Content-Digest {header_digest} != body {digest}")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        result.errors.append(f"GET {url}: manifest is not JSON: {exc}")
        return None
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    media_type = _body_media_type(doc) or content_type
    if check_content_type:
        if content_type not in MANIFEST_MEDIA_TYPES:
            result.errors.append(f"GET {url}: Content-Type {content_type!r} is no manifest type")
        elif _body_media_type(doc) not in (None, content_type):
            result.errors.append(
                f"GET {url}: Content-Type {content_type} but mediaType {_body_media_type(doc)}"
            )
    result.manifest_digests.append(digest)
    result.manifest_media_types.append(media_type)
    return raw, doc, media_type


def fetch_blob(
    client: httpx.Client,
    url: str,
    headers: Mapping[str, str],
    digest: str,
    expected_size: int | None,
    media_type: str,
    result: PullResult,
    *,
    accept: Iterable[str] | None = None,
    keep: int | None = None,
) -> BlobPull:
    """Stream one blob, hashing it; the outcome is appended to result.blobs. With `keep`,
    the bytes are kept in blob.data (a blob over `keep` bytes is an error)."""
    blob = BlobPull(url, digest, media_type, expected_size)
    result.blobs.append(blob)
    hasher = hashlib.sha256()
    chunks: list[bytes] = []
    try:
        with client.stream("GET", url, headers=_headers(headers, accept)) as response:
            blob.status = response.status_code
            result.exchanges.append(Exchange("GET", url, response.status_code))
            if response.status_code != 200:
                response.read()
                blob.error = f"GET {url}: HTTP {response.status_code}: {response.text[:300]}"
                result.errors.append(blob.error)
                return blob
            for chunk in response.iter_bytes(CHUNK):
                hasher.update(chunk)
                blob.size += len(chunk)
                if keep is not None:
                    if blob.size > keep:
                        blob.error = f"GET {url}: more than {keep} bytes (too big to keep)"
                        result.errors.append(blob.error)
                        return blob
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        if blob.status is None:
            result.exchanges.append(Exchange("GET", url, None, repr(exc)))
        blob.error = f"GET {url}: {exc!r} after {blob.size} bytes"
        result.errors.append(blob.error)
        return blob
    got = "sha256:" + hasher.hexdigest()
    problems = []
    if digest and got != digest:  # "" for a plain file (Dragonfly's file preheat)
        problems.append(f"content digest {got} is not {digest}")
    if expected_size is not None and blob.size != expected_size:
        problems.append(f"{blob.size} bytes, descriptor says {expected_size}")
    if problems:
        blob.error = f"GET {url}: " + ", ".join(problems)
        result.errors.append(blob.error)
    else:
        blob.ok = True
        if keep is not None:
            blob.data = b"".join(chunks)
    return blob


def references(doc: Any) -> list[dict[str, Any]]:
    """What an image manifest references: config first, then layers (distribution's
    Manifest.References() for schema2/OCI)."""
    refs: list[dict[str, Any]] = []
    if not isinstance(doc, dict):
        return refs
    if isinstance(doc.get("config"), dict):
        refs.append(doc["config"])
    refs.extend(layer for layer in doc.get("layers") or [] if isinstance(layer, dict))
    return refs


def select_platforms(
    doc: Any, platform: tuple[str, str, str], *, match_variant: bool, all_matches: bool
) -> list[dict[str, Any]]:
    os_, arch, variant = platform
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    chosen = []
    for desc in entries if isinstance(entries, list) else []:
        if not isinstance(desc, dict):
            continue
        p = desc.get("platform") or {}
        if p.get("os") != os_ or p.get("architecture") != arch:
            continue
        if match_variant and variant and (p.get("variant") or "") != variant:
            continue
        chosen.append(desc)
        if not all_matches:
            break
    return chosen


def resolve_image(
    client: httpx.Client,
    manifest_url: str,
    headers: Mapping[str, str],
    platform: str | None,
    result: PullResult,
    *,
    match_variant: bool = True,
    all_matches: bool = False,
    accept: Iterable[str] | None = MANIFEST_MEDIA_TYPES,
) -> list[dict[str, Any]] | None:
    """Steps 1-3: the manifests; returns the descriptors to fetch (None: failed, see errors)."""
    try:
        base, repo, ref = parse_manifest_url(manifest_url)
        wanted = parse_platform(platform)
    except ValueError as exc:
        result.errors.append(str(exc))
        return None
    result.base, result.repository, result.reference = base, repo, ref
    by_digest = ref if DIGEST.match(ref) else None
    top = fetch_manifest(
        client, manifest_url, headers, result, accept=accept, expect_digest=by_digest
    )
    if top is None:
        return None
    _, doc, media_type = top
    images: list[Any] = []
    if media_type in INDEX_TYPES:
        chosen = select_platforms(doc, wanted, match_variant=match_variant, all_matches=all_matches)
        if not chosen:
            result.errors.append(
                "no matching manifest for platform " + "/".join(p for p in wanted if p)
            )
            return None
        for desc in chosen:
            digest = str(desc.get("digest", ""))
            got = fetch_manifest(
                client,
                f"{base}/v2/{repo}/manifests/{digest}",
                headers,
                result,
                accept=accept,
                expect_digest=digest,
            )
            if got is None:
                return None
            if got[2] not in IMAGE_TYPES:
                result.errors.append(f"{digest}: index entry is a {got[2]}, not an image")
                return None
            images.append(got[1])
    elif media_type in IMAGE_TYPES:
        images.append(doc)
    else:
        result.errors.append(f"unknown manifest type {media_type!r}")
        return None
    return [r for image in images for r in references(image)]


def fetch_references(
    client: httpx.Client,
    result: PullResult,
    refs: list[dict[str, Any]],
    headers: Mapping[str, str],
    *,
    blob_accept: str = "none",
    stop: Any = None,
) -> None:
    """Step 4: every referenced blob from `<base>/v2/<repo>/blobs/<digest>`.

    blob_accept: "none" (no Accept on blob GETs) or "last_reference" (Dragonfly: the blob
    headers carry `Accept: <media type of the manifest's last reference>`, because
    buildPreheatRequestFromManifests sets one shared header inside its loop).
    stop: a threading.Event; once set, no further blob is fetched.
    """
    last_type = str(refs[-1].get("mediaType", "")) if refs else ""
    accept = [last_type] if blob_accept == "last_reference" and last_type else None
    for desc in refs:
        if stop is not None and stop.is_set():
            result.errors.append("stopped before every blob was fetched")
            return
        digest = str(desc.get("digest", ""))
        size = desc.get("size")
        fetch_blob(
            client,
            f"{result.base}/v2/{result.repository}/blobs/{digest}",
            headers,
            digest,
            size if isinstance(size, int) else None,
            str(desc.get("mediaType", "")),
            result,
            accept=accept,
        )


def pull_image(
    manifest_url: str,
    headers: Mapping[str, str],
    platform: str | None = None,
    verify: str | bool = True,
    *,
    match_variant: bool = True,
    all_matches: bool = False,
    accept: Iterable[str] | None = MANIFEST_MEDIA_TYPES,
    blob_accept: str = "none",
    timeout: float = 60.0,
    stop: Any = None,
) -> PullResult:
    """Pull a whole image as a preheating service would; see the module docstring."""
    result = PullResult(manifest_url)
    with make_client(verify, timeout) as client:
        refs = resolve_image(
            client,
            manifest_url,
            headers,
            platform,
            result,
            match_variant=match_variant,
            all_matches=all_matches,
            accept=accept,
        )
        if refs is not None:
            fetch_references(client, result, refs, headers, blob_accept=blob_accept, stop=stop)
    return result
