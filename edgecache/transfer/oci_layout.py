"""OCI image layouts (index.json + blobs/) -> the manifests and blobs they name, unchanged.

Each index.json entry is one image; an entry that is itself an index (multi-arch) is kept
whole, every platform manifest with it. Names come from, in order: `io.edgecache.image.name`
(written by `edgecache export`: a repository of this registry, taken literally), an
`org.opencontainers.image.ref.name` holding a full reference (`nginx:1.27`, normalised as
Docker would), `io.containerd.image.name` (what docker 25+ and ctr export write next to a bare
tag), or `--as`. A bare `ref.name` (`v1`, as umoci and skopeo `oci:dir:v1` write) is a tag and
still needs a repository from one of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..oci.digest import Digest
from ..oci.manifest import MAX_MANIFEST_SIZE, Descriptor
from .errors import TransferError
from .names import ImageName, literal, normalize
from .plan import ImagePlan, ManifestDoc, must_carry
from .spool import Inventory, Spooled, load_json, read_small

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
EDGECACHE_NAME = "io.edgecache.image.name"
# A platform manifest inside an index inside an index is already unusual; deeper is hostile.
_MAX_DEPTH = 3


def plans(inv: Inventory, rename: ImageName | None, lookup: StoreLookup) -> list[ImagePlan]:
    layout = inv.meta.get("oci-layout")
    if layout is not None:
        version = load_json(layout, f"{inv.label}: oci-layout")
        if not isinstance(version, dict) or "imageLayoutVersion" not in version:
            raise TransferError(f"{inv.label}: oci-layout: imageLayoutVersion is missing")
    index = ManifestDoc.parse(inv.meta["index.json"], None, f"{inv.label}: index.json")
    if not index.manifest.is_index:
        raise TransferError(f"{inv.label}: index.json is not an image index")
    entries = index.manifest.manifests
    if not entries:
        raise TransferError(f"{inv.label}: index.json lists no images")
    if rename is not None and len(entries) != 1:
        raise TransferError(
            f"{inv.label}: --as names one image, but index.json lists {len(entries)}"
        )
    walker = _Walker(inv, lookup)
    out = []
    for i, desc in enumerate(entries):
        where = f"{inv.label}: index.json manifests[{i}]"
        names = (rename,) if rename is not None else (_name(desc.annotations or {}, where),)
        top, children, blobs = walker.image(desc, where)
        out.append(ImagePlan(where, names, top, children, blobs))
    return out


def _name(annotations: Mapping[str, str], where: str) -> ImageName:
    own = annotations.get(EDGECACHE_NAME)
    if own:
        return literal(own, f"{where}: {EDGECACHE_NAME}")
    ref = annotations.get(REF_NAME, "")
    if "/" in ref or ":" in ref:
        return normalize(ref, f"{where}: {REF_NAME}")
    full = annotations.get(CONTAINERD_NAME)
    if full:
        name = normalize(full, f"{where}: {CONTAINERD_NAME}")
        return ImageName(name.repo, ref or name.tag)
    if ref:
        raise TransferError(
            f"{where}: {REF_NAME} is the bare tag {ref!r} with no repository name; "
            "name the image with --as NAME:TAG"
        )
    raise TransferError(f"{where} has no {REF_NAME} annotation; name it with --as NAME:TAG")


# Content the store already has may be left out of a layout (an incremental transfer).
StoreLookup = Callable[[Digest], Spooled | None]


class _Walker:
    def __init__(self, inv: Inventory, lookup: StoreLookup) -> None:
        self.inv = inv
        self.lookup = lookup

    def _content(self, desc: Descriptor, what: str) -> Spooled:
        spooled = self.inv.by_digest.get(desc.digest) or self.lookup(desc.digest)
        if spooled is None:
            raise TransferError(
                f"{what} names {desc.digest} ({desc.media_type}), which is neither in the "
                "layout nor in the store: refused"
            )
        if spooled.size != desc.size:
            raise TransferError(
                f"{what}: {desc.digest} is {spooled.size} bytes, the descriptor says "
                f"{desc.size}: refused"
            )
        return spooled

    def _manifest(self, desc: Descriptor, what: str) -> ManifestDoc:
        spooled = self._content(desc, what)
        data = read_small(spooled, MAX_MANIFEST_SIZE, f"{what}: manifest {desc.digest}")
        doc = ManifestDoc.parse(data, desc.media_type, f"{what}: manifest {desc.digest}")
        if doc.digest != desc.digest:
            raise TransferError(f"{what}: manifest bytes have digest {doc.digest}: refused")
        return doc

    def image(
        self, desc: Descriptor, where: str
    ) -> tuple[ManifestDoc, tuple[ManifestDoc, ...], tuple[Spooled, ...]]:
        children: list[ManifestDoc] = []
        blobs: dict[Digest, Spooled] = {}
        top = self._walk(desc, where, 0, children, blobs)
        return top, tuple(children), tuple(blobs.values())

    def _walk(
        self,
        desc: Descriptor,
        where: str,
        depth: int,
        children: list[ManifestDoc],
        blobs: dict[Digest, Spooled],
    ) -> ManifestDoc:
        if depth > _MAX_DEPTH:
            raise TransferError(f"{where}: indexes nested deeper than {_MAX_DEPTH}: refused")
        doc = self._manifest(desc, where)
        for i, child in enumerate(doc.manifest.manifests):
            spot = f"{where} -> manifests[{i}]"
            child_doc = self._walk(child, spot, depth + 1, children, blobs)
            if child_doc not in children:
                children.append(child_doc)
        for i, blob in enumerate(doc.manifest.blob_children):
            if must_carry(blob.media_type):
                blobs.setdefault(blob.digest, self._content(blob, f"{where} -> blob {i}"))
        return doc
