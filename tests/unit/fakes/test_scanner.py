"""The fake scanner adapter (tests/fakes/scanner.py) speaks the published API, and can fail.

The three OpenAPI documents load (with the loader's patches) and tell good from bad; the fake
refuses what the documents refuse (400, kept in `.rejections`), what its auth refuses (401),
and polls the way Harbor's client expects (302 + Refresh-After, then 200; 404 for a lost scan).
The pulling paths run against real edgecache servers with images pushed here, so the findings
are exactly the marker file's, and a pull with a wrong Authorization ends in an error report.
"""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from tests.fakes.scanner import (
    API_KEY_HEADER,
    CYCLONEDX_JSON,
    ERROR,
    HARBOR_VULN_REPORT,
    MARKER,
    METADATA_1_0,
    SBOM_REPORT,
    SCAN_REQUEST_1_0,
    SCAN_RESPONSE,
    SPDX_JSON,
    SPEC_PATCHES,
    VERSIONS,
    VULN_REPORT_1_1,
    FakeScannerAdapter,
    ScanRecord,
    load_spec,
    load_spec_document,
    marker_layer,
    read_spec_yaml,
)
from tests.support import EdgecacheServer, oci_manifest, push_blob, sha256_bytes

TIMEOUT = 20.0
PASSWORD = "scan-pass"
VULNS: list[dict[str, Any]] = [
    {
        "id": "CVE-2024-0001",
        "package": "openssl",
        "version": "3.0.1",
        "fix_version": "3.0.13",
        "severity": "High",
    },
    {"id": "CVE-2023-4242", "package": "zlib", "version": "1.2.11", "severity": "Low"},
    {
        "id": "CVE-2022-9999",
        "package": "busybox",
        "version": "1.35.0",
        "fix_version": "",
        "severity": "Medium",
        "cwe_ids": ["CWE-476"],
        "links": ["https://security-tracker.debian.org/tracker/CVE-2022-9999"],
    },
]


# ------------------------------------------------------------------------------ helpers


def unique_repo(prefix: str) -> str:
    return f"scan/{prefix}-{uuid.uuid4().hex[:8]}"


def push_marker_image(
    server: EdgecacheServer, repo: str, layers: list[bytes], tag: str = "v1"
) -> str:
    """An OCI image of these layers and a config pushed to edgecache; returns its digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": repo}).encode()
    manifest = oci_manifest(config, layers)
    with server.client() as client:
        for blob in (config, *layers):
            push_blob(client, repo, blob)
        r = client.put(
            f"/v2/{repo}/manifests/{tag}",
            content=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 201, r.text
    return sha256_bytes(manifest)


def scan_body(registry: str, repo: str, digest: str, authorization: str = "") -> dict[str, Any]:
    return {
        "registry": {"url": registry, "authorization": authorization},
        "artifact": {
            "repository": repo,
            "digest": digest,
            "tag": "v1",
            "mime_type": "application/vnd.oci.image.manifest.v1+json",
        },
    }


def post_scan(
    fake: FakeScannerAdapter,
    body: Any,
    *,
    content_type: str = SCAN_REQUEST_1_0,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{fake.url}/api/v1/scan",
        content=content,
        headers={"Content-Type": content_type, "Accept": SCAN_RESPONSE, **(headers or {})},
        timeout=TIMEOUT,
    )


def get_report(
    fake: FakeScannerAdapter,
    scan_id: str,
    accept: str | None = HARBOR_VULN_REPORT,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {**({"Accept": accept} if accept is not None else {}), **(headers or {})}
    return httpx.get(
        f"{fake.url}/api/v1/scan/{scan_id}/report", headers=sent, params=params, timeout=30
    )


def scan_and_wait(fake: FakeScannerAdapter, body: dict[str, Any]) -> ScanRecord:
    r = post_scan(fake, body)
    assert r.status_code == 202, r.text
    assert r.headers["content-type"] == SCAN_RESPONSE
    return fake.wait_scan_done(r.json()["id"], TIMEOUT)


def final_report(
    fake: FakeScannerAdapter,
    scan_id: str,
    accept: str | None = HARBOR_VULN_REPORT,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """Poll as Harbor does (without its sleeps) until the answer is not a 302."""
    for _ in range(20):
        r = get_report(fake, scan_id, accept, params=params)
        if r.status_code != 302:
            return r
    raise AssertionError("still 302 after 20 polls")


def error_message(r: httpx.Response) -> str:
    assert r.headers["content-type"] == ERROR, r.headers
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    return str(body["error"]["message"])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def marker_image(edgecache: EdgecacheServer) -> tuple[str, str]:
    """(repo, digest) of an image with the marker in its second layer."""
    repo = unique_repo("marked")
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("etc/os-release")
        data = b"ID=fake\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layers = [gzip.compress(plain.getvalue(), mtime=0), marker_layer(VULNS)]
    return repo, push_marker_image(edgecache, repo, layers)


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    """An edgecache whose pulls need credentials (user alice); pushes stay anonymous."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    config = (
        "[auth]\nanonymous_pull = false\nanonymous_push = true\n\n"
        f'[auth.users]\nalice = "{hashed}"\n'
    )
    with EdgecacheServer(tmp_path_factory.mktemp("scan-locked"), config_text=config) as server:
        yield server


