"""Small archives built in Python for the unit tests: OCI layouts and docker-save tars.

Real tools (skopeo, umoci) make the archives of the integration tests; these are for the cases
no tool would write (hostile entries) and for fast checks of the formats' corners.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(content: bytes, name: str = "file.bin") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def config_for(layers: list[bytes], arch: str = "amd64") -> bytes:
    return json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [digest(layer) for layer in layers]},
        }
    ).encode()


@dataclass
class Entries:
    """Tar entries in order: (name, bytes) files plus raw TarInfo specials."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    specials: list[tarfile.TarInfo] = field(default_factory=list)

    def add(self, name: str, data: bytes) -> None:
        self.files.append((name, data))

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for special in self.specials:
                tar.addfile(special)
            for name, data in self.files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def image_manifest(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": digest(layer), "size": len(layer)}
                for layer in layers
            ],
        }
    ).encode()


def oci_layout(
    images: dict[str, list[bytes]], *, ref_names: bool = True
) -> tuple[Entries, dict[str, str]]:
    """An OCI layout with one image per ref name -> layers; returns entries and name->digest."""
    entries = Entries()
    entries.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    descriptors = []
    digests = {}
    blobs: dict[str, bytes] = {}
    for ref, layers in images.items():
        config = config_for(layers)
        manifest = image_manifest(config, layers)
        for blob in (config, manifest, *layers):
            blobs[digest(blob)] = blob
        desc: dict[str, object] = {
            "mediaType": OCI_MANIFEST,
            "digest": digest(manifest),
            "size": len(manifest),
        }
        if ref_names:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        descriptors.append(desc)
        digests[ref] = digest(manifest)
    entries.add("index.json", json.dumps({"schemaVersion": 2, "manifests": descriptors}).encode())
    for d, blob in blobs.items():
        entries.add(f"blobs/sha256/{d.split(':')[1]}", blob)
    return entries, digests


def multiarch_layout(ref: str) -> tuple[Entries, str, list[str]]:
    """A layout whose one entry is an index of two platform images."""
    entries = Entries()
    entries.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    children = []
    child_digests = []
    for arch in ("amd64", "arm64"):
        layer = layer_tar(f"{arch} payload".encode() * 100)
        config = config_for([layer], arch)
        manifest = image_manifest(config, [layer])
        for blob in (layer, config, manifest):
            entries.add(f"blobs/sha256/{digest(blob).split(':')[1]}", blob)
        children.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest(manifest),
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
        child_digests.append(digest(manifest))
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    entries.add(f"blobs/sha256/{digest(index).split(':')[1]}", index)
    top = {
        "mediaType": OCI_INDEX,
        "digest": digest(index),
        "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": ref},
    }
    entries.add("index.json", json.dumps({"schemaVersion": 2, "manifests": [top]}).encode())
    return entries, digest(index), child_digests


def docker_save(
    images: dict[str, list[bytes]], *, legacy_links: bool = False, manifest_last: bool = True
) -> Entries:
    """A docker-save archive; legacy_links writes <id>/layer.tar symlinks like skopeo does."""
    entries = Entries()
    manifest = []
    for ref, layers in images.items():
        config = config_for(layers)
        config_name = f"{digest(config).split(':')[1]}.json"
        entries.add(config_name, config)
        paths = []
        for i, layer in enumerate(layers):
            name = f"{digest(layer).split(':')[1]}.tar"
            if (name, layer) not in entries.files:
                entries.add(name, layer)
            if legacy_links:
                link = tarfile.TarInfo(f"id{i}{ref.replace(':', '_').replace('/', '_')}/layer.tar")
                link.type = tarfile.SYMTYPE
                link.linkname = f"../{name}"
                entries.specials.append(link)
                paths.append(link.name)
            else:
                paths.append(name)
        manifest.append({"Config": config_name, "RepoTags": [ref], "Layers": paths})
    data = json.dumps(manifest).encode()
    if manifest_last:
        entries.add("manifest.json", data)
    else:
        entries.files.insert(0, ("manifest.json", data))
    return entries


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
