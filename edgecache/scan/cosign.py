"""Key-based verification of cosign image signatures, for the signature gate (issue 12).

Pure: no I/O and no trio. The gate fetches the signature manifest (tag ``signature_tag(d)``)
and the payload blobs its ``signature_layers`` name, and asks ``verify`` for a ``Verdict``;
a failed verdict's ``reason`` is what the 412 answer says. All cryptography is done by the
``cryptography`` package (OpenSSL): nothing here parses DER or does curve arithmetic.

What cosign writes, and where it is written down (read for this module):

- Storage, "tag-based discovery": sigstore/cosign specs/SIGNATURE_SPEC.md. The signatures of
  an image with digest ``sha256:<hex>`` live in the same repository under the tag
  ``sha256-<hex>.sig`` (``normalize`` in pkg/oci/remote/remote.go: ``<alg>-<hex>.<suffix>``,
  ``SignatureTagSuffix = "sig"`` in pkg/oci/remote/options.go). That tag names one OCI image
  manifest (older cosign wrote Docker schema 2; the layout is the same) holding one layer per
  signature: cosign appends a layer each time the image is signed, and
  pkg/oci/remote/signatures.go (``sigs.Get``) makes one signature of every layer.
- Each signature layer (pkg/oci/static/signature.go, options.go): the blob is the payload;
  the descriptor's mediaType is ``SimpleSigningMediaType`` =
  ``application/vnd.dev.cosign.simplesigning.v1+json`` (pkg/types/media.go); the base64
  signature is the descriptor annotation ``SignatureAnnotationKey`` =
  ``dev.cosignproject.cosign/signature``; the manifest's config has media type
  ``application/vnd.oci.image.config.v1+json`` (``types.OCIConfigJSON``). Keyless signatures
  add ``dev.sigstore.cosign/certificate``, ``.../chain`` and ``.../bundle``; key-based ones
  may carry the Rekor bundle too. Neither is looked at here.
- The payload, "simple signing" (sigstore/sigstore pkg/signature/payload/payload.go):
  ``SimpleContainerImage{critical: {identity: {docker-reference}, image:
  {docker-manifest-digest}, type}, optional}`` with ``CosignSignatureType`` =
  ``"cosign container image signature"``; ``Cosign.MarshalJSON`` writes the image's
  repository name (go-containerregistry ``Repository.Name()``, e.g.
  ``index.docker.io/library/nginx``) as docker-reference and the manifest digest.
- Verification with ``cosign verify --key``: cmd/cosign/cli/verify/verify.go loads the key
  with ``PublicKeyFromKeyRefWithHashAlgo(ctx, keyRef, c.HashAlgorithm)``, the hash defaulting
  to SHA-256; pkg/signature/keys.go reads it with ``cryptoutils.UnmarshalPEMToPublicKey``
  (PEM ``PUBLIC KEY``, i.e. SubjectPublicKeyInfo, or ``RSA PUBLIC KEY``) and
  ``signature.LoadVerifier`` (sigstore/sigstore pkg/signature/verifier.go): RSA ->
  PKCS#1 v1.5 with that hash (PSS only when asked for explicitly), ECDSA -> ASN.1/DER
  signature over the hash of the payload, Ed25519 -> pure Ed25519 over the payload bytes.
  pkg/cosign/verify.go checks the signature (base64-decode the annotation, verify it over the
  payload bytes) and then the claims: ``SimpleClaimVerifier`` (pkg/cosign/verifiers.go)
  compares ``critical.image.docker-manifest-digest`` with the image digest as strings
  ("invalid or missing digest in claim").
- Hashes: SIGNATURE_SPEC.md requires ECDSA-P256 with SHA-256. cosign's signing side loads
  keys with ``signature.LoadDefaultSignerVerifier`` (pkg/cosign/keys.go ``LoadPrivateKey``),
  whose defaults (sigstore/sigstore pkg/signature/algorithm_registry.go) pair P-384 with
  SHA-384 and P-521 with SHA-512, while ``verify --key`` uses SHA-256 unless told otherwise.
  So for P-384/P-521 keys both hashes are tried (a signature over one digest cannot pass for
  the other: that would need a SHA-2 preimage).
- Keys sigstore accepts (cryptoutils ``ValidatePubKey``): ECDSA on P-256/P-384/P-521, RSA of
  2048 to 4096 bits, Ed25519. ``load_public_keys`` refuses the rest with ``BadKey``.

Decisions:

- ``critical.type`` must be ``"cosign container image signature"``. ``SimpleClaimVerifier``
  does not look at it, but sigstore's ``Cosign.UnmarshalJSON`` refuses any other type and
  containers/image's policy checks it too: a signed document of another kind is not a claim
  about an image.
- ``critical.identity.docker-reference`` is not checked unless ``verify`` is given
  ``docker_reference``: SIGNATURE_SPEC.md says the field "is ignored" and cosign never compares
  it (an image copied to another registry, e.g. by ``cosign copy`` or through this cache, keeps
  its signatures). containers/image's ``sigstoreSigned`` policy does compare it; the exact
  string comparison here is for operators who want that.
- Object keys of the payload are matched the way Go's encoding/json (which cosign uses) matches
  them to struct fields: exactly, or else case-insensitively; a key matching more than one way
  (``"type"`` and ``"Type"``) makes the payload unreadable rather than picking one.
- The signature is checked before the payload is parsed, as cosign does: an unsigned payload
  is never interpreted, and only a payload made by a configured key can produce a reason
  quoting its contents.
- Ed25519ph (the prehash variant newer cosign uses for Rekor "hashedrekord" entries and the
  sigstore bundle format) is not supported: ``cryptography`` has no Ed25519ph API and it is not
  re-implemented here. Such a signature fails as "no signature made by a configured key".
- Only the tag-based ``.sig`` layout above is read. Cosign 3 signs into a sigstore bundle
  attached through the OCI referrers API by default (``--new-bundle-format``, sigstore/cosign
  issue 4335); images signed that way have no ``.sig`` tag unless signed with
  ``--new-bundle-format=false``.
- Work is bounded: at most ``MAX_PAYLOADS`` signatures (more fail the verdict outright, before
  any cryptography), payloads of at most ``MAX_PAYLOAD_BYTES``, signatures of at most
  ``MAX_SIGNATURE_B64`` base64 characters. Anything malformed is a failed ``Verdict`` naming
  what was wrong, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from edgecache.oci import jsontext
from edgecache.oci.digest import Digest
from edgecache.oci.errors import DigestInvalid

SIMPLESIGNING: Final = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION: Final = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE: Final = "cosign container image signature"
SIGNATURE_TAG_SUFFIX: Final = "sig"

MAX_PAYLOADS: Final = 16
MAX_PAYLOAD_BYTES: Final = 1 << 20
MAX_SIGNATURE_B64: Final = 8 << 10

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

# Curve name (cryptography's) -> (what we call it, the hashes a cosign signature may use).
_CURVES: Final[dict[str, tuple[str, tuple[type[hashes.HashAlgorithm], ...]]]] = {
    "secp256r1": ("ecdsa-p256", (hashes.SHA256,)),
    "secp384r1": ("ecdsa-p384", (hashes.SHA256, hashes.SHA384)),
    "secp521r1": ("ecdsa-p521", (hashes.SHA256, hashes.SHA512)),
}
_RSA_MIN_BITS: Final = 2048
_RSA_MAX_BITS: Final = 4096

# How far a failed signature got, to report the most telling reason when none is valid.
_MALFORMED, _UNSIGNED, _NOT_A_CLAIM, _OTHER_DIGEST, _OTHER_REFERENCE = range(5)


class BadKey(ValueError):
    """A configured public key that cannot be used; the message says which one and why."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an image's signatures admit it; ``reason`` says why (or by which key)."""

    ok: bool
    reason: str


