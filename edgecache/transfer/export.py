"""`edgecache export`: images from the store into one tar another node (or docker) can load.

The tar is an OCI image layout: manifests and blobs byte for byte as stored, so a preload
elsewhere yields the same digests. `--format docker` adds manifest.json (Config and Layers
pointing into blobs/), the shape `docker save` has written since Docker 25, which `docker load`
and `skopeo docker-archive:` read while `edgecache preload` still prefers index.json and keeps
the original manifests. The file appears under its name only when complete (written as
`<name>.part`, then renamed): a half-written export is never mistaken for a good one.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from ..oci import mediatypes as mt
from ..oci.digest import Digest
from ..oci.errors import OCIError
from ..oci.manifest import Manifest, parse_manifest
from ..store import Store
from .errors import TransferError
from .names import familiar, literal, normalize
from .oci_layout import CONTAINERD_NAME, EDGECACHE_NAME, REF_NAME
from .plan import must_carry
from .progress import Progress, human_bytes

_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass(frozen=True)
class _Image:
    repo: str
    tag: str | None
    digest: Digest
    data: bytes
    manifest: Manifest
    config_child: Manifest | None  # the platform manifest docker format points at


@dataclass
class ExportSummary:
    images: list[tuple[str, Digest]] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0

    def line(self) -> str:
        return f"{len(self.images)} images, {self.blobs} blobs, {human_bytes(self.bytes)}"


def _parse_ref(ref: str) -> tuple[str, str]:
    """IMAGE -> (name, reference): `repo:tag`, `repo@sha256:...` or `repo` (latest)."""
    name, at, digest = ref.partition("@")
    if at:
        return name, digest
    image = literal(ref, "IMAGE")
    return image.repo, image.tag


class _Collector:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.blobs: dict[Digest, tuple[str, int]] = {}  # digest -> (repo, size), in order

    def _manifest(self, repo: str, reference: str, what: str) -> tuple[Digest, bytes, Manifest]:
        info = self.store.manifest(repo, reference)
        if info is None:
            raise TransferError(f"{what}: {repo}@{reference} is not in the store")
        data = info.path.read_bytes()
        try:
            return info.digest, data, parse_manifest(data, info.media_type)
        except OCIError as exc:
            raise TransferError(f"{what}: stored manifest {info.digest}: {exc.message}") from None

    def image(self, ref: str) -> _Image:
        name, reference = _parse_ref(ref)
        repo = name
        if self.store.resolve(repo, reference) is None:
            # Also the name as Docker reads it: `nginx:1.27` is docker.io/library/nginx here.
            repo = normalize(name, "IMAGE").repo
            if self.store.resolve(repo, reference) is None:
                tried = name if repo == name else f"{name} and {repo}"
                raise TransferError(f"{ref}: not in the store (looked for {tried})")
        digest, data, manifest = self._manifest(repo, reference, ref)
        self.blobs[digest] = (repo, len(data))
        config_child = None if manifest.is_index else manifest
        for child in manifest.manifests:
            _, child_data, child_manifest = self._manifest(
                repo, str(child.digest), f"{ref}: platform {_platform(child.platform)}"
            )
            self.blobs[child.digest] = (repo, len(child_data))
            self._blobs(repo, child_manifest, ref)
            if config_child is None or _platform(child.platform) == "linux/amd64":
                config_child = child_manifest
        self._blobs(repo, manifest, ref)
        tag = None if ":" in reference else reference
        return _Image(repo, tag, digest, data, manifest, config_child)

    def _blobs(self, repo: str, manifest: Manifest, ref: str) -> None:
        for desc in manifest.blob_children:
            if not must_carry(desc.media_type):
                continue
            if self.store.blob(repo, desc.digest) is None:
                raise TransferError(
                    f"{ref}: {desc.digest} ({desc.media_type}) is not in the store; pull the "
                    "image through this edgecache first"
                )
            self.blobs.setdefault(desc.digest, (repo, desc.size))


def _platform(platform: object) -> str:
    if isinstance(platform, dict):
        return f"{platform.get('os')}/{platform.get('architecture')}"
    return "unknown"


def _index(images: list[_Image]) -> bytes:
    manifests = []
    for image in images:
        desc: dict[str, object] = {
            "mediaType": image.manifest.media_type,
            "digest": str(image.digest),
            "size": len(image.data),
        }
        if image.tag is not None:
            full = f"{image.repo}:{image.tag}"
            desc["annotations"] = {REF_NAME: full, CONTAINERD_NAME: full, EDGECACHE_NAME: full}
        manifests.append(desc)
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests},
                      indent=2).encode()  # fmt: skip


def _docker_manifest(images: list[_Image]) -> bytes:
    entries: dict[Digest, dict[str, object]] = {}
    for image in images:
        target = image.config_child
        if target is None or target.config is None:
            continue
        entry = entries.setdefault(
            image.digest,
            {
                "Config": f"blobs/{target.config.digest.algorithm}/{target.config.digest.hex}",
                "RepoTags": [],
                "Layers": [f"blobs/{d.digest.algorithm}/{d.digest.hex}" for d in target.layers],
            },
        )
        if image.tag is not None:
            tags = entry["RepoTags"]
            assert isinstance(tags, list)
            tags.append(f"{familiar(image.repo)}:{image.tag}")
    return json.dumps(list(entries.values())).encode()


def _info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: the same images always give the same tar bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


class _Reading:
    def __init__(self, f: IO[bytes], progress: Progress) -> None:
        self.f, self.progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress.advance(len(data))
        return data


def export(
    data: Path,
    refs: list[str],
    output: Path,
    *,
    fmt: str = "oci",
    err: TextIO | None = None,
    tty: bool | None = None,
) -> ExportSummary:
    if fmt not in ("oci", "docker"):
        raise TransferError(f"--format {fmt!r}: expected oci or docker")
    if not (data / "index").is_dir():
        raise TransferError(f"{data} is not an edgecache data directory")
    store = Store.open(data)
    try:
        collector = _Collector(store)
        images = [collector.image(ref) for ref in refs]
        summary = ExportSummary(
            [(f"{i.repo}:{i.tag}" if i.tag else f"{i.repo}@{i.digest}", i.digest) for i in images]
        )
        total = sum(size for _, size in collector.blobs.values())
        progress = Progress(f"export {output.name}", total, out=err or sys.stderr, tty=tty)
        part = output.with_name(output.name + ".part")
        with tarfile.TarFile(part, "w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20) as tar:
            meta = [("oci-layout", _LAYOUT), ("index.json", _index(images))]
            if fmt == "docker":
                meta.append(("manifest.json", _docker_manifest(images)))
            for name, content in meta:
                tar.addfile(_info(name, len(content)), io.BytesIO(content))
            for digest, (_, size) in collector.blobs.items():
                path = store.layout.blob_path(digest)
                with open(path, "rb") as f:
                    tar.addfile(_info(f"blobs/{digest.algorithm}/{digest.hex}", size),
                                _Reading(f, progress))  # type: ignore[arg-type]  # fmt: skip
                summary.blobs += 1
                summary.bytes += size
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.rename(part, output)
        progress.finish()
        return summary
    finally:
        store.close()
