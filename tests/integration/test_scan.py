"""Scanning and pull policies against the real server (owner and worker), real containerd and
docker-registry, and a FAKE scanner adapter (tests/fakes/scanner.py: it serves Harbor's
pluggable scanner API exactly, validates every request and response against the saved OpenAPI
document, and really pulls the image from edgecache with the credential it was given; its
findings come from a marker file the test puts in an image layer).

What is checked: a scan on push; a vulnerable image refused with 412 (containerd too), by tag,
by digest and by HEAD, and let through by the allowlist; an expired allowlist entry exempts
nothing; the adapter's credential reads only that repository; the first proxy pull of a new
image waits for its scan, which fetched it from the upstream once; a scanner that is down
with unscanned = wait and on_scanner_down deny / allow, and unscanned = deny; cosign
signatures (signed, unsigned, signed by another key); reports in the referrers API, in
`edgecache report`, and after a restart.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import jwt
import pytest

from tests.fakes.cosign import new_key, sign_image
from tests.fakes.scanner import FakeScannerAdapter, marker_layer
from tests.integration.test_proxy import metric
from tests.support import Containerd, EdgecacheServer, free_port, require_tool, wait_for
from tests.upstreams import RunningUpstream, start_registry

PASSWORD = "scan-pass-123"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
HIGH = {"id": "CVE-2099-0001", "package": "openssl", "version": "3.0.1",
        "fix_version": "3.0.9", "severity": "High"}  # fmt: skip
LOW = {"id": "CVE-2099-0002", "package": "zlib", "version": "1.2", "severity": "Low"}
MEDIUM = {"id": "CVE-2099-0003", "package": "curl", "version": "8.0", "severity": "Medium"}


def image_blobs(vulns: list[dict[str, Any]], salt: str) -> tuple[bytes, bytes, bytes]:
    """(config, layer, manifest) of a one-layer image whose layer holds the scanner's marker;
    a real image: containerd unpacks it and checks the config's diff_ids."""
    layer = marker_layer(vulns, extra_files={"salt.txt": salt.encode()})
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer), "size": len(layer)}],
    }).encode()  # fmt: skip
    return config, layer, manifest


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(base_url: str, repo: str, tag: str, blobs: tuple[bytes, ...], manifest: bytes,
         headers: dict[str, str] | None = None) -> str:  # fmt: skip
    with httpx.Client(base_url=base_url, headers=headers or {}, timeout=60) as client:
        for blob in blobs:
            answer = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(blob)},
                                 content=blob)  # fmt: skip
            if answer.status_code == 202:  # docker-registry: monolithic in two steps
                location = answer.headers["location"]
                joined = "&" if "?" in location else "?"
                answer = client.put(f"{location}{joined}digest={sha(blob)}", content=blob)
            assert answer.status_code == 201, answer.text
        put = client.put(f"/v2/{repo}/manifests/{tag}", content=manifest,
                         headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert put.status_code == 201, put.text
    return sha(manifest)


def push_image(server: EdgecacheServer, repo: str, vulns: list[dict[str, Any]], salt: str) -> str:
    config, layer, manifest = image_blobs(vulns, salt)
    return push(server.url, repo, "v1", (config, layer), manifest, BASIC)


@pytest.fixture(scope="module")
def scanner() -> Iterator[FakeScannerAdapter]:
    with FakeScannerAdapter("1.1", auth=("apikey", "adapter-key-123"), pending_polls=1) as fake:
        yield fake


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


KEYS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    scanner: FakeScannerAdapter,
    upstream: RunningUpstream,
) -> Iterator[EdgecacheServer]:
    base = tmp_path_factory.mktemp("scan")
    (base / "adapter-key").write_text("adapter-key-123\n")
    KEYS["good"], pem = new_key("ecdsa-p256")
    KEYS["other"], _ = new_key("ed25519")
    (base / "cosign.pub").write_bytes(pem)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    config = f"""
[auth]
anonymous_pull = false
anonymous_push = true
[auth.users]
alice = "{hashed}"

[upstreams.up]
url = "{upstream.url}"
retries = 1

[scanners.fake]
url = "{scanner.url}"
auth = "apikey"
secret_file = "{base / "adapter-key"}"

[scan]
on = ["push", "preload"]
timeout = 60

[[pull_policies]]
repositories = ["gated/**"]
block_severity = "High"
allowlist = [{{ id = "CVE-2099-0001", expires = "2001-01-01" }}]

[[pull_policies]]
repositories = ["allowed/**"]
block_severity = "High"
allowlist = ["CVE-2099-0001"]

[[pull_policies]]
repositories = ["up/waited/**"]
block_severity = "Critical"
unscanned = "wait"
wait = 60

[[pull_policies]]
repositories = ["up/forged/**"]
block_severity = "High"
unscanned = "deny"

[[pull_policies]]
repositories = ["signed/**"]
require_signature = true
public_keys = ["{base / "cosign.pub"}"]
"""
    with EdgecacheServer(base, config_text=config) as srv:
        yield srv


