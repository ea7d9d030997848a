"""Key-based cosign signature verification (edgecache/scan/cosign.py, issue 12's signature gate).

Signatures come from tests/fakes/cosign.py, which writes them as `cosign sign --key` does (the
layout read from sigstore/cosign's sources, cited there). No cosign binary runs here, so no
artifact of the real tool is checked.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import functools
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, x25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.oci.errors import DigestInvalid
from edgecache.scan import cosign
from edgecache.scan.cosign import BadKey, Verdict, load_public_keys, signature_layers, verify
from tests.fakes import cosign as fake

IMAGE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REPO = "registry.example/team/app"


@functools.cache
def keypair(kind: str) -> tuple[Any, bytes]:
    """One key pair per kind for the whole module (RSA generation is slow)."""
    return fake.new_key(kind)


def keys_for(*kinds: str) -> list[cosign.PublicKey]:
    return load_public_keys([keypair(kind)[1] for kind in kinds])


def fetch(artifact: fake.SignatureArtifact) -> list[tuple[bytes, str]]:
    """What the gate does with a `.sig` artifact: parse the manifest, fetch each layer's blob."""
    layers = signature_layers(json.loads(artifact.manifest))
    return [(artifact.blobs[digest], signature) for digest, signature in layers]


def check(artifact: fake.SignatureArtifact, keys: list[cosign.PublicKey], **kwargs: Any) -> Verdict:
    return verify(artifact.image_digest, fetch(artifact), keys, **kwargs)


# --- cosign's layout ----------------------------------------------------------------------------


def test_constants_are_cosigns() -> None:
    # Written independently in the fake, from cosign's sources.
    assert cosign.SIMPLESIGNING == fake.SIMPLESIGNING_MEDIA_TYPE
    assert cosign.SIGNATURE_ANNOTATION == fake.SIGNATURE_ANNOTATION
    assert cosign.COSIGN_SIGNATURE_TYPE == fake.COSIGN_SIGNATURE_TYPE


def test_signature_tag() -> None:
    assert cosign.signature_tag(IMAGE) == "sha256-" + "ab" * 32 + ".sig"
    assert cosign.signature_tag(IMAGE) == fake.signature_tag(IMAGE)
    for bad in ("", "sha256:xyz", "sha256:" + "AB" * 32, "ab" * 32):
        with pytest.raises(DigestInvalid):
            cosign.signature_tag(bad)


def test_describe_key_fingerprints_the_der_spki() -> None:
    import hashlib

    _, pem = keypair("ecdsa-p256")
    (key,) = load_public_keys([pem])
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert cosign.describe_key(key) == f"ecdsa-p256 key {expected}"


# --- good signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519", "rsa-2048"])
def test_good_signatures_verify(kind: str) -> None:
    private_key, _ = keypair(kind)
    verdict = check(fake.sign_image(IMAGE, REPO, private_key), keys_for(kind))
    assert verdict.ok, verdict.reason
    assert verdict.reason.startswith(f"signed by {kind} key sha256:")


@pytest.mark.parametrize(
    ("kind", "hash_"),
    [("ecdsa-p384", hashes.SHA384()), ("ecdsa-p521", hashes.SHA512())],
)
def test_larger_curves_verify_with_their_default_hash_too(kind: str, hash_: Any) -> None:
    # cosign signs with LoadDefaultSignerVerifier (P-384 -> SHA-384, P-521 -> SHA-512) and
    # `verify --key` hashes with SHA-256 unless told otherwise: both are cosign signatures.
    artifact = fake.sign_image(IMAGE, REPO, keypair(kind)[0], hash=hash_)
    assert check(artifact, keys_for(kind)).ok


def test_p256_takes_sha256_only() -> None:
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0], hash=hashes.SHA384())
    assert check(artifact, keys_for("ecdsa-p256")).reason == "no signature made by a configured key"