def pull_token(server: EdgecacheServer, repo: str, authorization: str | None = None) -> str:
    """A short-lived pull token edgecache issued (what edgecache hands a scanner)."""
    with server.client() as client:
        r = client.get(
            "/_edgecache/token",
            params={"service": "edgecache", "scope": f"repository:{repo}:pull"},
            headers={"Authorization": authorization} if authorization else {},
        )
        assert r.status_code == 200, r.text
        return f"Bearer {r.json()['token']}"


# ------------------------------------------------------------------------------ documents


def test_the_three_documents_load_with_the_documented_patches() -> None:
    for version in VERSIONS:
        api = load_spec(version)
        assert isinstance(api, OpenAPI)
        assert load_spec_document(version)["info"]["version"] == version
    assert SPEC_PATCHES["1.0"] == SPEC_PATCHES["1.1"] == ()
    assert len(SPEC_PATCHES["1.2"]) == 2, SPEC_PATCHES["1.2"]
    assert any("sbom_media_type" in p for p in SPEC_PATCHES["1.2"])
    assert any("descriptions" in p for p in SPEC_PATCHES["1.2"])
    # Why the loader patches: as PyYAML reads them, no document is usable (int status codes
    # break the validator itself).
    for version in VERSIONS:
        with pytest.raises((OpenAPIValidationError, TypeError)):
            OpenAPI.from_dict(read_spec_yaml(version))
    raw = copy.deepcopy(load_spec_document("1.2"))
    param = next(
        p
        for p in raw["paths"]["/scan/{scan_request_id}/report"]["get"]["parameters"]
        if p["name"] == "sbom_media_type"
    )
    param["enum"] = param["schema"].pop("enum")
    with pytest.raises(OpenAPIValidationError):
        OpenAPI.from_dict(raw)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_known_good_exchange_validates_and_a_bad_one_does_not(version: str) -> None:
    api = load_spec(version)
    host = "http://scanner.example:8080"
    body = json.dumps(scan_body("https://edge.example", "library/nginx", "sha256:" + "a" * 64))
    post = MockRequest(
        host,
        "post",
        "/api/v1/scan",
        headers={"Authorization": basic("harbor", "x"), "Content-Type": SCAN_REQUEST_1_0},
        data=body.encode(),
        content_type=SCAN_REQUEST_1_0,
    )
    api.validate_request(post)
    api.validate_response(post, MockResponse(b'{"id":"x-1"}', 202, content_type=SCAN_RESPONSE))
    with pytest.raises(Exception, match="validation"):
        api.validate_request(
            MockRequest(
                host,
                "post",
                "/api/v1/scan",
                headers={"Authorization": basic("harbor", "x")},
                data=b'{"registry": "https://edge.example"}',
                content_type=SCAN_REQUEST_1_0,
            )
        )
    get = MockRequest(
        host,
        "get",
        "/api/v1/scan/x-1/report",
        headers={"Authorization": "Bearer t", "Accept": HARBOR_VULN_REPORT},
    )
    api.validate_request(get)
    report = {
        "generated_at": "2024-05-14T10:00:00.5Z",
        "artifact": {"repository": "library/nginx", "digest": "sha256:" + "a" * 64},
        "scanner": {"name": "fake-scanner", "vendor": "edgecache tests", "version": "1"},
        "severity": "High",
        "vulnerabilities": [{"id": "CVE-1", "package": "p", "version": "1", "severity": "High"}],
    }
    types = [HARBOR_VULN_REPORT] + ([VULN_REPORT_1_1] if version != "1.0" else [])
    for media in types:
        ok = MockResponse(json.dumps(report).encode(), 200, content_type=media)
        api.validate_response(get, ok)
        bad = MockResponse(
            json.dumps({**report, "severity": "Severe"}).encode(), 200, content_type=media
        )
        with pytest.raises(Exception, match=r"validation|not valid"):
            api.validate_response(get, bad)
    api.validate_response(get, MockResponse(b"", 302, headers={"Refresh-After": "5"}))


