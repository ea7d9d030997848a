"""`edgecache export`: images from the store into one tar another node (or docker) can load.

The tar is an OCI image layout: manifests and blobs byte for byte as stored, so a preload
elsewhere yields the same digests. `--format docker` adds manifest.json (Config and Layers
pointing into blobs/), the shape `docker save` has written since Docker 25, which `docker load`
and `skopeo docker-archive:` read while `edgecache preload` still prefers index.json and keeps
the original manifests. The file appears under its name only when complete (written as
`<name>.part`, then renamed): a half-written export is never mistaken for a good one.

Referrers (signatures, SBOMs, attestations, edgecache's scan reports: manifests whose `subject`
names an exported manifest, an index's platform manifests included, and theirs in turn) travel
in the OCI format: their manifests and blobs go into blobs/ and index.json lists each one by a
plain descriptor (mediaType, digest, size, artifactType) without `ref.name`, as oras writes
them (oras-go's oci.Store lists untagged manifests so that referrers stay discoverable; the
image-layout spec makes index.json the entry point for "references and descriptors", and tools
that look up tags skip entries without one). A referrer the store does not hold whole (a proxied
signature whose layer was never pulled) is left out and counted; so are all of them with
`--format docker`: manifest.json has no place for them, and docker (25+) reads that tar's
index.json as its list of images. At most MAX_REFERRERS (plan.py) go into one export.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from collections import deque
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
from .oci_layout import CONTAINERD_NAME, EDGECACHE_NAME, MAX_DEPTH, REF_NAME
from .plan import MAX_REFERRERS, counted, must_carry
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
    ref: str = ""  # as the command line named it, for messages


@dataclass
class ExportSummary:
    images: list[tuple[str, Digest]] = field(default_factory=list)
    manifest_digests: frozenset[Digest] = frozenset()
    referrer_digests: frozenset[Digest] = frozenset()
    manifests: int = 0  # written so far, counted as preload counts them (plan.counted)
    blobs: int = 0
    referrers: int = 0
    bytes: int = 0  # everything written: manifests, configs and layers
    left_out: int = 0  # referrers --format docker cannot carry (counted, not read)
    incomplete: dict[Digest, str] = field(default_factory=dict)  # referrer -> what is missing

    def add(self, digest: Digest, size: int) -> None:
        if digest in self.referrer_digests:
            self.referrers += 1
        elif digest in self.manifest_digests:
            self.manifests += 1
        else:
            self.blobs += 1
        self.bytes += size

    def line(self) -> str:
        moved = counted(len(self.images), self.manifests, self.blobs, self.referrers)
        return f"{moved} ({human_bytes(self.bytes)})"


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
        self.manifests: set[Digest] = set()  # which of those are manifests (not referrers)
        # Referrers to write: digest -> their index.json descriptor, in the order found.
        self.referrers: dict[Digest, dict[str, object]] = {}
        self.incomplete: dict[Digest, str] = {}  # referrers left out: digest -> what is missing
        self.uncarried: set[Digest] = set()  # referrers counted, not read (--format docker)

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
        return _Image(repo, tag, digest, data, manifest, config_child, ref)

    def walk_referrers(self, images: list[_Image], *, carry: bool) -> None:
        """The referrers of every exported manifest and theirs in turn, breadth first, each
        repository's own (a referrer lives in the repository of its subject). `carry` reads
        them for the tar; without it they are only counted (`uncarried`)."""
        queue: deque[tuple[str, str, Digest]] = deque()
        for image in images:
            queue.append((image.ref, image.repo, image.digest))
            queue.extend((image.ref, image.repo, c.digest) for c in image.manifest.manifests)
        walked: set[tuple[str, Digest]] = set()
        while queue:
            ref, repo, subject = queue.popleft()
            if (repo, subject) in walked:
                continue
            walked.add((repo, subject))
            for found in self.store.referrers(repo, subject):
                try:
                    digest = Digest.parse(str(found.get("digest")))
                except OCIError as exc:
                    raise TransferError(
                        f"{ref}: the store's referrers of {subject} in {repo}: {exc.message}; "
                        "run `edgecache fsck`"
                    ) from None
                if not carry:
                    if digest not in self.manifests:
                        self.uncarried.add(digest)
                elif digest not in self.manifests and digest not in self.referrers:
                    if len(self.referrers) >= MAX_REFERRERS:
                        raise TransferError(
                            f"{ref}: more than {MAX_REFERRERS} referrers (signatures, SBOMs, "
                            "scan reports and theirs) to export, the limit of one export: "
                            "refused; export fewer images at a time"
                        )
                    children = self._referrer(repo, digest, subject)
                    if children is None:
                        continue
                    queue.extend((ref, repo, child) for child in children)
                queue.append((ref, repo, digest))
        for digest in [d for d in self.referrers if d in self.manifests]:
            del self.referrers[digest]  # inside a referrer index: travels as one of its manifests

    def _referrer(self, repo: str, digest: Digest, subject: Digest) -> list[Digest] | None:
        """Collect a referrer whole (its manifest, the manifests of a referrer that is an
        index, their blobs): the manifests below it, or None when the store lacks some of it
        (recorded in `incomplete`; nothing of it is collected)."""
        what = f"referrer {digest} of {subject}"
        if self.store.manifest(repo, str(digest)) is None:
            self.incomplete.setdefault(digest, f"{digest} is not in {repo}")
            return None
        _, data, manifest = self._manifest(repo, str(digest), what)
        found: dict[Digest, tuple[str, int]] = {digest: (repo, len(data))}
        children: list[Digest] = []
        missing = self._complete(repo, manifest, what, 0, found, children)
        if missing is not None:
            self.incomplete.setdefault(digest, missing)
            return None
        self.incomplete.pop(digest, None)
        for key, value in found.items():
            self.blobs.setdefault(key, value)
        self.manifests.update(children)  # a referrer index's manifests count as manifests
        desc: dict[str, object] = {
            "mediaType": manifest.media_type,
            "digest": str(digest),
            "size": len(data),
        }
        if manifest.effective_artifact_type is not None:
            desc["artifactType"] = manifest.effective_artifact_type
        self.referrers[digest] = desc
        return children

    def _complete(
        self,
        repo: str,
        manifest: Manifest,
        what: str,
        depth: int,
        found: dict[Digest, tuple[str, int]],
        children: list[Digest],
    ) -> str | None:
        """What `manifest` names into `found`; what the store lacks of it, if anything."""
        for child in manifest.manifests:
            if depth >= MAX_DEPTH:
                raise TransferError(f"{what}: indexes nested deeper than {MAX_DEPTH}: refused")
            if self.store.manifest(repo, str(child.digest)) is None:
                return f"{child.digest} is not in {repo}"
            _, data, child_manifest = self._manifest(
                repo, str(child.digest), f"{what}: manifest {child.digest}"
            )
            found[child.digest] = (repo, len(data))
            children.append(child.digest)
            missing = self._complete(repo, child_manifest, what, depth + 1, found, children)
            if missing is not None:
                return missing
        for desc in manifest.blob_children:
            if must_carry(desc.media_type):
                if self.store.blob(repo, desc.digest) is None:
                    return f"{desc.digest} ({desc.media_type}) is not in {repo}"
                found.setdefault(desc.digest, (repo, desc.size))
        return None

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


def _index(images: list[_Image], referrers: list[dict[str, object]]) -> bytes:
    manifests: list[dict[str, object]] = []
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
    manifests.extend(referrers)  # plain descriptors: no ref.name, never taken for an image
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
        collector.walk_referrers(images, carry=fmt == "oci")
        summary = ExportSummary(
            [(f"{i.repo}:{i.tag}" if i.tag else f"{i.repo}@{i.digest}", i.digest) for i in images],
            frozenset(collector.manifests),
            frozenset(collector.referrers),
            left_out=len(collector.uncarried),
            incomplete=dict(collector.incomplete),
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
    meta = [
        ("oci-layout", _LAYOUT),
        ("index.json", _index(images, list(collector.referrers.values()))),
    ]
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
