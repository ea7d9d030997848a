"""A real containerd pulls through edgecache, configured only by the hosts.toml we generate.

DEPENDS ON the pull-through routing (mirror mode: `/v2/<repo>/...?ns=<host>` -> the upstream
whose name or alias is <host>). Until that works, containerd falls back to the hosts.toml
`server` (the upstream itself), the pull still succeeds, and the check that edgecache
served the blobs is what fails.

The upstream is a real `docker-registry` on 127.0.0.1:PORT; the image reference containerd
pulls is `127.0.0.1:PORT/team/app:v1`, so containerd sends `?ns=127.0.0.1:PORT` to edgecache
and finds its hosts.toml in `<hosts dir>/127.0.0.1_PORT_/`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgecache import config as edgecache_config
from edgecache.mirror_config import containerd_hosts, write_containerd_hosts
from tests.support import (
    Containerd,
    DockerRegistry,
    EdgecacheServer,
    make_image,
    oci_layout_manifest,
    require_tool,
    run,
)

MiB = 1 << 20
_SAMPLE = re.compile(r"^edgecache_http_requests_total\{([^}]*)\} (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    require_tool("containerd")
    require_tool("ctr")
    # Short base path: containerd's unix sockets must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="ec-mcfg-") as base, Containerd(base) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    with DockerRegistry(tmp_path_factory.mktemp("upstream")) as registry:
        yield registry


def served(client: httpx.Client, route_word: str) -> int:
    """Successful GETs edgecache answered on routes whose name contains `route_word`."""
    total = 0.0
    for labels, value in _SAMPLE.findall(client.get("/metrics").text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if (
            route_word in fields.get("route", "")
            and fields.get("method") == "GET"
            and fields.get("status") in ("200", "206")
        ):
            total += float(value)
    return int(total)


@pytest.mark.parametrize("naming", ["name", "url-host"])
def test_ctr_pulls_through_generated_hosts_toml(
    naming: str,
    upstream: DockerRegistry,
    containerd: Containerd,
    tmp_path: Path,
) -> None:
    repo = f"team/app-{naming}"
    layout = make_image(tmp_path, [2 * MiB, 300 * 1024, 100])
    run(
        [require_tool("skopeo"), "--insecure-policy", "copy", "--dest-tls-verify=false",
         layout, f"docker://{upstream.host}/{repo}:v1"],
        timeout=300,
    )  # fmt: skip
    digest, _ = oci_layout_manifest(layout)

    # edgecache answers the ns containerd sends (the upstream's host:port) either because it
    # is the upstream's name (what `serve --upstream 127.0.0.1:PORT=URL` gives; EdgecacheServer
    # takes a config file, which is the same) or because it is the host of the upstream's URL.
    if naming == "name":
        config_text = f'[upstreams."{upstream.host}"]\nurl = "{upstream.url}"\n'
    else:
        config_text = f'[upstreams.lab]\nurl = "{upstream.url}"\n'
    with EdgecacheServer(tmp_path / "cache", config_text=config_text) as cache:
        assert cache.config_path is not None
        config = edgecache_config.load(cache.config_path, env={})
        files = containerd_hosts(config.upstreams, cache.url)
        hosts_dir = tmp_path / "certs.d"
        written = write_containerd_hosts(files, hosts_dir)
        # containerd looks for "host_port_" first (docs/hosts.md, "Port Handling").
        assert written == [hosts_dir / f"127.0.0.1_{upstream.port}_" / "hosts.toml"]

        with cache.client() as client:
            blobs_before = served(client, "blob")
            manifests_before = served(client, "manifest")
            name = f"{upstream.host}/{repo}:v1"
            containerd.ctr(
                "images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native", name,
                namespace=f"mcfg-{naming}",
            )  # fmt: skip
            listing = containerd.ctr("images", "ls", namespace=f"mcfg-{naming}").stdout
            assert re.search(rf"^{re.escape(name)}\s+\S+\s+{digest}\s", listing, re.M), listing

            # Served by edgecache, not by containerd's fallback to `server` (the upstream):
            # the manifest and the config + 3 layer blobs came through edgecache.
            blobs = served(client, "blob") - blobs_before
            manifests = served(client, "manifest") - manifests_before
            assert manifests >= 1 and blobs >= 4, (
                f"edgecache answered {manifests} manifest GETs and {blobs} blob GETs with "
                "200/206: containerd fell back to the upstream (see edgecache log for the "
                "?ns= requests and their statuses)"
            )