def test_rsa_is_pkcs1v15_sha256_as_sigstores_loadverifier() -> None:
    private_key = keypair("rsa-2048")[0]
    payload = fake.simple_signing_payload(IMAGE, REPO)
    pss = private_key.sign(
        payload,
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
        hashes.SHA256(),
    )
    artifact = fake.signature_artifact(IMAGE, [(payload, base64.b64encode(pss).decode())])
    assert check(artifact, keys_for("rsa-2048")).reason == "no signature made by a configured key"


def test_any_configured_key_will_do() -> None:
    artifact = fake.sign_image(IMAGE, REPO, keypair("ed25519")[0])
    verdict = check(artifact, keys_for("ecdsa-p256", "rsa-2048", "ed25519"))
    assert verdict.ok
    assert verdict.reason.startswith("signed by ed25519 key")


def test_any_valid_signature_will_do() -> None:
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p384")[0])  # not configured
    artifact = fake.add_signature(artifact, keypair("ecdsa-p256")[0], REPO, payload_digest=OTHER)
    artifact = fake.add_signature(artifact, keypair("ecdsa-p256")[0], REPO)
    assert len(signature_layers(json.loads(artifact.manifest))) == 3
    assert check(artifact, keys_for("ecdsa-p256")).ok


def test_base64_with_line_breaks_is_accepted_as_by_go() -> None:
    # Go's base64.StdEncoding ignores CR and LF; cosign has been seen writing them.
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0])
    wrapped = artifact.signature_b64[:40] + "\n" + artifact.signature_b64[40:] + "\r\n"
    assert verify(IMAGE, [(artifact.payload, wrapped)], keys_for("ecdsa-p256")).ok


def test_payload_keys_match_case_insensitively_as_in_go() -> None:
    # SIGNATURE_SPEC.md's own example spells "Docker-manifest-digest"; encoding/json takes it.
    private_key = keypair("ecdsa-p256")[0]
    payload = json.dumps(
        {
            "Critical": {
                "identity": {"docker-reference": REPO},
                "image": {"Docker-manifest-digest": IMAGE},
                "Type": "cosign container image signature",
            },
            "optional": {"creator": "atomic"},
        }
    ).encode()
    artifact = fake.signature_artifact(IMAGE, [(payload, fake.sign_payload(payload, private_key))])
    assert check(artifact, keys_for("ecdsa-p256")).ok


def test_payload_keys_that_collide_are_refused() -> None:
    private_key = keypair("ecdsa-p256")[0]
    payload = (
        b'{"critical":{"image":{"docker-manifest-digest":"' + IMAGE.encode() + b'",'
        b'"Docker-Manifest-Digest":"' + OTHER.encode() + b'"},'
        b'"type":"cosign container image signature"}}'
    )
    artifact = fake.signature_artifact(IMAGE, [(payload, fake.sign_payload(payload, private_key))])
    verdict = check(artifact, keys_for("ecdsa-p256"))
    assert not verdict.ok
    assert verdict.reason.startswith("payload is not a cosign simple-signing document")


# --- bad signatures -----------------------------------------------------------------------------


def test_no_signature() -> None:
    assert verify(IMAGE, [], keys_for("ecdsa-p256")) == Verdict(False, "no signature")


def test_no_key_verifies_nothing() -> None:
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0])
    verdict = check(artifact, [])
    assert not verdict.ok
    assert "no public key" in verdict.reason


def test_wrong_key() -> None:
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0])
    _, other_pub = fake.new_key("ecdsa-p256")
    assert check(artifact, load_public_keys([other_pub])) == Verdict(
        False, "no signature made by a configured key"
    )
    # An Ed25519 signature is not taken for an ECDSA one of the same bytes, nor the reverse.
    assert not check(fake.sign_image(IMAGE, REPO, keypair("ed25519")[0]), keys_for("ecdsa-p256")).ok


