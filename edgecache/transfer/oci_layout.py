"""OCI image layouts (index.json + blobs/) -> the manifests and blobs they name, unchanged.

Each index.json entry is one image; an entry that is itself an index (multi-arch) is kept
whole, every platform manifest with it. Names come from, in order: `io.edgecache.image.name`
(written by `edgecache export`: a repository of this registry, taken literally), an
`org.opencontainers.image.ref.name` holding a full reference (`nginx:1.27`, normalised as
Docker would), `io.containerd.image.name` (what docker 25+ and ctr export write next to a bare
tag), or `--as`. A bare `ref.name` (`v1`, as umoci and skopeo `oci:dir:v1` write) is a tag and
still needs a repository from one of the others.

An entry with none of these names whose manifest has a `subject` is a referrer (a signature,
an SBOM, a scan report), as `edgecache export` and oras write them: it is imported untagged
next to its subject, never taken for an image. Referrers that index.json does not list (cosign
3 `save` lists only the image) are found among the blobs nothing else names: a manifest there
whose subject is a manifest of the input comes along too; an incomplete one there is left
alone, as any stray blob would be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..oci.digest import Digest
from ..oci.errors import OCIError
from ..oci.manifest import MAX_MANIFEST_SIZE, Descriptor, parse_manifest
from .errors import TransferError
from .names import ImageName, literal, normalize
from .plan import MAX_REFERRERS, ImagePlan, ManifestDoc, ReferrerPlan, must_carry, plural
from .spool import Inventory, Spooled, load_json, read_small

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
EDGECACHE_NAME = "io.edgecache.image.name"
# A platform manifest inside an index inside an index is already unusual; deeper is hostile.
MAX_DEPTH = 3
_NAMES = (EDGECACHE_NAME, REF_NAME, CONTAINERD_NAME)


def plans(
    inv: Inventory, rename: ImageName | None, lookup: StoreLookup
) -> tuple[list[ImagePlan], list[ReferrerPlan]]:
    """The images index.json names, and the referrers the layout holds (unordered: the
    importer places each after its subject)."""
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
    walker = _Walker(inv, lookup)
    images: list[tuple[str, Descriptor]] = []
    listed: list[tuple[str, Descriptor]] = []
    for i, desc in enumerate(entries):
        where = f"{inv.label}: index.json manifests[{i}]"
        named = any((desc.annotations or {}).get(key) for key in _NAMES)
        if named or walker.manifest(desc, where).manifest.subject is None:
            images.append((where, desc))
        else:
            listed.append((where, desc))
    if rename is not None and not images and len(listed) == 1:
        images, listed = listed, []  # one referrer exported by digest, named with --as
    if not images:
        raise TransferError(
            f"{inv.label}: index.json lists no images, only {plural(len(listed), 'referrer')} "
            "(unnamed manifests with a subject)"
        )
    if rename is not None and len(images) != 1:
        raise TransferError(
            f"{inv.label}: --as names one image, but index.json lists {len(images)}"
        )
    out = []
    for where, desc in images:
        names = (rename,) if rename is not None else (_name(desc.annotations or {}, where),)
        top, children, blobs = walker.image(desc, where)
        out.append(ImagePlan(where, names, top, children, blobs))
    subjects = {doc.digest for plan in out for doc in (plan.top, *plan.children)}
    referrers: dict[Digest, ReferrerPlan] = {}
    for where, desc in listed:
        if desc.digest in subjects or desc.digest in referrers:
            continue  # listed twice, or named as an image too
        _limit(inv, len(referrers))
        top, children, blobs = walker.image(desc, where)
        referrers[desc.digest] = ReferrerPlan(where, top, children, blobs)
    subjects.update(doc.digest for r in referrers.values() for doc in (r.top, *r.children))
    found = [*referrers.values(), *_unlisted(inv, walker, subjects, len(referrers))]
    # A referrer inside a referrer index goes with the index, as one of its manifests.
    inside = {child.digest for plan in found for child in plan.children}
    return out, [plan for plan in found if plan.top.digest not in inside]


def _limit(inv: Inventory, count: int) -> None:
    if count >= MAX_REFERRERS:
        raise TransferError(
            f"{inv.label}: more than {MAX_REFERRERS} referrers (signatures, SBOMs, scan "
            "reports and theirs), the limit of one import: refused"
        )


def _unlisted(
    inv: Inventory, walker: _Walker, subjects: set[Digest], listed: int
) -> list[ReferrerPlan]:
    """Referrers among the blobs nothing walked so far names (index.json may leave them out):
    of the input's manifests and, in turn, of each other. `subjects` grows with them."""
    candidates = {
        digest: spooled
        for digest, spooled in inv.by_digest.items()
        if digest not in walker.seen and spooled.size <= MAX_MANIFEST_SIZE
    }
    parsed: dict[Digest, ManifestDoc | None] = {}
    found: list[ReferrerPlan] = []
    while True:
        new: list[tuple[ManifestDoc, Digest, Spooled]] = []
        for digest, spooled in candidates.items():
            if digest in walker.seen or digest in subjects:
                continue
            if digest not in parsed:
                parsed[digest] = _maybe_manifest(spooled)
            doc = parsed[digest]
            subject = doc.manifest.subject if doc is not None else None
            if doc is not None and subject is not None and subject.digest in subjects:
                new.append((doc, subject.digest, spooled))
        if not new:
            return found
        for doc, subject_digest, spooled in new:
            if doc.digest in walker.seen:
                continue  # a manifest of a referrer index found in this same pass
            _limit(inv, listed + len(found))
            where = (
                f"{inv.label}: blobs/{doc.digest.algorithm}/{doc.digest.hex} (a referrer of "
                f"{subject_digest} that index.json does not list)"
            )
            desc = Descriptor(doc.manifest.media_type, doc.digest, spooled.size)
            try:
                top, children, blobs = walker.image(desc, where)
            except TransferError:
                del candidates[doc.digest]  # incomplete: a stray blob like any other
                continue
            found.append(ReferrerPlan(where, top, children, blobs))
            subjects.update(d.digest for d in (top, *children))