def scanned(server: EdgecacheServer, image: str) -> dict[str, Any]:
    """The admin API's report of an image, once every manifest of it has one."""

    def ready() -> dict[str, Any] | None:
        with server.client() as client:
            token = {"Authorization": f"Bearer {server.admin_token}"}
            answer = client.get("/_edgecache/admin/report", params={"image": image}, headers=token)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return body if all(m["scanned"] for m in body["manifests"]) else None

    return wait_for(ready, timeout=60, what=f"the report of {image}")


def test_a_vulnerable_image_is_refused_and_the_allowlist_lets_it_through(
    server: EdgecacheServer, scanner: FakeScannerAdapter
) -> None:
    digest = push_image(server, "gated/app", [HIGH, LOW], "gated")
    report = scanned(server, "gated/app:v1")
    assert {v["id"] for v in report["manifests"][0]["report"]["vulnerabilities"]} == {
        HIGH["id"],
        LOW["id"],
    }
    with server.client(headers=BASIC) as client:
        for method, ref in (("GET", "v1"), ("HEAD", "v1"), ("GET", digest)):
            refused = client.request(method, f"/v2/gated/app/manifests/{ref}")
            assert refused.status_code == 412, (method, ref, refused.text)
        error = client.get("/v2/gated/app/manifests/v1").json()["errors"][0]
    assert error["code"] == "PROJECTPOLICYVIOLATION"
    # Harbor's wording; the expired allowlist entry exempts nothing.
    assert error["message"].startswith("current image with 1 vulnerability cannot be pulled")
    assert '"High"' in error["message"] and "CVE-2099-0001" in error["message"]
    assert "CVE-2099-0002" not in error["message"]  # Low: under the threshold
    # The same image where the CVE is allowlisted.
    push_image(server, "allowed/app", [HIGH, LOW], "gated")
    scanned(server, "allowed/app:v1")
    with server.client(headers=BASIC) as client:
        assert client.get("/v2/allowed/app/manifests/v1").status_code == 200
        assert metric(client, "edgecache_pulls_blocked_total", '{reason="vulnerabilities"}') >= 3
    # The adapter pulled with a token for pull on gated/app alone, valid for the scan timeout.
    record = next(r for r in scanner.scans.values() if r.artifact["repository"] == "gated/app")
    assert record.ok and scanner.rejections == []
    token = record.authorization.removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "gated/app", "actions": ["pull"]}]
    assert claims["exp"] - claims["iat"] == 60
    with server.client() as client:
        other = client.get(
            "/v2/allowed/app/tags/list", headers={"Authorization": f"Bearer {token}"}
        )
        assert other.status_code == 401
    assert token not in server.log_text() and "adapter-key-123" not in server.log_text()