def signature_tag(image_digest: str) -> str:
    """The tag cosign stores ``image_digest``'s signatures under: ``sha256-<hex>.sig``.

    Raises DigestInvalid for a malformed digest.
    """
    digest = Digest.parse(image_digest)
    return f"{digest.algorithm}-{digest.hex}.{SIGNATURE_TAG_SUFFIX}"


def load_public_key(pem: bytes, name: str = "public key") -> PublicKey:
    """One PEM public key as cosign reads ``--key``; BadKey (message starting with ``name``)
    if it is not one, or not of a kind cosign signs with."""
    if isinstance(pem, str):
        pem = pem.encode("utf-8", "replace")
    if not isinstance(pem, bytes | bytearray | memoryview):
        raise BadKey(f"{name}: expected PEM text, got {type(pem).__name__}")
    data = bytes(pem)
    blocks = data.count(b"-----BEGIN ")
    if blocks == 0:
        raise BadKey(f"{name}: not PEM (no '-----BEGIN PUBLIC KEY-----' line)")
    if blocks > 1:
        raise BadKey(f"{name}: holds {blocks} PEM blocks; give each public key separately")
    if b"PRIVATE KEY-----" in data:
        raise BadKey(
            f"{name}: is a private key; configure its public half "
            "(cosign.pub, or `cosign public-key --key cosign.key`)"
        )
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise BadKey(f"{name}: is a certificate, not a public key ('PUBLIC KEY' PEM block)")
    try:
        key = serialization.load_pem_public_key(data)
    except UnsupportedAlgorithm:
        raise BadKey(f"{name}: a public key of an algorithm cosign does not sign with") from None
    except ValueError:
        raise BadKey(
            f"{name}: not a readable PEM public key "
            "(expected a 'PUBLIC KEY' or 'RSA PUBLIC KEY' block, as in cosign.pub)"
        ) from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise BadKey(
                f"{name}: ECDSA curve {key.curve.name} is not supported "
                "(cosign keys use P-256, P-384 or P-521)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not _RSA_MIN_BITS <= key.key_size <= _RSA_MAX_BITS:
            raise BadKey(
                f"{name}: RSA key of {key.key_size} bits "
                f"(sigstore accepts {_RSA_MIN_BITS} to {_RSA_MAX_BITS})"
            )
        return key
    raise BadKey(
        f"{name}: {type(key).__name__.removeprefix('_')} keys are not supported "
        "(ECDSA P-256/P-384/P-521, Ed25519 or RSA only)"
    )


def load_public_keys(pems: Sequence[bytes]) -> list[PublicKey]:
    """Every PEM of ``pems`` loaded (``load_public_key``); BadKey names the first bad one."""
    return [load_public_key(pem, f"public key {i}") for i, pem in enumerate(pems, 1)]


def describe_key(key: PublicKey) -> str:
    """``<kind> key sha256:<hex>``: the kind (``ecdsa-p256``, ``ed25519``, ``rsa-2048``, ...)
    and the SHA-256 of the key's DER SubjectPublicKeyInfo
    (the fingerprint sigstore uses as a key hint)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"{_kind(key) or 'unsupported'} key sha256:{hashlib.sha256(der).hexdigest()}"


def signature_layers(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(layer digest, base64 signature)`` of each simple-signing layer of a parsed signature
    manifest (the ``.sig`` tag's), in manifest order.

    Layers of another media type, or without a string signature annotation or a valid digest,
    are left out; anything that is not a manifest gives ``[]``. ``verify`` refuses more than
    ``MAX_PAYLOADS`` signatures outright, so a caller need not fetch the blobs in that case;
    it should fetch no blob larger than ``MAX_PAYLOAD_BYTES`` either.
    """
    if not isinstance(manifest, Mapping):
        return []
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return []
    found: list[tuple[str, str]] = []
    for layer in layers:
        if not isinstance(layer, Mapping) or layer.get("mediaType") != SIMPLESIGNING:
            continue
        digest = layer.get("digest")
        annotations = layer.get("annotations")
        if not isinstance(digest, str) or not isinstance(annotations, Mapping):
            continue
        signature = annotations.get(SIGNATURE_ANNOTATION)
        if not isinstance(signature, str):
            continue
        try:
            Digest.parse(digest)
        except DigestInvalid:
            continue
        found.append((digest, signature))
    return found


def verify(
    image_digest: str,
    payloads: Sequence[tuple[bytes, str]],
    keys: Sequence[PublicKey],
    docker_reference: str | None = None,
) -> Verdict:
    """Whether any of ``payloads`` is a valid cosign signature of ``image_digest``.

    ``payloads`` are ``(simple-signing layer content, base64 signature annotation)``. One is
    valid when its signature verifies over the payload bytes with one of ``keys``, the payload
    is a simple-signing document of ``critical.type`` "cosign container image signature",
    its ``critical.image.docker-manifest-digest`` is ``image_digest`` and, when
    ``docker_reference`` is given, its ``critical.identity.docker-reference`` is that (cosign
    itself ignores that field). Without keys nothing is valid.
    """
    try:
        count = len(payloads)
    except TypeError:
        return Verdict(False, "signatures are malformed")
    if count == 0:
        return Verdict(False, "no signature")
    if count > MAX_PAYLOADS:
        return Verdict(False, f"{count} signatures, more than the {MAX_PAYLOADS} edgecache checks")
    usable = [key for key in keys if _kind(key) is not None]
    if not usable:
        return Verdict(False, "no public key configured to verify signatures with")
    failures: list[tuple[int, str]] = []
    for entry in payloads:
        rank, reason, key = _check(image_digest, entry, usable, docker_reference)
        if key is not None:
            return Verdict(True, f"signed by {describe_key(key)}")
        failures.append((rank, reason))
    nearest = max(failures, key=lambda failure: failure[0])[1]  # the first of the furthest
    if count == 1:
        return Verdict(False, nearest)
    return Verdict(False, f"none of the {count} signatures is valid; the nearest: {nearest}")


def _kind(key: object) -> str | None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(key.curve.name)
        return None if curve is None else curve[0]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return None


def _check(
    image_digest: str, entry: object, keys: Sequence[PublicKey], docker_reference: str | None
) -> tuple[int, str, PublicKey | None]:
    """(how far it got, why it failed, None) or (_, _, the key that signed a valid claim)."""
    if not isinstance(entry, tuple | list) or len(entry) != 2:
        return _MALFORMED, "a signature entry is malformed", None
    payload, signature_b64 = entry
    if not isinstance(payload, bytes | bytearray | memoryview):
        return _MALFORMED, "a signature payload is not bytes", None
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        return (
            _MALFORMED,
            f"payload is {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} allowed",
            None,
        )
    if not isinstance(signature_b64, str):
        return _MALFORMED, "signature annotation is not a string", None
    if len(signature_b64) > MAX_SIGNATURE_B64:
        return (
            _MALFORMED,
            f"signature is {len(signature_b64)} characters of base64, "
            f"more than the {MAX_SIGNATURE_B64} allowed",
            None,
        )
    signature = _b64decode(signature_b64)
    if signature is None:
        return _MALFORMED, "signature is not base64", None
    if not signature:
        return _MALFORMED, "signature is empty", None
    key = _signing_key(payload, signature, keys)
    if key is None:
        return _UNSIGNED, "no signature made by a configured key", None
    try:
        claim = _claim(payload)
    except _NotAClaim as exc:
        return _NOT_A_CLAIM, str(exc), None
    named_digest, named_reference = claim
    if named_digest != image_digest:
        return _OTHER_DIGEST, f"payload names {_show(named_digest)} not {image_digest}", None
    if docker_reference is not None and named_reference != docker_reference:
        return (
            _OTHER_REFERENCE,
            f"payload names repository {_show(named_reference)} not {docker_reference}",
            None,
        )
    return _OTHER_REFERENCE + 1, "", key


def _b64decode(text: str) -> bytes | None:
    """Go's base64.StdEncoding.DecodeString, which cosign uses: padded standard alphabet,
    CR and LF ignored."""
    text = text.replace("\r", "").replace("\n", "")
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _signing_key(payload: bytes, signature: bytes, keys: Sequence[PublicKey]) -> PublicKey | None:
    """The first key under which ``signature`` is cosign's signature of ``payload``."""
    digests: dict[str, bytes] = {}

    def digest_of(algorithm: hashes.HashAlgorithm) -> bytes:
        if algorithm.name not in digests:
            digests[algorithm.name] = hashlib.new(algorithm.name, payload).digest()
        return digests[algorithm.name]

    for key in keys:
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                for hash_type in _CURVES[key.curve.name][1]:
                    algorithm = hash_type()
                    try:
                        key.verify(
                            signature, digest_of(algorithm), ec.ECDSA(utils.Prehashed(algorithm))
                        )
                        return key
                    except InvalidSignature:
                        continue
            elif isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, payload)
                return key
            elif isinstance(key, rsa.RSAPublicKey):
                algorithm = hashes.SHA256()
                key.verify(
                    signature,
                    digest_of(algorithm),
                    padding.PKCS1v15(),
                    utils.Prehashed(algorithm),
                )
                return key
        except (InvalidSignature, ValueError):
            continue
    return None