def test_tampered_payload() -> None:
    artifact = fake.tamper(fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0]))
    assert json.loads(artifact.payload)["critical"]["image"]["docker-manifest-digest"] == IMAGE
    assert check(artifact, keys_for("ecdsa-p256")) == Verdict(
        False, "no signature made by a configured key"
    )


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519", "rsa-2048"])
def test_tampered_signature(kind: str) -> None:
    artifact = fake.tamper_signature(fake.sign_image(IMAGE, REPO, keypair(kind)[0]))
    assert check(artifact, keys_for(kind)).reason == "no signature made by a configured key"


def test_payload_naming_another_digest() -> None:
    # A valid signature of another image, put under this image's .sig tag.
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0], payload_digest=OTHER)
    assert artifact.tag == fake.signature_tag(IMAGE)
    assert check(artifact, keys_for("ecdsa-p256")) == Verdict(
        False, f"payload names {OTHER} not {IMAGE}"
    )


def test_not_base64_signature() -> None:
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0])
    for bad in ("not base64!", artifact.signature_b64[:-1], "é" + artifact.signature_b64):
        assert verify(IMAGE, [(artifact.payload, bad)], keys_for("ecdsa-p256")) == Verdict(
            False, "signature is not base64"
        )
    assert verify(IMAGE, [(artifact.payload, "")], keys_for("ecdsa-p256")) == Verdict(
        False, "signature is empty"
    )


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"\xff\xfe", b'{"critical": NaN}', b"[1, 2]", b"null", b"[" * 100_000],
)
def test_signed_payload_that_is_not_json_or_not_an_object(payload: bytes) -> None:
    signature = fake.sign_payload(payload, keypair("ecdsa-p256")[0])
    verdict = verify(IMAGE, [(payload, signature)], keys_for("ecdsa-p256"))
    assert not verdict.ok
    assert verdict.reason.startswith("payload is not a cosign simple-signing document (")


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"critical": None},
        {"critical": {"image": {"docker-manifest-digest": IMAGE}}},
        {"critical": {"type": "cosign container image signature"}},
        {"critical": {"type": "cosign container image signature", "image": IMAGE}},
        {"critical": {"type": "cosign container image signature", "image": {"x": IMAGE}}},
        {
            "critical": {
                "type": "cosign container image signature",
                "image": {"docker-manifest-digest": 5},
            }
        },
    ],
)
def test_signed_json_that_is_not_simple_signing(document: dict[str, Any]) -> None:
    payload = json.dumps(document).encode()
    signature = fake.sign_payload(payload, keypair("ecdsa-p256")[0])
    verdict = verify(IMAGE, [(payload, signature)], keys_for("ecdsa-p256"))
    assert not verdict.ok
    assert verdict.reason.startswith("payload is not a cosign simple-signing document (")


def test_wrong_critical_type() -> None:
    payload = fake.simple_signing_payload(IMAGE, REPO, type_="atomic container signature")
    signature = fake.sign_payload(payload, keypair("ecdsa-p256")[0])
    assert verify(IMAGE, [(payload, signature)], keys_for("ecdsa-p256")) == Verdict(
        False,
        "payload's critical.type is atomic container signature, "
        "not 'cosign container image signature'",
    )


def test_reasons_quote_what_the_payload_says_safely() -> None:
    private_key = keypair("ecdsa-p256")[0]
    for named, shown in [
        ("sha256:\n<b>x</b>", repr("sha256:\n<b>x</b>")),
        ("x" * 500, "x" * 97 + "..."),
    ]:
        payload = fake.simple_signing_payload(named, REPO)
        verdict = verify(
            IMAGE, [(payload, fake.sign_payload(payload, private_key))], keys_for("ecdsa-p256")
        )
        assert verdict.reason == f"payload names {shown} not {IMAGE}"


