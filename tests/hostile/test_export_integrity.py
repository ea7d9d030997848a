"""An export never carries bytes that do not match their digest to another site: a stored
manifest or blob found corrupt on disk stops the export with one line, and leaves no file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import (
    OCI_MANIFEST,
    EdgecacheServer,
    anonymous_push_config,
    oci_manifest,
    push_blob,
    sha256_bytes,
)


def stored(server: EdgecacheServer, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return server.data / "blobs" / "sha256" / hexd[:2] / hexd


@pytest.mark.parametrize("damaged", ["layer", "manifest"])
def test_an_export_refuses_corrupt_stored_content(tmp_path: Path, damaged: str) -> None:
    config, layer = b'{"os":"linux"}', os.urandom(200_000)
    server = EdgecacheServer(tmp_path / "node", config_text=anonymous_push_config())
    with server, server.client() as client:
        push_blob(client, "team/app", config)
        push_blob(client, "team/app", layer)
        manifest = oci_manifest(config, [layer])
        r = client.put("/v2/team/app/manifests/v1", content=manifest,
                       headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
        assert r.status_code == 201, r.text
    path = stored(server, sha256_bytes(layer if damaged == "layer" else manifest))
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20  # same size: only a digest check can tell
    path.write_bytes(bytes(data))

    out = tmp_path / "app.tar"
    proc = server.cli("export", "--data", str(server.data), "team/app:v1", "-o", str(out))
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgecache")]
    assert len(lines) == 1 and "corrupt on disk" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.glob("app.tar*")) == []
