"""Reports reach the other members of a site: two real edgecache nodes ([peers]) behind one
real docker-registry upstream, one FAKE scanner adapter (tests/fakes/scanner.py, validated
against the saved OpenAPI). An image scanned on node A is gated on node B by A's report, which
B copies (verified) instead of treating the image as unscanned."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.cosign import new_key, sign_image
from tests.fakes.scanner import FakeScannerAdapter
from tests.faultproxy import FaultProxy
from tests.integration.test_peers import UPSTREAM, make_site, running
from tests.integration.test_scan import HIGH, OCI_MANIFEST, image_blobs, push
from tests.upstreams import RunningUpstream, start_registry


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstream]:
    with start_registry(tmp_path_factory.mktemp("upstream"), "anonymous") as registry:
        yield registry


def test_a_report_made_on_one_node_gates_the_pull_on_another(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    host, _, port = upstream.host.rpartition(":")
    config, layer, manifest = image_blobs([HIGH], "site-report")
    digest = push(upstream.url, "team/app", "v1", (config, layer), manifest)
    with FaultProxy(host, int(port)) as relay, FakeScannerAdapter("1.1", pending_polls=1) as fake:
        key, pem = new_key("ecdsa-p256")
        (tmp_path / "cosign.pub").write_bytes(pem)
        extra = (
            f'\n[auth]\nanonymous_push = true\n\n[scanners.fake]\nurl = "{fake.url}"\n\n'
            f'[[pull_policies]]\nrepositories = ["{UPSTREAM}/**", "team/**"]\n'
            'block_severity = "High"\nunscanned = "deny"\n\n'
            '[[pull_policies]]\nrepositories = ["signed/**"]\nrequire_signature = true\n'
            f'public_keys = ["{tmp_path / "cosign.pub"}"]\n'
        )
        with running(make_site(tmp_path, relay, n=2, extra=extra)) as nodes:
            for node in nodes:
                node.start()
            a, b = nodes
            scanned = a.cli("scan", "--data", str(a.data), f"{UPSTREAM}/team/app:v1")
            assert scanned.returncode == 0, scanned.stdout + scanned.stderr
            assert len(fake.scans) == 1
            image = f"/v2/{UPSTREAM}/team/app/manifests/v1"
            with httpx.Client(base_url=b.url, timeout=60) as client:
                refused = client.get(image, headers={"Accept": OCI_MANIFEST})
                assert refused.status_code == 412
                # A's report, not "unscanned": B found it on the site.
                message = refused.json()["errors"][0]["message"]
                assert "1 vulnerability" in message and "CVE-2099-0001" in message
                listed = client.get(f"/v2/{UPSTREAM}/team/app/referrers/{digest}").json()
            assert [m["artifactType"] for m in listed["manifests"]] == [
                "application/vnd.edgecache.vulnerability.report.v1+json"
            ]
            assert len(fake.scans) == 1  # B scanned nothing itself
            report = b.cli("report", "--data", str(b.data), f"{UPSTREAM}/team/app:v1", "--json")
            assert report.returncode == 0, report.stderr
            assert json.loads(report.stdout)["manifests"][0]["record"]["severity"] == "High"

            # Pushed to A, relayed by B (stored only on A): B's gate applies, with A's
            # report and A's signature.
            local = push(a.url, "team/local", "v1", (config, layer), manifest)
            scanned = a.cli("scan", "--data", str(a.data), "team/local:v1")
            assert scanned.returncode == 0, scanned.stdout + scanned.stderr
            signed = push(a.url, "signed/app", "v1", (config, layer), manifest)
            signature = sign_image(signed, f"{a.host}/signed/app", key)
            push(a.url, "signed/app", signature.tag, tuple(signature.blobs.values()),
                 signature.manifest)  # fmt: skip
            push(a.url, "signed/unsigned", "v1", (config, layer), manifest)
            with httpx.Client(base_url=b.url, timeout=60) as client:
                relayed = client.get("/v2/team/local/manifests/v1")
                assert relayed.status_code == 412 and "CVE-2099-0001" in relayed.text
                assert client.get("/v2/signed/app/manifests/v1").status_code == 200
                unsigned = client.get("/v2/signed/unsigned/manifests/v1")
                assert unsigned.status_code == 412 and "no cosign signature" in unsigned.text
            assert local == signed  # the same image bytes in each repository
