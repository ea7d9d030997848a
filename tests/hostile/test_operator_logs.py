"""The access log and the start-up banner, read where an operator reads them: in the log of a
real `edgecache serve` pulling through a real docker-registry (behind the fault proxy, so
that a download can be held open for a second client to join, and the upstream can go away).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faultproxy import FaultProxy
from tests.support import EdgecacheServer, default_edgecache_argv, free_port, run, wait_for
from tests.upstreams import PushedImage, RunningUpstream

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
NS = "registry.lab:5000"
# time client method path status bytes duration outcome
LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\S+) (?P<client>\S+) (?P<method>[A-Z]+) (?P<path>\S+) "
    r"(?P<status>\d+) (?P<bytes>\d+) (?P<ms>[\d.]+)ms (?P<cache>\S+)$"
)


def access_lines(text: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in map(LINE.match, text.splitlines()) if m]


def config(url: str, extra: str = "") -> str:
    return (
        f'[upstreams."{NS}"]\nurl = "{url}"\naliases = ["lab"]\nretries = 1\n'
        f"connect_timeout = 2.0\n{extra}"
    )


@pytest.fixture(scope="module")
def pushed(upstream: RunningUpstream) -> PushedImage:
    return upstream.push_test_image("lab/app", ("1.0",), layer=b"L" * (3 << 20))


@pytest.fixture
def proxy(upstream: RunningUpstream) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", int(upstream.host.rsplit(":", 1)[1])) as faults:
        yield faults


def test_every_outcome_is_logged_and_no_credential(
    tmp_path: Path, proxy: FaultProxy, pushed: PushedImage
) -> None:
    server = EdgecacheServer(tmp_path, config_text=config(proxy.url))
    manifest_path = "/v2/lab/app/manifests/1.0"
    blob_path = f"/v2/lab/app/blobs/{pushed.layer_digest}?ns={NS}"
    with server, server.client() as client:
        get = client.get(manifest_path, params={"ns": NS}, headers={"Accept": OCI_MANIFEST})
        assert get.status_code == 200  # miss
        get = client.get(manifest_path, params={"ns": NS}, headers={"Accept": OCI_MANIFEST})
        assert get.status_code == 200  # hit
        # Credentials in a header and in the query: neither may reach the log.
        refused = client.get(
            "/_edgecache/admin/status",
            params={"token": "QUERY-SECRET-42"},
            headers={"Authorization": "Bearer HEADER-SECRET-42"},
        )
        assert refused.status_code == 401
        # One download held open by the upstream, a second client joins it.
        proxy.stall()
        results: list[httpx.Response] = []
        first = threading.Thread(target=lambda: results.append(server.client().get(blob_path)))
        first.start()
        wait_for(lambda: proxy.holding, timeout=30, what="the upstream download to start")
        second = threading.Thread(target=lambda: results.append(server.client().get(blob_path)))
        second.start()
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        wait_for(
            lambda: (
                client.get("/_edgecache/admin/status", headers=admin).json()["proxy_misses"] == 2
            ),
            timeout=30,
            what="the second client to join the held download",
        )
        proxy.release()
        first.join(60)
        second.join(60)
        assert [r.content == pushed.layer for r in results] == [True, True]
        hit = client.get(blob_path)
        assert hit.status_code == 200 and hit.content == pushed.layer
        # The upstream goes away: the cached tag is served stale.
        proxy.refuse()
        stale = client.get(manifest_path, params={"ns": NS}, headers={"Accept": OCI_MANIFEST})
        assert stale.status_code == 200 and "Warning" in stale.headers
        # A CR LF in a path cannot forge a line.
        client.get("/v2/x%0D%0A2026-01-01T00:00:00%206.6.6.6%20GET%20/forged%20200%201%201ms%20hit")
    log = server.log_text()
    assert "SECRET-42" not in log and "Bearer" not in log
    lines = access_lines(log)
    assert not [line for line in lines if line["client"] == "6.6.6.6"], log
    assert [line for line in lines if line["path"].startswith("/v2/x%0D%0A2026")], log
    outcomes = [(line["path"], line["status"], line["cache"]) for line in lines]
    manifest = f"{manifest_path}?ns={NS}"
    assert outcomes.count((manifest, "200", "miss")) == 1, outcomes
    assert outcomes.count((manifest, "200", "hit")) == 1, outcomes
    assert outcomes.count((manifest, "200", "stale")) == 1, outcomes
    assert ("/_edgecache/admin/status", "401", "refused") in outcomes
    blob_outcomes = sorted(cache for path, _, cache in outcomes if path == blob_path)
    assert blob_outcomes == ["hit", "joined", "miss"], outcomes
    blob_lines = [line for line in lines if line["path"] == blob_path]
    assert all(int(line["bytes"]) == len(pushed.layer) for line in blob_lines)
    assert all(line["client"] == "127.0.0.1" and line["method"] == "GET" for line in lines)


def test_access_log_to_a_file_or_off(tmp_path: Path, upstream: RunningUpstream) -> None:
    path = tmp_path / "access.log"
    to_file = EdgecacheServer(
        tmp_path / "file", config_text=config(upstream.url, f'[server]\naccess_log = "{path}"\n')
    )
    with to_file, to_file.client() as client:
        assert client.get("/v2/").status_code == 200
        wait_for(lambda: path.exists() and path.read_text(), timeout=10, what="the access log")
    assert [line["path"] for line in access_lines(path.read_text())] == ["/v2/"]
    assert not access_lines(to_file.log_text())
    off = EdgecacheServer(
        tmp_path / "off", config_text=config(upstream.url, '[server]\naccess_log = "off"\n')
    )
    with off, off.client() as client:
        assert client.get("/v2/").status_code == 200
    assert "access log:  off" in off.log_text()
    assert not access_lines(off.log_text())


def test_access_log_in_a_missing_directory_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "access.log"
    (tmp_path / "c.toml").write_text(f'[server]\naccess_log = "{path}"\n')
    proc = subprocess.run(
        [*default_edgecache_argv(), "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--data", str(tmp_path / "d"), "--config", str(tmp_path / "c.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"edgecache: cannot write the access log {path}: no such file or directory"
    )


def test_banner_says_what_is_served_and_its_command_works(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    server = EdgecacheServer(tmp_path, config_text=config(upstream.url))
    with server:
        log = server.log_text()
        assert f"listening on {server.url} (data {server.data})" in log
        assert f"mirrors:     {NS} (also lab) at {upstream.url}" in log
        assert "pushes:      refused: no users are configured" in log
        command = next(
            line.split("containerd:", 1)[1] for line in log.splitlines() if "containerd:" in line
        )
        argv = shlex.split(command)
        assert argv[:3] == ["edgecache", "mirror-config", "containerd"]
        assert argv[-2:] == ["--write", "/etc/containerd/certs.d"]
        certs = tmp_path / "certs.d"
        run([*default_edgecache_argv(), *argv[1:-1], str(certs)])
    text = (certs / "registry.lab_5000_" / "hosts.toml").read_text()
    assert f'[host."{server.url}"]' in text