def test_more_than_16_payloads() -> None:
    private_key = keypair("ecdsa-p256")[0]
    good = fake.sign_image(IMAGE, REPO, private_key)
    junk = [(b"{}", good.signature_b64)] * 16
    assert verify(IMAGE, [*junk[:15], *good.payloads], keys_for("ecdsa-p256")).ok
    verdict = verify(IMAGE, [*junk, *good.payloads], keys_for("ecdsa-p256"))
    assert verdict == Verdict(False, "17 signatures, more than the 16 edgecache checks")


def test_oversized_payload_and_signature() -> None:
    private_key = keypair("ecdsa-p256")[0]
    payload = fake.simple_signing_payload(IMAGE, REPO, {"pad": "x" * cosign.MAX_PAYLOAD_BYTES})
    verdict = verify(
        IMAGE, [(payload, fake.sign_payload(payload, private_key))], keys_for("ecdsa-p256")
    )
    assert not verdict.ok
    assert verdict.reason == (
        f"payload is {len(payload)} bytes, more than the {cosign.MAX_PAYLOAD_BYTES} allowed"
    )
    good = fake.sign_image(IMAGE, REPO, private_key)
    long_signature = "A" * (cosign.MAX_SIGNATURE_B64 + 4)
    verdict = verify(IMAGE, [(good.payload, long_signature)], keys_for("ecdsa-p256"))
    assert verdict.reason == (
        f"signature is {len(long_signature)} characters of base64, more than the 8192 allowed"
    )


def test_malformed_entries_fail_without_raising() -> None:
    keys = keys_for("ecdsa-p256")
    for entries in ([("x", "y")], [(b"x",)], [None], [(b"x", 5)], [[b"x", "y", "z"]]):
        verdict = verify(IMAGE, entries, keys)  # type: ignore[arg-type]
        assert not verdict.ok
        assert verdict.reason
    assert not verify(IMAGE, None, keys).ok  # type: ignore[arg-type]


def test_several_bad_signatures_report_the_nearest_miss() -> None:
    private_key = keypair("ecdsa-p256")[0]
    artifact = fake.tamper(fake.sign_image(IMAGE, REPO, private_key))
    artifact = fake.add_signature(artifact, private_key, REPO, payload_digest=OTHER)
    artifact = fake.signature_artifact(IMAGE, [*artifact.layers, (b"{}", "!!")])
    assert check(artifact, keys_for("ecdsa-p256")) == Verdict(
        False, f"none of the 3 signatures is valid; the nearest: payload names {OTHER} not {IMAGE}"
    )


def test_docker_reference_is_ignored_unless_asked_for() -> None:
    artifact = fake.sign_image(IMAGE, "elsewhere.example/team/app", keypair("ecdsa-p256")[0])
    keys = keys_for("ecdsa-p256")
    assert check(artifact, keys).ok
    assert check(artifact, keys, docker_reference="elsewhere.example/team/app").ok
    assert check(artifact, keys, docker_reference=REPO) == Verdict(
        False, f"payload names repository elsewhere.example/team/app not {REPO}"
    )
    # A payload without an identity fails a reference check, not a plain one.
    payload = json.dumps(
        {
            "critical": {
                "image": {"docker-manifest-digest": IMAGE},
                "type": cosign.COSIGN_SIGNATURE_TYPE,
            }
        }
    ).encode()
    entries = [(payload, fake.sign_payload(payload, keypair("ecdsa-p256")[0]))]
    assert verify(IMAGE, entries, keys).ok
    assert verify(IMAGE, entries, keys, docker_reference=REPO) == Verdict(
        False, f"payload names repository None not {REPO}"
    )


