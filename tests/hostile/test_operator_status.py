"""`edgecache status` and `edgecache gc` as a new operator reads them, from a real server.

status: dates and aligned tables, never epoch seconds or a Python dict. gc: an operator who
deletes an image and collects at once frees almost nothing, and is told why and until when.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    EdgecacheServer,
    anonymous_push_config,
    default_edgecache_argv,
    make_image,
    require_tool,
    run,
)
from tests.unit.transfer.archives import oci_layout


def cli(server: EdgecacheServer, *args: str) -> str:
    proc = server.cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgecacheServer]:
    base = tmp_path_factory.mktemp("status")
    with EdgecacheServer(base, config_text=anonymous_push_config()) as running:
        entries, _ = oci_layout({"team/app:1.0": [b"a layer " * 1000]})
        (base / "app.tar").write_bytes(entries.tar())
        run([*default_edgecache_argv(), "preload", "--data", running.data, base / "app.tar"])
        yield running


def test_status_prints_dates_and_tables(server: EdgecacheServer) -> None:
    out = cli(server, "status", "--data", str(server.data))
    assert not re.search(r"\b1\d{9}(\.\d+)?\b", out), out  # no epoch seconds
    assert "{" not in out and "'" not in out, out  # no Python dicts
    today = time.strftime("%Y-%m-%d")
    assert out.splitlines()[0].startswith("edgecache ") and f"{server.url}, {today} " in out
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("repository ")))
    assert re.fullmatch(r"repository\s+size", lines[header])
    row = lines[header + 1]
    assert re.fullmatch(r"docker\.io/team/app\s+\d+\.\d KiB", row), row
    assert lines[header].index("size") + 4 == len(row)  # right-aligned under its header
    assert re.search(r"^store bytes\s+\d+\.\d KiB \([\d,]+ bytes\)$", out, re.MULTILINE), out


def test_status_url_may_be_host_and_port(server: EdgecacheServer) -> None:
    out = cli(server, "status", "--url", server.host, "--token", server.admin_token)
    assert out.startswith("edgecache ") and f"at http://{server.host}," in out


def test_gc_says_what_the_grace_window_kept(server: EdgecacheServer, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    image = make_image(tmp_path, [20_000, 30_000], seed=3)
    run([skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false", image,
         f"docker://{server.host}/team/pushed:1"])  # fmt: skip
    with httpx.Client(base_url=server.url) as client:
        head = client.head(
            "/v2/team/pushed/manifests/1",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        digest = head.headers["docker-content-digest"]
        assert client.delete(f"/v2/team/pushed/manifests/{digest}").status_code == 202
    before = time.time()
    out = cli(server, "gc", "--data", str(server.data))
    # The deleted manifest goes; its config and two layers are inside the 1 h grace window.
    kept = re.search(
        r"^  3 objects \((\d+\.\d KiB)\) are younger than the grace window \(1 h, \[gc\] grace\) "
        r"and were kept; they go after (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$",
        out,
        re.MULTILINE,
    )
    assert kept, out
    until = time.mktime(time.strptime(kept.group(2), "%Y-%m-%d %H:%M:%S"))
    assert before + 3600 - 120 <= until <= time.time() + 3600
    assert out.startswith("gc freed 1 object, ")
    history = cli(server, "gc", "--data", str(server.data), "--history")
    assert "younger than the grace window: 3" in history.splitlines()[1]
    assert "Traceback" not in server.log_text()