def _maybe_manifest(spooled: Spooled) -> ManifestDoc | None:
    """A stray blob as a manifest with a subject, when it is one."""
    data = read_small(spooled, MAX_MANIFEST_SIZE, f"blob {spooled.digest}")
    if not data.lstrip().startswith(b"{") or b'"subject"' not in data:
        return None
    try:
        manifest = parse_manifest(data, None)
    except OCIError:
        return None
    return ManifestDoc(spooled.digest, data, manifest)


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
        self.seen: set[Digest] = set()  # every digest walked: what the input's graph names
        self._docs: dict[tuple[Digest, str], ManifestDoc] = {}

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
        self.seen.add(desc.digest)
        return spooled

    def manifest(self, desc: Descriptor, what: str) -> ManifestDoc:
        spooled = self._content(desc, what)
        key = (desc.digest, desc.media_type)
        if key in self._docs:
            return self._docs[key]
        data = read_small(spooled, MAX_MANIFEST_SIZE, f"{what}: manifest {desc.digest}")
        doc = ManifestDoc.parse(data, desc.media_type, f"{what}: manifest {desc.digest}")
        if doc.digest != desc.digest:
            raise TransferError(f"{what}: manifest bytes have digest {doc.digest}: refused")
        self._docs[key] = doc
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
        if depth > MAX_DEPTH:
            raise TransferError(f"{where}: indexes nested deeper than {MAX_DEPTH}: refused")
        doc = self.manifest(desc, where)
        for i, child in enumerate(doc.manifest.manifests):
            spot = f"{where} -> manifests[{i}]"
            child_doc = self._walk(child, spot, depth + 1, children, blobs)
            if child_doc not in children:
                children.append(child_doc)
        for i, blob in enumerate(doc.manifest.blob_children):
            if must_carry(blob.media_type):
                blobs.setdefault(blob.digest, self._content(blob, f"{where} -> blob {i}"))
        return doc
