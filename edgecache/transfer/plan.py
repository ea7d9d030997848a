"""What an input holds, as the store will receive it: images with their manifests and blobs,
and the referrers (signatures, SBOMs, scan reports) that travel with them."""

from __future__ import annotations

from dataclasses import dataclass

from ..oci.digest import Digest
from ..oci.errors import OCIError
from ..oci.manifest import Manifest, parse_manifest
from .errors import TransferError
from .names import ImageName
from .spool import Spooled


@dataclass(frozen=True)
class ManifestDoc:
    digest: Digest
    data: bytes
    manifest: Manifest

    @classmethod
    def parse(cls, data: bytes, media_type: str | None, what: str) -> ManifestDoc:
        try:
            manifest = parse_manifest(data, media_type)
        except OCIError as exc:
            raise TransferError(f"{what}: {exc.message}") from None
        return cls(Digest.of_bytes(data), data, manifest)


@dataclass(frozen=True)
class ImagePlan:
    origin: str  # where in the input it was found, for messages
    names: tuple[ImageName, ...]
    top: ManifestDoc
    children: tuple[ManifestDoc, ...]  # platform manifests of an index, stored first
    blobs: tuple[Spooled, ...]  # configs and layers, each once


@dataclass(frozen=True)
class ReferrerPlan:
    """A manifest whose `subject` names a manifest of the input (or of the store): stored
    untagged in the repositories its subject is stored in, after the subject."""

    origin: str
    top: ManifestDoc
    children: tuple[ManifestDoc, ...]  # manifests of a referrer that is an index
    blobs: tuple[Spooled, ...]

    @property
    def subject(self) -> Digest:
        assert self.top.manifest.subject is not None
        return self.top.manifest.subject.digest


# Referrer manifests one export writes or one preload imports. Real images carry a handful
# (a signature, an SBOM, an attestation per platform, a scan report); a thousand is already a
# store in trouble, and the walk reads each of them from disk.
MAX_REFERRERS = 1000


# Foreign (non-distributable) layers are fetched from elsewhere by design; a manifest may name
# them without the archive carrying them (the store makes the same exception).
_NONDISTRIBUTABLE = ("foreign", "nondistributable")


def must_carry(media_type: str) -> bool:
    return not any(marker in media_type for marker in _NONDISTRIBUTABLE)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def counted(images: int, manifests: int, blobs: int, referrers: int = 0) -> str:
    """How preload and export count what they moved, in the same words.

    Manifests are image manifests and indexes with their platform manifests; blobs are
    configs and layers; referrers are manifests that travel because their `subject` is one of
    those (their configs and layers count as blobs). Each is counted once however many images
    share it; no referrers, no mention.
    """
    line = f"{plural(images, 'image')}: {plural(manifests, 'manifest')}, {plural(blobs, 'blob')}"
    return line + (f", {plural(referrers, 'referrer')}" if referrers else "")