def test_verdict_is_frozen() -> None:
    verdict = Verdict(True, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.ok = False  # type: ignore[misc]


# --- signature manifests ------------------------------------------------------------------------


def test_signature_layers_takes_only_signed_simplesigning_layers() -> None:
    good = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0])
    manifest = json.loads(good.manifest)
    (layer,) = manifest["layers"]
    manifest["layers"] = [
        layer,
        {**layer, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"},
        {**layer, "annotations": {"dev.sigstore.cosign/bundle": "{}"}},
        {k: v for k, v in layer.items() if k != "annotations"},
        {**layer, "annotations": {cosign.SIGNATURE_ANNOTATION: 5}},
        {**layer, "digest": "sha256:nothex"},
        "not a descriptor",
        {**layer, "annotations": {cosign.SIGNATURE_ANNOTATION: "second"}},
    ]
    assert signature_layers(manifest) == [
        (layer["digest"], good.signature_b64),
        (layer["digest"], "second"),
    ]
    # Docker schema 2 signature manifests (older cosign) have the same layers.
    docker = {**manifest, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    assert len(signature_layers(docker)) == 2


@pytest.mark.parametrize("manifest", [{}, {"layers": None}, {"layers": {}}, [], "x", None, 5])
def test_signature_layers_of_non_manifests(manifest: Any) -> None:
    assert signature_layers(manifest) == []


def test_extra_layer_annotations_do_not_matter() -> None:
    artifact = fake.sign_image(IMAGE, REPO, keypair("ecdsa-p256")[0])
    with_bundle = fake.signature_artifact(
        IMAGE, artifact.layers, annotations={"dev.sigstore.cosign/bundle": '{"x":1}'}
    )
    assert check(with_bundle, keys_for("ecdsa-p256")).ok


# --- public keys --------------------------------------------------------------------------------


def _pem(
    public_key: Any,
    fmt: serialization.PublicFormat = serialization.PublicFormat.SubjectPublicKeyInfo,
) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, fmt)


def test_load_public_keys_of_every_supported_kind() -> None:
    kinds = ["ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519", "rsa-2048"]
    keys = load_public_keys([keypair(kind)[1] for kind in kinds])
    assert [cosign.describe_key(k).split(" ")[0] for k in keys] == kinds
    # PKCS#1 "RSA PUBLIC KEY" too, as sigstore's cryptoutils reads it; and str.
    rsa_public = keypair("rsa-2048")[0].public_key()
    assert load_public_keys([_pem(rsa_public, serialization.PublicFormat.PKCS1)])
    assert cosign.load_public_key(keypair("ed25519")[1].decode())  # type: ignore[arg-type]
    assert load_public_keys([]) == []
    # Text around the PEM block (a comment line) is fine.
    assert load_public_keys([b"# release key\n" + keypair("ed25519")[1]])


def _self_signed_certificate() -> bytes:
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _bad_pems() -> list[tuple[str, bytes, str]]:
    ecdsa_private = keypair("ecdsa-p256")[0]
    big_rsa = rsa.RSAPublicNumbers(65537, (1 << 4103) + 1).public_key()
    return [
        ("garbage", b"hello", "not PEM"),
        ("empty", b"", "not PEM"),
        (
            "corrupt body",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "not a readable PEM public key",
        ),
        (
            "private key",
            ecdsa_private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "is a private key",
        ),
        (
            "cosign's encrypted private key",
            b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n"
            b"-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            "is a private key",
        ),
        ("certificate", _self_signed_certificate(), "is a certificate"),
        ("two keys", keypair("ecdsa-p256")[1] + keypair("ed25519")[1], "holds 2 PEM blocks"),
        ("P-224", _pem(ec.generate_private_key(ec.SECP224R1()).public_key()), "curve secp224r1"),
        ("secp256k1", _pem(ec.generate_private_key(ec.SECP256K1()).public_key()), "secp256k1"),
        (
            "RSA-1024",
            _pem(rsa.generate_private_key(65537, 1024).public_key()),
            "RSA key of 1024 bits",
        ),
        ("RSA-4104", _pem(big_rsa), "RSA key of 4104 bits"),
        ("Ed448", _pem(ed448.Ed448PrivateKey.generate().public_key()), "are not supported"),
        ("X25519", _pem(x25519.X25519PrivateKey.generate().public_key()), "are not supported"),
    ]


@pytest.mark.parametrize(("label", "pem", "message"), _bad_pems(), ids=[b[0] for b in _bad_pems()])
def test_bad_keys_are_refused_with_a_reason(label: str, pem: bytes, message: str) -> None:
    with pytest.raises(BadKey) as raised:
        load_public_keys([keypair("ecdsa-p256")[1], pem])
    assert str(raised.value).startswith("public key 2: ")
    assert message in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_load_public_key_names_the_key() -> None:
    with pytest.raises(BadKey, match=r"^/etc/edgecache/cosign\.pub: not PEM"):
        cosign.load_public_key(b"nope", "/etc/edgecache/cosign.pub")
    with pytest.raises(BadKey, match="expected PEM text"):
        cosign.load_public_key(5, "k")  # type: ignore[arg-type]


# --- never an exception -------------------------------------------------------------------------

FUZZ_KEYS = ("ecdsa-p256", "ed25519", "rsa-2048")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "critical",
                    "Critical",
                    "type",
                    "image",
                    "identity",
                    "docker-manifest-digest",
                    "docker-reference",
                    "optional",
                    "x",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
signatures = (
    st.text(max_size=200)
    | st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode())
    | st.sampled_from(["", "=", "====", "A", "AA==", "\n"])
)


