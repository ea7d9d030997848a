"""Cosign signatures made the way `cosign sign --key` makes them, with `cryptography`.

Not cosign (a Go binary that cannot be installed here): the same bytes, written from cosign's
and sigstore's sources so edgecache's verifier (edgecache/scan/cosign.py) is tested against
what cosign produces rather than against its own reading of it. The constants below are
written out again on purpose, not imported from edgecache. Sources:

- sigstore/sigstore pkg/signature/payload/payload.go: the payload is
  `json.Marshal(SimpleContainerImage{Critical{Identity{DockerReference}, Image{
  DockerManifestDigest}, Type: "cosign container image signature"}, Optional})`: Go writes
  struct fields in declaration order, compact, and `"optional":null` when there are no
  annotations (no omitempty); map keys (the optional annotations) sorted.
- sigstore/cosign pkg/oci/static/signature.go + options.go: one layer per signature, media type
  `application/vnd.dev.cosign.simplesigning.v1+json` (pkg/types/media.go), the base64 signature
  in the layer annotation `dev.cosignproject.cosign/signature`, config media type
  `application/vnd.oci.image.config.v1+json`.
- The signature "image" is go-containerregistry's empty image with the layers appended: an OCI
  image manifest `{"schemaVersion":2,"mediaType":...,"config":{...},"layers":[...]}`
  (descriptor fields mediaType, size, digest, annotations) and the config
  `{"architecture":"","created":"0001-01-01T00:00:00Z","history":[...],"os":"","rootfs":
  {"type":"layers","diff_ids":[<payload digests>]},"config":{}}` (one history entry per layer;
  the diff ID of a static layer is the payload's sha256).
- The tag: `sha256-<hex>.sig` (pkg/oci/remote/remote.go `normalize`, options.go
  `SignatureTagSuffix`).
- Signing (sigstore/sigstore pkg/signature): ECDSA signs the SHA-256 of the payload and writes
  the ASN.1 DER signature (`ecdsa.SignASN1`); P-384/P-521 keys loaded with cosign's defaults
  (algorithm_registry.go) hash with SHA-384/SHA-512 instead: pass `hash=`; Ed25519 signs the
  payload bytes (pure Ed25519); RSA is PKCS#1 v1.5 over SHA-256. The signature is standard
  base64, padded.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

_CURVES: dict[str, ec.EllipticCurve] = {
    "ecdsa-p256": ec.SECP256R1(),
    "ecdsa-p384": ec.SECP384R1(),
    "ecdsa-p521": ec.SECP521R1(),
}
KEY_KINDS = (*_CURVES, "ed25519", "rsa-2048", "rsa-3072", "rsa-4096")


def _go_json(value: Any) -> bytes:
    """json.Marshal's bytes for the dicts built here (keys already in Go's order)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # encoding/json escapes <, > and & for HTML safety.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def public_pem(private_key: PrivateKey) -> bytes:
    """The `cosign.pub` of a private key: PEM SubjectPublicKeyInfo ('PUBLIC KEY')."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def new_key(kind: str = "ecdsa-p256") -> tuple[PrivateKey, bytes]:
    """A fresh key pair (`cosign generate-key-pair` makes ecdsa-p256): (private, public PEM)."""
    private_key: PrivateKey
    if kind in _CURVES:
        private_key = ec.generate_private_key(_CURVES[kind])
    elif kind == "ed25519":
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif kind.startswith("rsa-"):
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    else:
        raise ValueError(f"unknown key kind {kind!r} (one of {', '.join(KEY_KINDS)})")
    return private_key, public_pem(private_key)


def simple_signing_payload(
    image_digest: str,
    docker_reference: str,
    optional: Mapping[str, Any] | None = None,
    *,
    type_: str = COSIGN_SIGNATURE_TYPE,
) -> bytes:
    """The payload `cosign sign` signs for `docker_reference@image_digest` (`-a k=v` claims in
    `optional`)."""
    return _go_json(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": image_digest},
                "type": type_,
            },
            "optional": None if optional is None else dict(sorted(optional.items())),
        }
    )


def sign_payload(
    payload: bytes, private_key: PrivateKey, *, hash: hashes.HashAlgorithm | None = None
) -> str:
    """The base64 signature cosign writes into the annotation for `payload`."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        raw = private_key.sign(payload, ec.ECDSA(hash or hashes.SHA256()))
    elif isinstance(private_key, ed25519.Ed25519PrivateKey):
        raw = private_key.sign(payload)
    else:
        raw = private_key.sign(payload, padding.PKCS1v15(), hash or hashes.SHA256())
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class SignatureArtifact:
    """What cosign pushes for one image: the `.sig` tag, its manifest and its blobs."""

    image_digest: str
    layers: tuple[tuple[bytes, str], ...]  # (payload, base64 signature), in manifest order
    config: bytes
    manifest: bytes
    tag: str
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> content (config too)

    @property
    def payload(self) -> bytes:
        """The last (newest) signature's payload."""
        return self.layers[-1][0]

    @property
    def signature_b64(self) -> str:
        return self.layers[-1][1]

    @property
    def manifest_digest(self) -> str:
        return _digest(self.manifest)

    @property
    def manifest_json(self) -> dict[str, Any]:
        return json.loads(self.manifest)

    @property
    def payloads(self) -> list[tuple[bytes, str]]:
        """What the verifier is given: (payload, base64 signature) per layer."""
        return list(self.layers)