# ------------------------------------------------------------------------ refusals, auth


@pytest.mark.parametrize("version", VERSIONS)
def test_metadata_says_what_the_fake_consumes_and_produces(version: str) -> None:
    with FakeScannerAdapter(version, sbom=version == "1.2") as fake:
        r = httpx.get(f"{fake.url}/api/v1/metadata", headers={"Accept": METADATA_1_0})
    assert r.status_code == 200
    assert r.headers["content-type"] == METADATA_1_0
    meta = r.json()
    assert meta["scanner"]["name"] == "fake-scanner"
    assert meta["properties"]["harbor.scanner-adapter/scanner-type"] == ("os-package-vulnerability")
    assert meta["properties"]["harbor.scanner-adapter/vulnerability-database-updated-at"]
    vuln = meta["capabilities"][0]
    assert vuln["consumes_mime_types"] == [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
    if version == "1.0":
        assert vuln["produces_mime_types"] == [HARBOR_VULN_REPORT]
    else:
        assert vuln["produces_mime_types"] == [VULN_REPORT_1_1, HARBOR_VULN_REPORT]
    if version == "1.2":
        assert vuln["type"] == "vulnerability"
        assert meta["capabilities"][1]["type"] == "sbom"
        assert meta["capabilities"][1]["produces_mime_types"] == [SBOM_REPORT]
    else:
        assert len(meta["capabilities"]) == 1 and "type" not in vuln


def test_bad_scan_requests_are_refused_and_recorded() -> None:
    good = scan_body("http://127.0.0.1:9", "library/nginx", "sha256:" + "b" * 64)
    cases: list[tuple[Any, str, int, str]] = [
        ({"artifact": good["artifact"]}, SCAN_REQUEST_1_0, 400, "registry"),
        ({**good, "registry": {"url": 5}}, SCAN_REQUEST_1_0, 400, "body.registry.url"),
        (good, "application/json", 400, "mimetype"),
        (b'{"registry": ', SCAN_REQUEST_1_0, 400, "deserialize"),
        (b"", SCAN_REQUEST_1_0, 400, "EOF"),
        ({**good, "registy": {}}, SCAN_REQUEST_1_0, 400, "registy"),
        ({**good, "registry": {"url": ""}}, SCAN_REQUEST_1_0, 422, "missing registry.url"),
        ({**good, "registry": {"url": "nope"}}, SCAN_REQUEST_1_0, 422, "invalid registry.url"),
        (
            {**good, "artifact": {"repository": "a", "digest": "latest"}},
            SCAN_REQUEST_1_0,
            422,
            "fake-only",
        ),
    ]
    with FakeScannerAdapter("1.1") as fake:
        for body, content_type, status, needle in cases:
            r = post_scan(fake, body, content_type=content_type)
            assert r.status_code == status, (body, r.text)
            assert needle in error_message(r), (needle, r.text)
        rejections = fake.rejections
        assert [x.status for x in rejections] == [c[2] for c in cases]
        assert rejections[1].body == cases[1][0]
        assert fake.scans == {}
    with FakeScannerAdapter("1.1", strict=False) as lenient:
        assert post_scan(lenient, {**good, "registy": {}}).status_code == 202
        lenient.wait_scans_done(TIMEOUT)


def test_report_requests_are_validated_too() -> None:
    with FakeScannerAdapter("1.2", sbom=True) as fake:
        r = get_report(fake, "nope", SBOM_REPORT, params={"sbom_media_type": "application/xml"})
        assert r.status_code == 400
        assert "sbom_media_type" in error_message(r)
        r = get_report(fake, "nope", SBOM_REPORT)
        assert r.status_code == 400 and "sbom_media_type" in error_message(r)
        r = get_report(fake, "nope", "text/html")
        assert r.status_code == 501
        assert get_report(fake, "nope").status_code == 404
        assert [x.status for x in fake.rejections] == [400, 400, 501]
    with FakeScannerAdapter("1.0") as old:
        assert get_report(old, "nope", VULN_REPORT_1_1).status_code == 415
        r = httpx.post(f"{old.url}/api/v1/metadata")
        assert r.status_code == 405
        assert httpx.get(f"{old.url}/api/v2/metadata").status_code == 404


@pytest.mark.parametrize(
    ("auth", "good", "wrong"),
    [
        (("basic", "harbor", "s3cret"), {"Authorization": basic("harbor", "s3cret")},
         {"Authorization": basic("harbor", "guess")}),
        (("bearer", "tok-1"), {"Authorization": "Bearer tok-1"},
         {"Authorization": "Bearer tok-2"}),
        (("apikey", "key-1"), {API_KEY_HEADER: "key-1"}, {"Authorization": "Bearer key-1"}),
    ],
)  # fmt: skip
def test_adapter_auth_modes(
    auth: tuple[str, ...], good: dict[str, str], wrong: dict[str, str]
) -> None:
    with FakeScannerAdapter("1.1", auth=auth) as fake:
        url = f"{fake.url}/api/v1/metadata"
        for headers in ({}, wrong):
            r = httpx.get(url, headers=headers)
            assert r.status_code == 401
            assert error_message(r) != ""
        r = post_scan(fake, scan_body("http://127.0.0.1:9", "a", "sha256:" + "c" * 64))
        assert r.status_code == 401
        assert httpx.get(url, headers=good).status_code == 200
        assert [x.status for x in fake.rejections] == [401, 401, 401]
        assert fake.scans == {}
    with FakeScannerAdapter("1.1") as open_fake:  # no auth: anything goes
        assert httpx.get(f"{open_fake.url}/api/v1/metadata", headers=wrong).status_code == 200


def test_auth_argument_is_checked() -> None:
    with pytest.raises(ValueError):
        FakeScannerAdapter(auth=("basic", "only-user"))
    with pytest.raises(ValueError):
        FakeScannerAdapter("1.1", sbom=True)
    with pytest.raises(ValueError):
        FakeScannerAdapter("2.0")


# ------------------------------------------------------------------------------- polling


def test_report_is_302_with_refresh_after_then_200(
    edgecache: EdgecacheServer, marker_image: tuple[str, str]
) -> None:
    repo, digest = marker_image
    with FakeScannerAdapter("1.1", pending_polls=2) as fake:
        scan = scan_and_wait(fake, scan_body(edgecache.url, repo, digest))
        answers = [get_report(fake, scan.id) for _ in range(3)]
        assert [r.status_code for r in answers] == [302, 302, 200]
        for r in answers[:2]:
            assert r.headers["Refresh-After"] == "1"
            assert r.headers["Location"] == f"/api/v1/scan/{scan.id}/report"
            assert r.content == b""
        assert answers[2].headers["content-type"] == HARBOR_VULN_REPORT
        assert fake.scans[scan.id].answers == [302, 302, 200]
    with FakeScannerAdapter(
        "1.2", pending_polls=1, refresh_after=7, refresh_header="Retry-After", location=False
    ) as fake:
        scan = scan_and_wait(fake, scan_body(edgecache.url, repo, digest))
        r = get_report(fake, scan.id)
        assert r.status_code == 302
        assert r.headers["Retry-After"] == "7"
        assert "Refresh-After" not in r.headers and "Location" not in r.headers
        assert get_report(fake, scan.id).status_code == 200


def test_lost_scans_answer_404(edgecache: EdgecacheServer, marker_image: tuple[str, str]) -> None:
    repo, digest = marker_image
    with FakeScannerAdapter("1.1", pending_polls=0, lose_first=2) as fake:
        scan = scan_and_wait(fake, scan_body(edgecache.url, repo, digest))
        statuses = [get_report(fake, scan.id).status_code for _ in range(3)]
        assert statuses == [404, 404, 200]
        assert "cannot find scan job" in error_message(get_report(fake, "no-such-id"))
    with FakeScannerAdapter("1.1", pending_polls=0, lose_scans=1) as fake:
        lost = scan_and_wait(fake, scan_body(edgecache.url, repo, digest))
        assert [get_report(fake, lost.id).status_code for _ in range(3)] == [404] * 3
        again = scan_and_wait(fake, scan_body(edgecache.url, repo, digest))  # resubmitted
        assert get_report(fake, again.id).status_code == 200


def test_failing_and_never_finishing_adapters(
    edgecache: EdgecacheServer, marker_image: tuple[str, str]
) -> None:
    repo, digest = marker_image
    body = scan_body(edgecache.url, repo, digest)
    with FakeScannerAdapter("1.1", fail_scans=1, never_finish=True) as fake:
        r = post_scan(fake, body)
        assert r.status_code == 500
        assert "enqueuing scan job" in error_message(r)
        scan = scan_and_wait(fake, body)
        assert scan.ok
        assert {get_report(fake, scan.id).status_code for _ in range(5)} == {302}


# ------------------------------------------------------------------------------- reports


def test_reports_in_both_types_hold_exactly_the_marker_findings(
    edgecache: EdgecacheServer, marker_image: tuple[str, str]
) -> None:
    repo, digest = marker_image
    with FakeScannerAdapter("1.1", pending_polls=0) as fake:
        scan = scan_and_wait(fake, scan_body(edgecache.url, repo, digest))
        harbor = final_report(fake, scan.id, HARBOR_VULN_REPORT)
        rich = final_report(fake, scan.id, VULN_REPORT_1_1)
        default = final_report(fake, scan.id, accept=None)
    assert harbor.status_code == rich.status_code == 200
    assert rich.headers["content-type"] == VULN_REPORT_1_1
    assert default.headers["content-type"] == HARBOR_VULN_REPORT  # the README's default
    report = harbor.json()
    assert report["severity"] == "High"
    assert report["scanner"] == {
        "name": "fake-scanner",
        "vendor": "edgecache tests",
        "version": "0.1.0-fake",
    }
    assert report["artifact"] == scan_body(edgecache.url, repo, digest)["artifact"]
    items = report["vulnerabilities"]
    assert [(v["id"], v["package"], v["version"], v["severity"]) for v in items] == [
        (v["id"], v["package"], v["version"], v["severity"]) for v in VULNS
    ]
    assert items[0]["fix_version"] == "3.0.13"
    assert "fix_version" not in items[2]  # empty: omitted, as trivy does
    assert items[2]["links"] == VULNS[2]["links"] and items[1]["links"] == []
    assert all("cwe_ids" not in v and "vendor_attributes" not in v for v in items)
    layer = scan.layers[1]
    assert layer["marker"] == MARKER
    assert items[0]["layer"] == {"digest": layer["digest"], "diff_id": layer["diff_id"]}
    assert rich.json()["vulnerabilities"][2]["cwe_ids"] == ["CWE-476"]
    assert rich.json()["vulnerabilities"][0]["vendor_attributes"] == {}
    assert scan.vulnerability_ids == [v["id"] for v in VULNS]


def test_no_marker_no_vulnerabilities_and_plain_tar_layers(edgecache: EdgecacheServer) -> None:
    plain_repo, clean_repo = unique_repo("plain"), unique_repo("clean")
    one = [{"id": "CVE-2020-1", "package": "p", "version": "1", "severity": "Critical"}]
    plain = push_marker_image(edgecache, plain_repo, [marker_layer(one, compress=False)])
    clean_layer = marker_layer([])  # a marker with an empty list: no findings
    clean = push_marker_image(edgecache, clean_repo, [clean_layer])
    with FakeScannerAdapter("1.0", pending_polls=0) as fake:
        a = scan_and_wait(fake, scan_body(edgecache.url, plain_repo, plain))
        b = scan_and_wait(fake, scan_body(edgecache.url, clean_repo, clean))
        ra, rb = final_report(fake, a.id).json(), final_report(fake, b.id).json()
    assert ra["severity"] == "Critical" and [v["id"] for v in ra["vulnerabilities"]] == [
        "CVE-2020-1"
    ]
    assert rb == {**rb, "severity": "Unknown", "vulnerabilities": []}


def test_sbom_reports_on_v12(edgecache: EdgecacheServer, marker_image: tuple[str, str]) -> None:
    repo, digest = marker_image
    body = {
        **scan_body(edgecache.url, repo, digest),
        "enabled_capabilities": [
            {
                "type": "sbom",
                "produces_mime_types": [SBOM_REPORT],
                "parameters": {"sbom_media_types": [SPDX_JSON]},
            }
        ],
    }
    with FakeScannerAdapter("1.2", pending_polls=0) as no_sbom:
        r = post_scan(no_sbom, body)
        assert r.status_code == 501 and "sbom" in error_message(r)
    with FakeScannerAdapter("1.2", pending_polls=0, sbom=True) as fake:
        scan = scan_and_wait(fake, body)
        spdx = final_report(fake, scan.id, SBOM_REPORT, params={"sbom_media_type": SPDX_JSON})
        cdx = final_report(fake, scan.id, SBOM_REPORT, params={"sbom_media_type": CYCLONEDX_JSON})
    assert spdx.status_code == cdx.status_code == 200
    assert spdx.headers["content-type"] == SBOM_REPORT
    assert spdx.json()["media_type"] == SPDX_JSON
    names = {(p["name"], p["versionInfo"]) for p in spdx.json()["sbom"]["packages"]}
    assert names == {(v["package"], v["version"]) for v in VULNS}
    assert len(cdx.json()["sbom"]["components"]) == len(VULNS)


def test_pull_failures_end_in_an_error_report(
    edgecache: EdgecacheServer, marker_image: tuple[str, str]
) -> None:
    repo, digest = marker_image
    with FakeScannerAdapter("1.1", pending_polls=0) as fake:
        missing = scan_and_wait(fake, scan_body(edgecache.url, repo, "sha256:" + "d" * 64))
        r = final_report(fake, missing.id)
        assert r.status_code == 500 and "HTTP 404" in error_message(r)
        assert missing.pull is not None and missing.pull.statuses == [404]
        odd = scan_and_wait(fake, scan_body(edgecache.url, repo, digest, "Token abc"))
        r = final_report(fake, odd.id)
        assert error_message(r) == "unrecognized authorization type: Token"  # trivy's words
        assert odd.pull is not None and odd.pull.exchanges == []
        bad_token = scan_and_wait(fake, scan_body(edgecache.url, repo, digest, "Bearer nope"))
        assert "HTTP 401" in bad_token.error  # a bearer token is checked even here


def test_a_bug_in_the_fake_fails_loudly(
    edgecache: EdgecacheServer, marker_image: tuple[str, str]
) -> None:
    class Broken(FakeScannerAdapter):
        def vulnerability_report(self, scan: ScanRecord, media: str) -> dict[str, Any]:
            return {**super().vulnerability_report(scan, media), "severity": "Severe"}

    repo, digest = marker_image
    fake = Broken("1.1", pending_polls=0).start()
    scan = scan_and_wait(fake, scan_body(edgecache.url, repo, digest))
    r = get_report(fake, scan.id)
    assert r.status_code == 500 and "bug in the fake" in r.text
    assert "Severe" in fake.internal_errors[0]
    with pytest.raises(AssertionError, match="bug in the fake itself"):
        fake.__exit__(None, None, None)


def test_a_closed_adapter_refuses_connections() -> None:
    fake = FakeScannerAdapter().start()
    url = fake.url
    assert httpx.get(f"{url}/api/v1/metadata").status_code == 200
    fake.close()
    fake.close()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/v1/metadata")


def test_marker_layer_is_deterministic(tmp_path: Path) -> None:
    layer = marker_layer(VULNS, extra_files={"bin/sh": b"#!"})
    assert layer == marker_layer(copy.deepcopy(VULNS), extra_files={"bin/sh": b"#!"})
    assert layer[:2] == b"\x1f\x8b" and layer != marker_layer(VULNS[:1])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["bin/sh", MARKER]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
        marker = tar.extractfile(members[1])
        assert marker is not None and json.loads(marker.read()) == VULNS
    plain = marker_layer(VULNS, extra_files={"bin/sh": b"#!"}, compress=False)
    assert gzip.decompress(layer) == plain


# ---------------------------------------------------------------------------- end to end


def test_end_to_end_the_fake_pulls_with_the_given_authorization(
    edgecache: EdgecacheServer, locked: EdgecacheServer
) -> None:
    repo = unique_repo("e2e")
    layer = marker_layer(VULNS[:2])
    config_and_layer = push_marker_image(edgecache, repo, [layer])
    locked_digest = push_marker_image(locked, repo, [layer])
    assert locked_digest == config_and_layer  # same bytes, same digest
    with FakeScannerAdapter("1.1", auth=("bearer", "harbor-side")) as fake:
        auth = {"Authorization": "Bearer harbor-side"}

        def scan(server: EdgecacheServer, authorization: str) -> tuple[ScanRecord, Any]:
            body = scan_body(server.url, repo, locked_digest, authorization)
            r = post_scan(fake, body, headers=auth)
            assert r.status_code == 202, r.text
            record = fake.wait_scan_done(r.json()["id"], TIMEOUT)
            answers = [
                get_report(fake, record.id, VULN_REPORT_1_1, headers=auth)
                for _ in range(fake.pending_polls + 1)
            ]
            assert [a.status_code for a in answers[:-1]] == [302] * fake.pending_polls
            return record, answers[-1]

        # The anonymous-pull server, with a pull token it issued.
        token = pull_token(edgecache, repo)
        record, r = scan(edgecache, token)
        assert r.status_code == 200, r.text
        assert record.authorization == token
        assert record.pull is not None and record.pull.ok
        assert record.pull.blob_digests[1] == sha256_bytes(layer)
        assert [v["id"] for v in r.json()["vulnerabilities"]] == ["CVE-2024-0001", "CVE-2023-4242"]
        assert r.json()["severity"] == "High"

        # A server whose pulls need credentials: a token issued to alice works ...
        alice = pull_token(locked, repo, basic("alice", PASSWORD))
        record, r = scan(locked, alice)
        assert r.status_code == 200, r.text
        assert [v["id"] for v in r.json()["vulnerabilities"]] == ["CVE-2024-0001", "CVE-2023-4242"]
        # ... a wrong or missing Authorization is an error report, not an empty one.
        for wrong in (basic("alice", "guess"), ""):
            record, r = scan(locked, wrong)
            assert r.status_code == 500
            assert "HTTP 401" in error_message(r)
            assert record.pull is not None and record.pull.statuses == [401]
            assert record.findings == []