def test_containerd_is_refused_with_the_message_and_pulls_the_allowlisted_image(
    server: EdgecacheServer,
) -> None:
    require_tool("containerd")
    push_image(server, "gated/ctr", [HIGH], "ctr")
    push_image(server, "allowed/ctr", [HIGH], "ctr")
    scanned(server, "gated/ctr:v1")
    scanned(server, "allowed/ctr:v1")
    with tempfile.TemporaryDirectory(prefix="ec-ctrd-") as base, Containerd(base) as daemon:
        pull = ["images", "pull", "--plain-http", "--snapshotter", "native",
                "--user", f"alice:{PASSWORD}"]  # fmt: skip
        refused = daemon.ctr(*pull, f"{server.host}/gated/ctr:v1", check=False)
        assert refused.returncode != 0
        assert "412" in refused.stderr or "Precondition Failed" in refused.stderr, refused.stderr
        daemon.ctr(*pull, f"{server.host}/allowed/ctr:v1")
        assert f"{server.host}/allowed/ctr:v1" in daemon.ctr("images", "ls").stdout


def test_the_first_proxy_pull_waits_for_the_scan_and_the_upstream_is_asked_once(
    server: EdgecacheServer, upstream: RunningUpstream
) -> None:
    config, layer, manifest = image_blobs([MEDIUM], "waited")
    push(upstream.url, "waited/app", "v1", (config, layer), manifest)
    with server.client(headers=BASIC) as client:
        got = client.get("/v2/up/waited/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200, got.text
        # The scan was done before the answer (Medium is under the Critical threshold).
        report = scanned(server, "up/waited/app:v1")
        assert report["manifests"][0]["record"]["severity"] == "Medium"
        for blob in (config, layer):
            answer = client.get(f"/v2/up/waited/app/blobs/{sha(blob)}")
            assert answer.status_code == 200 and answer.content == blob
    for blob in (config, layer):  # the scanner's pull fetched it; the client's was a hit
        assert upstream.settled_served_bytes(sha(blob), len(blob)) == len(blob)


def test_signatures_are_required_and_verified(server: EdgecacheServer) -> None:
    results = {}
    for name, key in (("good", KEYS["good"]), ("other", KEYS["other"]), ("none", None)):
        repo = f"signed/{name}"
        digest = push_image(server, repo, [], name)
        if key is not None:
            artifact = sign_image(digest, f"{server.host}/{repo}", key)
            push(server.url, repo, artifact.tag, tuple(artifact.blobs.values()),
                 artifact.manifest, BASIC)  # fmt: skip
        with server.client(headers=BASIC) as client:
            results[name] = client.get(f"/v2/{repo}/manifests/v1")
    assert results["good"].status_code == 200, results["good"].text
    assert results["other"].status_code == 412
    assert "does not verify" in results["other"].text
    assert results["none"].status_code == 412 and "no cosign signature" in results["none"].text
    with server.client() as client:
        assert metric(client, "edgecache_pulls_blocked_total", '{reason="signature"}') >= 2


def test_reports_show_in_the_referrers_api_the_cli_and_after_a_restart(
    server: EdgecacheServer, scanner: FakeScannerAdapter
) -> None:
    digest = push_image(server, "gated/kept", [HIGH], "kept")
    scanned(server, "gated/kept:v1")
    with server.client(headers=BASIC) as client:
        referrers = client.get(f"/v2/gated/kept/referrers/{digest}").json()["manifests"]
    assert [r["artifactType"] for r in referrers] == [
        "application/vnd.edgecache.vulnerability.report.v1+json"
    ]
    shown = server.cli("report", "--data", str(server.data), "gated/kept:v1")
    assert shown.returncode == 0, shown.stderr
    assert "CVE-2099-0001" in shown.stdout and "3.0.9" in shown.stdout and "High" in shown.stdout
    scans_before = len(scanner.scans)
    server.stop()
    server.restart()
    with server.client(headers=BASIC) as client:
        assert client.get("/v2/gated/kept/manifests/v1").status_code == 412
    assert len(scanner.scans) == scans_before  # the stored report, not a new scan


@pytest.fixture(scope="module")
def scannerless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    base = tmp_path_factory.mktemp("down")
    config = f"""
[auth]
anonymous_push = true

[scanners.gone]
url = "http://127.0.0.1:{free_port()}"

[[pull_policies]]
repositories = ["deny-when-down/**"]
unscanned = "wait"
wait = 1
on_scanner_down = "deny"

[[pull_policies]]
repositories = ["allow-when-down/**"]
unscanned = "wait"
wait = 1
on_scanner_down = "allow"

[[pull_policies]]
repositories = ["strict/**"]
unscanned = "deny"
"""
    with EdgecacheServer(base, config_text=config) as srv:
        yield srv


def test_a_scanner_that_is_down_and_unscanned_images(scannerless: EdgecacheServer) -> None:
    answers = {}
    for repo in ("deny-when-down/app", "allow-when-down/app", "strict/app"):
        push_image(scannerless, repo, [], repo)
        with scannerless.client() as client:
            answers[repo] = client.get(f"/v2/{repo}/manifests/v1")
    assert answers["deny-when-down/app"].status_code == 412
    assert "could not be scanned" in answers["deny-when-down/app"].text
    assert answers["allow-when-down/app"].status_code == 200
    assert answers["strict/app"].status_code == 412
    assert "has not been scanned" in answers["strict/app"].text
    status = scannerless.cli("status", "--data", str(scannerless.data), "--json")
    scanners = json.loads(status.stdout)["scanners"]
    assert scanners[0]["scanner"] == "gone" and scanners[0]["up"] is False


def test_a_preheat_policy_filters_on_the_reports(server: EdgecacheServer) -> None:
    push_image(server, "filtered/bad", [HIGH], "filtered-bad")
    push_image(server, "filtered/clean", [LOW], "filtered-clean")
    scanned(server, "filtered/bad:v1")
    scanned(server, "filtered/clean:v1")
    policy = {"name": "safe", "repositories": ["filtered/**"], "severity": "High"}
    token = {"Authorization": f"Bearer {server.admin_token}"}
    with server.client() as client:
        put = client.put("/_edgecache/admin/preheat/policies/safe", json=policy, headers=token)
        assert put.status_code == 200, put.text
    done = server.cli("preheat", "--data", str(server.data), "run", "safe", "--follow", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    images = {i["image"]: i for i in json.loads(done.stdout)["images"]}
    assert images["filtered/bad:v1"]["skipped"].startswith("vulnerable: ")
    assert "High" in images["filtered/bad:v1"]["skipped"]
    assert "skipped" not in images["filtered/clean:v1"]


def test_an_index_is_scanned_per_platform_and_the_cli_scans_and_reports(
    server: EdgecacheServer, scanner: FakeScannerAdapter
) -> None:
    entries = []
    blobs: list[bytes] = []
    for arch, vulns in (("amd64", [HIGH]), ("arm64", [MEDIUM])):
        config, layer, manifest = image_blobs(vulns, f"multi-{arch}")
        push(server.url, "multi/app", arch, (config, layer), manifest, BASIC)
        entries.append({"mediaType": OCI_MANIFEST, "digest": sha(manifest),
                        "size": len(manifest),
                        "platform": {"os": "linux", "architecture": arch}})  # fmt: skip
        blobs += [config, layer]
    index = json.dumps({"schemaVersion": 2, "manifests": entries, "mediaType": OCI_INDEX}).encode()
    with httpx.Client(base_url=server.url, headers=BASIC) as client:
        put = client.put("/v2/multi/app/manifests/v1", content=index,
                         headers={"Content-Type": OCI_INDEX})  # fmt: skip
        assert put.status_code == 201
    report = scanned(server, "multi/app:v1")
    assert [m["digest"] for m in report["manifests"]] == [e["digest"] for e in entries]
    assert [m["record"]["severity"] for m in report["manifests"]] == ["High", "Medium"]
    before = len(scanner.scans)
    rescan = server.cli("scan", "--data", str(server.data), "multi/app:v1")
    assert rescan.returncode == 0, rescan.stdout + rescan.stderr
    assert rescan.stdout.count(": done") == 2 and "highest severity High" in rescan.stdout
    assert len(scanner.scans) == before + 2
    shown = server.cli("report", "--data", str(server.data), "multi/app:v1", "--json")
    assert shown.returncode == 0
    assert len(json.loads(shown.stdout)["manifests"]) == 2


def test_pull_policies_set_through_the_admin_api_apply_in_every_process(
    server: EdgecacheServer,
) -> None:
    push_image(server, "hot/app", [], "hot")
    token = {"Authorization": f"Bearer {server.admin_token}"}
    with server.client() as client:
        assert client.get("/v2/hot/app/manifests/v1", headers=BASIC).status_code == 200
        policy = {"repositories": ["hot/**"], "require_signature": True}
        put = client.put("/_edgecache/admin/pull_policies/hot", json=policy, headers=token)
        assert put.status_code == 200, put.text
        listed = client.get("/_edgecache/admin/pull_policies", headers=token).json()
        assert listed[0]["name"] == "hot" and listed[0]["source"] == "admin"
        assert [p["source"] for p in listed[1:]] == ["config"] * (len(listed) - 1)
        bad = client.put("/_edgecache/admin/pull_policies/x", json={"unscanned": "maybe"},
                         headers=token)  # fmt: skip
        assert bad.status_code == 400 and "unscanned" in bad.text
        refused = client.put("/_edgecache/admin/pull_policies/config-1", json={}, headers=token)
        assert refused.status_code == 400 and "config file" in refused.text
    # New connections, spread by the kernel over the owner and the worker: each refuses.
    for _ in range(6):
        with server.client(headers=BASIC) as client:
            answer = client.get("/v2/hot/app/manifests/v1")
            assert answer.status_code == 412 and "no cosign signature" in answer.text
    with server.client() as client:
        deleted = client.delete("/_edgecache/admin/pull_policies/hot", headers=token)
        assert deleted.status_code == 200
    for _ in range(6):
        with server.client(headers=BASIC) as client:
            assert client.get("/v2/hot/app/manifests/v1").status_code == 200


def test_a_v12_adapter_with_the_sbom_capability_attaches_an_sbom(tmp_path: Path) -> None:
    with FakeScannerAdapter("1.2", sbom=True, pending_polls=1) as fake:
        config = (
            "[auth]\nanonymous_push = true\n\n[scanners.fake]\n"
            f'url = "{fake.url}"\n\n[scan]\non = ["push"]\n'
        )
        with EdgecacheServer(tmp_path / "sbom", config_text=config) as srv:
            digest = push_image(srv, "team/sbom", [HIGH], "sbom")
            scanned(srv, "team/sbom:v1")

            def referrers() -> list[dict[str, Any]] | None:
                with srv.client() as client:
                    listed = client.get(f"/v2/team/sbom/referrers/{digest}").json()["manifests"]
                return listed if len(listed) == 2 else None

            listed = wait_for(referrers, timeout=30, what="the report and the SBOM")
            kinds = sorted(m["artifactType"] for m in listed)
            assert kinds == [
                "application/spdx+json",
                "application/vnd.edgecache.vulnerability.report.v1+json",
            ]
            sbom = next(m for m in listed if m["artifactType"] == "application/spdx+json")
            with srv.client() as client:
                artifact = client.get(f"/v2/team/sbom/manifests/{sbom['digest']}").json()
                layer = artifact["layers"][0]
                document = client.get(f"/v2/team/sbom/blobs/{layer['digest']}").json()
            assert artifact["subject"]["digest"] == digest
            assert "openssl" in json.dumps(document)
        assert fake.rejections == []


def test_a_preload_is_scanned(
    server: EdgecacheServer, scanner: FakeScannerAdapter, tmp_path: Path
) -> None:
    push_image(server, "source/app", [MEDIUM], "preloaded")
    scanned(server, "source/app:v1")
    archive = tmp_path / "app.tar"
    exported = server.cli("export", "--data", str(server.data), "source/app:v1", "-o", str(archive))
    assert exported.returncode == 0, exported.stderr
    loaded = server.cli("preload", "--data", str(server.data), str(archive),
                        "--as", "preloaded/app:v1")  # fmt: skip
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    # Scanned on the preload event itself (not only a report exported along with the image).
    scanner.wait_until(
        lambda: [r for r in scanner.scans.values() if r.artifact["repository"] == "preloaded/app"],
        timeout=60,
        what="a scan of the preloaded image",
    )
    report = scanned(server, "preloaded/app:v1")
    assert report["manifests"][0]["record"]["severity"] == "Medium"


def test_a_report_travels_with_export_and_preload(
    server: EdgecacheServer, scannerless: EdgecacheServer, tmp_path: Path
) -> None:
    """Exported from here (where it was scanned), preloaded into a node whose scanner is down
    and whose policy denies unscanned images: the report came along, so it pulls."""
    digest = push_image(server, "source/travel", [LOW], "travel")
    scanned(server, "source/travel:v1")
    archive = tmp_path / "travel.tar"
    exported = server.cli("export", "--data", str(server.data), "source/travel:v1",
                          "-o", str(archive))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "1 referrer" in exported.stdout
    with scannerless.client() as client:
        assert client.get("/v2/strict/travel/manifests/v1").status_code == 404
    loaded = scannerless.cli("preload", "--data", str(scannerless.data), str(archive),
                             "--as", "strict/travel:v1")  # fmt: skip
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    with scannerless.client() as client:
        answer = client.get("/v2/strict/travel/manifests/v1")
        assert answer.status_code == 200, answer.text
        assert answer.headers["docker-content-digest"] == digest
    # A client may not push a report of its own (it would let any image through the gate).
    forged = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.edgecache.vulnerability.report.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                   "digest": sha(b"{}")},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
    }).encode()  # fmt: skip
    with httpx.Client(base_url=scannerless.url) as client:
        client.post("/v2/strict/travel/blobs/uploads/", params={"digest": sha(b"{}")},
                    content=b"{}")  # fmt: skip
        refused = client.put("/v2/strict/travel/manifests/forged", content=forged,
                             headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert refused.status_code == 403 and "cannot be pushed" in refused.text


def test_a_first_proxy_fetch_is_scanned_and_a_lost_scan_is_submitted_again(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    """[scan] on = ["pull"]; an adapter that loses its first scan (404 for every report
    request: it restarted) and answers Retry-After instead of Refresh-After."""
    config_blob, layer, manifest = image_blobs([LOW], "lost")
    digest = push(upstream.url, "lost/app", "v1", (config_blob, layer), manifest)
    with FakeScannerAdapter("1.1", lose_scans=1, refresh_header="Retry-After") as fake:
        config = (
            f'[upstreams.up]\nurl = "{upstream.url}"\n\n[scanners.fake]\nurl = "{fake.url}"\n\n'
            '[scan]\non = ["pull"]\n'
        )
        with EdgecacheServer(tmp_path / "lost", config_text=config) as srv:
            with srv.client() as client:
                got = client.get("/v2/up/lost/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
                assert got.status_code == 200
            report = scanned(srv, "up/lost/app:v1")
        assert report["manifests"][0]["record"]["severity"] == "Low"
        mine = [r for r in fake.scans.values() if r.artifact.get("digest") == digest]
        assert [r.lost for r in mine] == [True, False]  # submitted once more after the 404
        assert fake.rejections == []


def test_the_same_image_is_let_through_by_an_allowlist_and_blocked_again_when_it_expires(
    server: EdgecacheServer,
) -> None:
    push_image(server, "listed/app", [HIGH], "listed")
    scanned(server, "listed/app:v1")
    token = {"Authorization": f"Bearer {server.admin_token}"}

    def pull_with(allowlist: list[Any]) -> httpx.Response:
        policy = {"repositories": ["listed/**"], "block_severity": "High", "allowlist": allowlist}
        with server.client() as client:
            put = client.put("/_edgecache/admin/pull_policies/listed", json=policy, headers=token)
            assert put.status_code == 200, put.text
        with server.client(headers=BASIC) as client:
            return client.get("/v2/listed/app/manifests/v1")

    assert pull_with([]).status_code == 412
    assert pull_with([{"id": "CVE-2099-0001", "expires": "2999-01-01"}]).status_code == 200
    expired = pull_with([{"id": "CVE-2099-0001", "expires": "2001-01-01"}])
    assert expired.status_code == 412 and "CVE-2099-0001" in expired.text
    with server.client() as client:
        assert (
            client.delete("/_edgecache/admin/pull_policies/listed", headers=token).status_code
            == 200
        )


def test_a_report_from_the_upstream_opens_no_gate(
    server: EdgecacheServer, upstream: RunningUpstream
) -> None:
    """Whoever can push to the upstream can attach a "clean" report artifact to an image;
    fetched through this cache it is stored like any manifest, and trusted by nothing."""
    config_blob, layer, manifest = image_blobs([HIGH], "forged")
    digest = push(upstream.url, "forged/app", "v1", (config_blob, layer), manifest)
    clean = json.dumps({"generated_at": "2026-11-30T00:00:00Z", "vulnerabilities": [],
                        "scanner": {"name": "fake-scanner", "vendor": "x", "version": "1"},
                        "severity": "None"}).encode()  # fmt: skip
    forged = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.edgecache.vulnerability.report.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"),
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.scanner.adapter.vuln.report.harbor+json; "
                    "version=1.0", "digest": sha(clean), "size": len(clean)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest)},
        "annotations": {"io.edgecache.scanner": "fake"},
    }).encode()  # fmt: skip
    push(upstream.url, "forged/app", "report", (b"{}", clean), forged)
    with server.client(headers=BASIC) as client:
        # Fetched through the cache (stored before the gate answers; the gate refuses an
        # unscanned artifact too) with its blobs.
        client.get(f"/v2/up/forged/app/manifests/{sha(forged)}")
        assert client.get(f"/v2/up/forged/app/blobs/{sha(clean)}").status_code == 200
        listed = client.get(f"/v2/up/forged/app/referrers/{digest}").json()["manifests"]
        assert [m["digest"] for m in listed] == [sha(forged)]  # it is there, and ...
        refused = client.get("/v2/up/forged/app/manifests/v1")
    assert refused.status_code == 412 and "has not been scanned" in refused.text


def test_the_scanners_token_passes_the_gate_for_its_own_manifest_only(
    server: EdgecacheServer, scanner: FakeScannerAdapter
) -> None:
    first = push_image(server, "gated/twice", [HIGH], "twice-1")
    scanned(server, "gated/twice:v1")
    record = next(r for r in scanner.scans.values() if r.artifact.get("digest") == first)
    bearer = {"Authorization": record.authorization}
    config_blob, layer, manifest = image_blobs([HIGH], "twice-2")
    second = push(server.url, "gated/twice", "v2", (config_blob, layer), manifest, BASIC)
    scanned(server, "gated/twice:v2")
    with server.client() as client:
        # What it scans (a pull may be waiting for this very scan): readable.
        assert client.get(f"/v2/gated/twice/manifests/{first}", headers=bearer).status_code == 200
        # Another manifest of the same repository: gated like any client's pull.
        other = client.get(f"/v2/gated/twice/manifests/{second}", headers=bearer)
        assert other.status_code == 412, other.text