def signature_tag(image_digest: str) -> str:
    algorithm, _, hex_ = image_digest.partition(":")
    return f"{algorithm}-{hex_}.sig"


def signature_artifact(
    image_digest: str,
    layers: Sequence[tuple[bytes, str]],
    *,
    media_type: str = SIMPLESIGNING_MEDIA_TYPE,
    annotations: Mapping[str, str] | None = None,
) -> SignatureArtifact:
    """The `.sig` artifact of `image_digest` holding `layers` (payload, base64 signature)
    as they are, right or wrong: one layer each, as repeated `cosign sign` runs append them.
    `annotations` are extra layer annotations (a Rekor bundle, say)."""
    descriptors = []
    blobs: dict[str, bytes] = {}
    for payload, signature_b64 in layers:
        layer_annotations = {**(annotations or {}), SIGNATURE_ANNOTATION: signature_b64}
        descriptors.append(
            {
                "mediaType": media_type,
                "size": len(payload),
                "digest": _digest(payload),
                "annotations": dict(sorted(layer_annotations.items())),
            }
        )
        blobs[_digest(payload)] = payload
    config = _go_json(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [_digest(p) for p, _ in layers]},
            "config": {},
        }
    )
    blobs[_digest(config)] = config
    manifest = _go_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": OCI_CONFIG_MEDIA_TYPE,
                "size": len(config),
                "digest": _digest(config),
            },
            "layers": descriptors,
        }
    )
    return SignatureArtifact(
        image_digest=image_digest,
        layers=tuple((bytes(p), s) for p, s in layers),
        config=config,
        manifest=manifest,
        tag=signature_tag(image_digest),
        blobs=blobs,
    )


def sign_image(
    image_digest: str,
    docker_reference: str,
    private_key: PrivateKey,
    *,
    payload_digest: str | None = None,
    optional: Mapping[str, Any] | None = None,
    hash: hashes.HashAlgorithm | None = None,
) -> SignatureArtifact:
    """`cosign sign --key k docker_reference@image_digest`, as pushed under the image's `.sig`
    tag. `payload_digest` makes the payload name another digest (a signature of another image,
    put where this image's is looked for)."""
    payload = simple_signing_payload(payload_digest or image_digest, docker_reference, optional)
    signature_b64 = sign_payload(payload, private_key, hash=hash)
    return signature_artifact(image_digest, [(payload, signature_b64)])


def add_signature(
    artifact: SignatureArtifact,
    private_key: PrivateKey,
    docker_reference: str,
    *,
    payload_digest: str | None = None,
) -> SignatureArtifact:
    """`artifact` signed once more (cosign appends a layer to the existing `.sig` manifest)."""
    payload = simple_signing_payload(
        payload_digest or artifact.image_digest, docker_reference, {"n": len(artifact.layers)}
    )
    return signature_artifact(
        artifact.image_digest, [*artifact.layers, (payload, sign_payload(payload, private_key))]
    )


def tamper(artifact: SignatureArtifact) -> SignatureArtifact:
    """A bad signature: the newest payload changed after signing (a claim added to `optional`,
    still naming the same digest), the signature left as it was."""
    payload, signature_b64 = artifact.layers[-1]
    document = json.loads(payload)
    document["optional"] = {**(document.get("optional") or {}), "tampered": "yes"}
    forged = _go_json(document)
    return signature_artifact(
        artifact.image_digest, [*artifact.layers[:-1], (forged, signature_b64)]
    )


def tamper_signature(artifact: SignatureArtifact) -> SignatureArtifact:
    """A bad signature: one bit of the newest signature flipped, the payload intact."""
    payload, signature_b64 = artifact.layers[-1]
    raw = bytearray(base64.b64decode(signature_b64))
    raw[len(raw) // 2] ^= 0x01
    forged = base64.b64encode(bytes(raw)).decode("ascii")
    return signature_artifact(artifact.image_digest, [*artifact.layers[:-1], (payload, forged)])