@settings(max_examples=300, deadline=None)
@given(
    digest=st.text(max_size=80) | st.just(IMAGE),
    entries=st.lists(
        st.tuples(st.binary(max_size=400), signatures)
        | st.tuples(json_values.map(lambda v: json.dumps(v).encode()), signatures),
        max_size=20,
    ),
    reference=st.none() | st.text(max_size=20),
)
def test_verify_never_raises_on_random_input(
    digest: str, entries: list[tuple[bytes, str]], reference: str | None
) -> None:
    verdict = verify(digest, entries, keys_for(*FUZZ_KEYS), docker_reference=reference)
    assert isinstance(verdict, Verdict)
    assert not verdict.ok
    assert isinstance(verdict.reason, str) and verdict.reason


@settings(max_examples=200, deadline=None)
@given(
    document=json_values,
    kind=st.sampled_from(FUZZ_KEYS),
    reference=st.none() | st.just(REPO),
)
def test_verify_never_raises_on_signed_random_json(
    document: Any, kind: str, reference: str | None
) -> None:
    # Signed by a configured key, so the payload really gets parsed and read.
    payload = json.dumps(document).encode()
    signature = fake.sign_payload(payload, keypair(kind)[0])
    verdict = verify(
        IMAGE, [(payload, signature)], keys_for(*FUZZ_KEYS), docker_reference=reference
    )
    assert isinstance(verdict, Verdict) and verdict.reason
    assert not verdict.ok  # random JSON is no claim about IMAGE


@settings(max_examples=200, deadline=None)
@given(manifest=json_values | st.dictionaries(st.just("layers"), st.lists(json_values, max_size=5)))
def test_signature_layers_never_raises(manifest: Any) -> None:
    for digest, signature in signature_layers(manifest):
        assert isinstance(digest, str) and isinstance(signature, str)


@settings(max_examples=200, deadline=None)
@given(
    pem=st.binary(max_size=300)
    | st.binary(max_size=200).map(
        lambda b: (
            b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(b) + b"-----END PUBLIC KEY-----\n"
        )
    )
)
def test_load_public_key_raises_only_badkey(pem: bytes) -> None:
    with contextlib.suppress(BadKey):
        cosign.load_public_key(pem)


def test_ed25519_key_is_not_mistaken_for_another_algorithm() -> None:
    # Sanity: the module's key kinds come from the key objects, not from the PEM text.
    key = ed25519.Ed25519PrivateKey.generate()
    (loaded,) = load_public_keys([_pem(key.public_key())])
    assert isinstance(loaded, ed25519.Ed25519PublicKey)