class _NotAClaim(Exception):
    """The signed payload is not a cosign simple-signing claim; the message is the reason."""


_NOT_SIMPLE_SIGNING: Final = "payload is not a cosign simple-signing document"
_ABSENT: Final = object()


def _claim(payload: bytes) -> tuple[Any, Any]:
    """(critical.image.docker-manifest-digest, critical.identity.docker-reference) of a
    simple-signing payload of the cosign type, or _NotAClaim."""
    try:
        document = jsontext.loads(payload)
    except jsontext.JSONInvalid as exc:
        raise _NotAClaim(f"{_NOT_SIMPLE_SIGNING} ({exc})") from None
    if not isinstance(document, dict):
        raise _NotAClaim(f"{_NOT_SIMPLE_SIGNING} (not a JSON object)")
    critical = _field(document, "critical")
    if not isinstance(critical, dict):
        raise _NotAClaim(f"{_NOT_SIMPLE_SIGNING} (no 'critical' object)")
    kind = _field(critical, "type")
    if kind is _ABSENT:
        raise _NotAClaim(f"{_NOT_SIMPLE_SIGNING} (no critical.type)")
    if kind != COSIGN_SIGNATURE_TYPE:
        raise _NotAClaim(f"payload's critical.type is {_show(kind)}, not '{COSIGN_SIGNATURE_TYPE}'")
    image = _field(critical, "image")
    digest = _field(image, "docker-manifest-digest") if isinstance(image, dict) else _ABSENT
    if not isinstance(digest, str):
        raise _NotAClaim(f"{_NOT_SIMPLE_SIGNING} (no critical.image.docker-manifest-digest)")
    identity = _field(critical, "identity")
    reference = _field(identity, "docker-reference") if isinstance(identity, dict) else None
    return digest, (None if reference is _ABSENT else reference)


def _field(obj: dict[str, Any], name: str) -> Any:
    """``obj[name]`` as Go's encoding/json finds a struct field: the exact key, else a key
    equal under case folding; _ABSENT if none; _NotAClaim if several keys could be it."""
    matches = [key for key in obj if key == name or key.casefold() == name]
    if len(matches) > 1:
        raise _NotAClaim(f"{_NOT_SIMPLE_SIGNING} (several keys spell {name!r})")
    return obj[matches[0]] if matches else _ABSENT


def _show(value: object, limit: int = 100) -> str:
    """``value`` for a message: a short printable ASCII string as is, anything else quoted
    with escapes, and cut at ``limit`` characters."""
    if isinstance(value, str) and value.isascii() and value.isprintable() and value:
        text = value
    else:
        text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
