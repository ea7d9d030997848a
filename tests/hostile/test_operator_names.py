"""Upstreams named host:port, first-class wherever a Docker reference appears.

A real docker-registry on 127.0.0.1:<port> is the upstream `registry.lab:5000` (alias `lab`,
URL http://127.0.0.1:<port>) of a running edgecache. containerd reaches it with
`?ns=registry.lab:5000`; the cache keeps it as `registry.lab:5000/<repo>`. Both directions are
tried with the real command: what the cache pulled comes out of `export` by any of the names a
user would type, and what `preload --as` puts in is served by ns and by project path.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import EdgecacheServer, default_edgecache_argv, free_port
from tests.unit.transfer.archives import oci_layout
from tests.upstreams import PushedImage, RunningUpstream

NAME = "registry.lab:5000"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECACHE_")}
    return subprocess.run(
        [*default_edgecache_argv(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def config_for(url: str) -> str:
    return f'[upstreams."{NAME}"]\nurl = "{url}"\naliases = ["lab"]\nretries = 1\n'


@pytest.fixture(scope="module")
def pushed(upstream: RunningUpstream) -> PushedImage:
    return upstream.push_test_image("lab/app", ("1.0",))


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream, pushed: PushedImage
) -> Iterator[EdgecacheServer]:
    server = EdgecacheServer(tmp_path_factory.mktemp("cache"), config_text=config_for(upstream.url))
    with server:
        with server.client() as client:  # pulled as containerd pulls: by ns
            manifest = client.get(
                "/v2/lab/app/manifests/1.0", params={"ns": NAME}, headers={"Accept": OCI_MANIFEST}
            )
            assert manifest.status_code == 200, manifest.text
            for digest in (pushed.config_digest, pushed.layer_digest):
                blob = client.get(f"/v2/lab/app/blobs/{digest}", params={"ns": NAME})
                assert blob.status_code == 200, blob.text
        yield server


def exported_names(tar: Path) -> dict[str, str]:
    with tarfile.open(tar) as archive:
        member = archive.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    return {
        d["annotations"]["org.opencontainers.image.ref.name"]: d["digest"]
        for d in index["manifests"]
    }


@pytest.mark.parametrize(
    "typed",
    [
        f"{NAME}/lab/app:1.0",  # the Docker reference, registry with a port
        "{upstream_host}/lab/app:1.0",  # the upstream's URL host:port
        "lab/lab/app:1.0",  # the Harbor-style project path through the alias
    ],
)
def test_export_by_every_name_of_a_host_port_upstream(
    cache: EdgecacheServer,
    upstream: RunningUpstream,
    pushed: PushedImage,
    tmp_path: Path,
    typed: str,
) -> None:
    typed = typed.format(upstream_host=upstream.host)
    tar = tmp_path / "app.tar"
    out = ok(cli("export", "--data", cache.data, typed, "-o", tar))
    assert f"{NAME}/lab/app:1.0 {pushed.digest}" in out.splitlines()
    assert exported_names(tar) == {f"{NAME}/lab/app:1.0": pushed.digest}
    with tarfile.open(tar) as archive:
        blob = archive.extractfile(f"blobs/sha256/{pushed.layer_digest.split(':')[1]}")
        assert blob is not None and blob.read() == pushed.layer


def _tiny(tmp_path: Path, ref: str = "any/name:0") -> tuple[Path, str]:
    entries, digests = oci_layout({ref: [b"preloaded layer " * 100]})
    path = tmp_path / "tiny.tar"
    path.write_bytes(entries.tar())
    return path, digests[ref]


@pytest.mark.parametrize(
    ("as_name", "repo", "tag"),
    [
        (f"{NAME}/team/app:1.0", "team/app", "1.0"),  # a Docker reference with a port
        ("lab/team/app:2.0", "team/app", "2.0"),  # a project path through the alias
    ],
)
def test_preload_as_a_host_port_name_is_served_by_ns_and_project(
    cache: EdgecacheServer, tmp_path: Path, as_name: str, repo: str, tag: str
) -> None:
    archive, digest = _tiny(tmp_path)
    # The server runs: preload learns the upstream's names from its run files.
    out = ok(cli("preload", "--data", cache.data, archive, "--as", as_name))
    assert f"{NAME}/{repo}:{tag} {digest}" in out.splitlines()
    with cache.client() as client:
        for path, params in (
            (f"/v2/{repo}/manifests/{tag}", {"ns": NAME}),  # containerd
            (f"/v2/lab/{repo}/manifests/{tag}", {}),  # skopeo/podman by project path
        ):
            response = client.get(path, params=params, headers={"Accept": OCI_MANIFEST})
            assert response.status_code == 200, (path, response.text)
            assert response.headers["docker-content-digest"] == digest


def test_round_trip_to_a_node_that_names_the_registry_otherwise(
    cache: EdgecacheServer, upstream: RunningUpstream, pushed: PushedImage, tmp_path: Path
) -> None:
    """Exported from the cache, preloaded (stopped) into a node whose upstream for the same
    registry is called `lab` with alias registry.lab:5000 and points at a dead port: the
    image lands where that node's routing looks, and is served from disk."""
    tar = tmp_path / "app.tar"
    ok(cli("export", "--data", cache.data, f"{NAME}/lab/app:1.0", "-o", tar))
    dead = f"http://127.0.0.1:{free_port()}"
    other = f'[upstreams.lab]\nurl = "{dead}"\naliases = ["{NAME}"]\nretries = 1\n'
    node = EdgecacheServer(tmp_path / "node", config_text=other)
    node.data.mkdir(parents=True)
    assert node.config_path is not None
    out = ok(cli("preload", "--data", node.data, "--config", node.config_path, tar))
    assert f"lab/lab/app:1.0 {pushed.digest}" in out.splitlines()
    with node, httpx.Client(base_url=node.url, timeout=30) as client:
        manifest = client.get(
            "/v2/lab/app/manifests/1.0", params={"ns": NAME}, headers={"Accept": OCI_MANIFEST}
        )
        assert manifest.status_code == 200, manifest.text
        assert manifest.content == pushed.manifest
        layer = client.get(f"/v2/lab/app/blobs/{pushed.layer_digest}", params={"ns": NAME})
        assert layer.status_code == 200 and layer.content == pushed.layer


def test_mirror_config_covers_the_running_servers_upstreams(
    cache: EdgecacheServer, upstream: RunningUpstream, tmp_path: Path
) -> None:
    # No --config: the running server's upstreams, not the embedded public ones.
    certs = tmp_path / "certs.d"
    ok(cli("mirror-config", "containerd", "--data", cache.data, "--write", certs))
    port = upstream.host.rsplit(":", 1)[1]
    written = sorted(p.parent.name for p in certs.glob("*/hosts.toml"))
    assert written == sorted(["registry.lab_5000_", f"127.0.0.1_{port}_"])
    text = (certs / "registry.lab_5000_" / "hosts.toml").read_text()
    assert f'server = "{upstream.url}"' in text
    assert f'[host."{cache.url}"]' in text
    podman = ok(cli("mirror-config", "podman", "--data", cache.data))
    assert f'prefix = "{NAME}"' in podman and f'location = "{cache.host}/lab"' in podman
    assert "docker.io" not in podman  # the server mirrors only what its config names
