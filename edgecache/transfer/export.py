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

from ..config import Config, load
from ..oci import mediatypes as mt
from ..oci.digest import Digest
from ..oci.errors import OCIError
from ..oci.manifest import Manifest, parse_manifest
from ..store import Store
from ..usererror import open_store, output_file_error, writable_output
from .errors import TransferError
from .names import familiar, literal, normalize, store_repository
from .oci_layout import CONTAINERD_NAME, EDGECACHE_NAME, REF_NAME
from .plan import counted, must_carry
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
    manifest_digests: frozenset[Digest] = frozenset()
    manifests: int = 0  # written so far, counted as preload counts them (plan.counted)
    blobs: int = 0
    bytes: int = 0  # everything written: manifests, configs and layers

    def add(self, digest: Digest, size: int) -> None:
        if digest in self.manifest_digests:
            self.manifests += 1
        else:
            self.blobs += 1
        self.bytes += size

    def line(self) -> str:
        return (
            f"{counted(len(self.images), self.manifests, self.blobs)} ({human_bytes(self.bytes)})"
        )


def _parse_ref(ref: str) -> tuple[str, str]:
    """IMAGE -> (name, reference): `repo:tag`, `repo@sha256:...` or `repo` (latest)."""
    name, at, digest = ref.partition("@")
    if at:
        return name, digest
    image = literal(ref, "IMAGE")
    return image.repo, image.tag


def _candidates(config: Config, name: str) -> list[str]:
    """Where IMAGE may be stored, most literal first: as given, through the config's
    upstreams (a project path or a registry host:port), as Docker reads the name."""
    docker = normalize(name, "IMAGE").repo
    found = [name, store_repository(config, name), docker, store_repository(config, docker)]
    return list(dict.fromkeys(found))


class _Collector:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.blobs: dict[Digest, tuple[str, int]] = {}  # digest -> (repo, size), in order
        self.manifests: set[Digest] = set()  # which of those are manifests

    def _manifest(self, repo: str, reference: str, what: str) -> tuple[Digest, bytes, Manifest]:
        info = self.store.manifest(repo, reference)
        if info is None:
            raise TransferError(f"{what}: {repo}@{reference} is not in the store")
        data = info.path.read_bytes()
        if not info.digest.verify(data):
            raise TransferError(_corrupt(what, info.digest))
        try:
            return info.digest, data, parse_manifest(data, info.media_type)
        except OCIError as exc:
            raise TransferError(f"{what}: stored manifest {info.digest}: {exc.message}") from None

    def image(self, ref: str) -> _Image:
        name, reference = _parse_ref(ref)
        tried = _candidates(self.config, name)
        repo = next((r for r in tried if self.store.resolve(r, reference) is not None), None)
        if repo is None:
            looked = ", ".join(tried[:-1]) + " and " + tried[-1] if len(tried) > 1 else tried[0]
            raise TransferError(f"{ref}: not in the store (looked for {looked})")
        digest, data, manifest = self._manifest(repo, reference, ref)
        self.blobs[digest] = (repo, len(data))
        self.manifests.add(digest)
        config_child = None if manifest.is_index else manifest
        for child in manifest.manifests:
            _, child_data, child_manifest = self._manifest(
                repo, str(child.digest), f"{ref}: platform {_platform(child.platform)}"
            )
            self.blobs[child.digest] = (repo, len(child_data))
            self.manifests.add(child.digest)
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


def _corrupt(what: str, digest: Digest) -> str:
    return (
        f"{what}: {digest} in the store does not match its digest (corrupt on disk); nothing "
        "was exported. The server's scrub quarantines it (`edgecache status`), or run "
        "`edgecache fsck`"
    )


class _Reading:
    """A stored blob as the tar reads it: counted for the progress line, and hashed, so that
    an export never carries bytes that do not match their name to another site."""

    def __init__(self, f: IO[bytes], progress: Progress, digest: Digest) -> None:
        self.f, self.progress, self.digest = f, progress, digest
        self.hasher = digest.hasher()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hasher.update(data)
        self.progress.advance(len(data))
        return data

    def check(self) -> None:
        if self.hasher.hexdigest() != self.digest.hex:
            raise TransferError(_corrupt("export", self.digest))


def export(
    data: Path,
    refs: list[str],
    output: Path,
    *,
    fmt: str = "oci",
    err: TextIO | None = None,
    tty: bool | None = None,
    config: Config | None = None,
) -> ExportSummary:
    if fmt not in ("oci", "docker"):
        raise TransferError(f"--format {fmt!r}: expected oci or docker")
    writable_output(output)  # before minutes of work, not after
    store = open_store(data, existing=True)
    try:
        collector = _Collector(store, config if config is not None else load(env={}))
        images = [collector.image(ref) for ref in refs]
        summary = ExportSummary(
            [(f"{i.repo}:{i.tag}" if i.tag else f"{i.repo}@{i.digest}", i.digest) for i in images],
            frozenset(collector.manifests),
        )
        total = sum(size for _, size in collector.blobs.values())
        progress = Progress(f"export {output.name}", total, out=err or sys.stderr, tty=tty)
        # A pipe, a device or a symlink (-o /dev/stdout, a fifo read by `docker load`) is
        # written straight through: renaming a finished file over it would replace the link
        # or the fifo itself (/dev/stdout is a symlink to /proc/self/fd/1).
        stream = output.is_symlink() or (output.exists() and not output.is_file())
        part = output if stream else output.with_name(output.name + ".part")
        try:
            with progress, _open_tar(part, stream) as tar:
                _write(tar, store, images, collector, fmt, progress, summary)
            if not stream:
                with open(part, "rb") as f:
                    os.fsync(f.fileno())
                os.rename(part, output)
        except BaseException as exc:  # Ctrl-C too: no .part left to be mistaken for an export
            if not stream:
                part.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.filename in (str(part), str(output), None):
                raise output_file_error(output, exc) from None
            raise
        return summary
    finally:
        store.close()


def _open_tar(path: Path, stream: bool) -> tarfile.TarFile:
    if stream:  # "w|": a pipe cannot tell() where it is, which the random-access writer asks
        return tarfile.open(path, "w|", format=tarfile.PAX_FORMAT)
    return tarfile.TarFile(path, "w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20)


def _write(
    tar: tarfile.TarFile,
    store: Store,
    images: list[_Image],
    collector: _Collector,
    fmt: str,
    progress: Progress,
    summary: ExportSummary,
) -> None:
    meta = [("oci-layout", _LAYOUT), ("index.json", _index(images))]
    if fmt == "docker":
        meta.append(("manifest.json", _docker_manifest(images)))
    for name, content in meta:
        tar.addfile(_info(name, len(content)), io.BytesIO(content))
    for digest, (_, size) in collector.blobs.items():
        path = store.layout.blob_path(digest)
        with open(path, "rb") as f:
            reading = _Reading(f, progress, digest)
            tar.addfile(_info(f"blobs/{digest.algorithm}/{digest.hex}", size),
                        reading)  # type: ignore[arg-type]  # fmt: skip
            reading.check()
        summary.add(digest, size)
