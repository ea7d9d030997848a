"""`docker save` archives (manifest.json) -> registry manifests.

docker save keeps each layer as the uncompressed tar whose digest is the config's diff_id and
drops the compressed blobs and the manifest the image was pulled with. Re-compressing to get
the `docker push` form (tar.gzip layers) would cost a CPU-bound pass over every byte, and gzip
output is not reproducible across implementations, so the digests would differ from any other
node's import of the same archive. The layers are therefore kept byte for byte with the schema2
media type for uncompressed layers, `application/vnd.docker.image.rootfs.diff.tar`, which
containerd, skopeo and docker pull accept: digests equal diff_ids, an import is repeatable on
every node, and `export --format docker` round-trips byte-identically. Layers that arrive
gzip-compressed (some tools write them) keep their bytes and get the tar.gzip type. The
manifest is serialised as distribution does (3-space indent, field order), so the same archive
always yields the same manifest digest.
"""

from __future__ import annotations

import gzip
import hashlib
import json

from ..oci import mediatypes as mt
from ..oci.digest import Digest
from ..oci.errors import DigestInvalid
from .archive import compression_of
from .errors import TransferError
from .names import ImageName, normalize
from .plan import ImagePlan, ManifestDoc
from .spool import MAX_METADATA, Inventory, Spooled, load_json, read_small

LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _str_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TransferError(f"{what}: expected an array of strings")
    return list(value)


def _head(spooled: Spooled) -> bytes:
    with open(spooled.path, "rb") as f:
        return f.read(8)


def _gunzip_digest(spooled: Spooled, what: str) -> Digest:
    hasher = hashlib.sha256()
    try:
        with gzip.open(spooled.path, "rb") as f:
            while block := f.read(1 << 20):
                hasher.update(block)
    except (EOFError, OSError) as exc:
        raise TransferError(f"{what}: damaged gzip layer: {exc}") from None
    return Digest.from_hasher(hasher)


def _layer(spooled: Spooled, diff_id: Digest, what: str) -> dict[str, object]:
    kind = compression_of(_head(spooled))
    if kind == "zstd":
        raise TransferError(f"{what}: zstd layers have no docker schema2 media type")
    uncompressed = spooled.digest if kind == "none" else _gunzip_digest(spooled, what)
    if uncompressed != diff_id:
        raise TransferError(
            f"{what}: layer content has digest {uncompressed}, but the config's diff_id is "
            f"{diff_id}: refused"
        )
    media_type = LAYER_TAR if kind == "none" else LAYER_GZIP
    return {"mediaType": media_type, "size": spooled.size, "digest": str(spooled.digest)}


def plans(inv: Inventory, rename: ImageName | None) -> list[ImagePlan]:
    what = f"{inv.label}: manifest.json"
    entries = load_json(inv.meta["manifest.json"], what)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TransferError(f"{what}: expected an array of image objects")
    if rename is not None and len(entries) != 1:
        raise TransferError(
            f"{what}: --as names one image, but the archive holds {len(entries)} images"
        )
    return [_plan(inv, entry, f"{what}[{i}]", rename) for i, entry in enumerate(entries)]


def _plan(
    inv: Inventory, entry: dict[str, object], where: str, rename: ImageName | None
) -> ImagePlan:
    config_path = entry.get("Config")
    if not isinstance(config_path, str):
        raise TransferError(f"{where}.Config: required string is missing")
    config = inv.resolve(config_path)
    if config is None:
        raise TransferError(f"{where}.Config names {config_path!r}, which is not in the archive")
    config_obj = load_json(read_small(config, MAX_METADATA, config_path), config_path)
    rootfs = config_obj.get("rootfs") if isinstance(config_obj, dict) else None
    raw_ids = _str_list(
        rootfs.get("diff_ids") if isinstance(rootfs, dict) else None,
        f"{inv.label}: {config_path}: rootfs.diff_ids",
    )
    layer_paths = _str_list(entry.get("Layers"), f"{where}.Layers")
    if len(layer_paths) != len(raw_ids):
        raise TransferError(
            f"{where}: {len(layer_paths)} layers but the config lists {len(raw_ids)} diff_ids"
        )
    layers: list[dict[str, object]] = []
    blobs: dict[Digest, Spooled] = {config.digest: config}
    for i, (path, raw_id) in enumerate(zip(layer_paths, raw_ids, strict=True)):
        spot = f"{where}.Layers[{i}] {path!r}"
        spooled = inv.resolve(path)
        if spooled is None:
            raise TransferError(f"{spot} is not in the archive")
        try:
            diff_id = Digest.parse(raw_id)
        except DigestInvalid as exc:
            raise TransferError(f"{config_path}: rootfs.diff_ids[{i}]: {exc.message}") from None
        layers.append(_layer(spooled, diff_id, spot))
        blobs.setdefault(spooled.digest, spooled)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {
            "mediaType": mt.DOCKER_CONTAINER_CONFIG,
            "size": config.size,
            "digest": str(config.digest),
        },
        "layers": layers,
    }
    data = json.dumps(manifest, indent=3).encode()
    doc = ManifestDoc.parse(data, mt.DOCKER_MANIFEST, where)
    return ImagePlan(where, _names(entry, where, rename), doc, (), tuple(blobs.values()))


def _names(entry: dict[str, object], where: str, rename: ImageName | None) -> tuple[ImageName, ...]:
    if rename is not None:
        return (rename,)
    tags = entry.get("RepoTags") or []
    refs = _str_list(tags, f"{where}.RepoTags")
    if not refs:
        raise TransferError(f"{where} has no RepoTags (saved by id); name it with --as NAME:TAG")
    return tuple(normalize(ref, f"{where}.RepoTags") for ref in refs)
