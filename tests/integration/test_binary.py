"""The one-file `edgecache` executable built by packaging/build.sh works on its own.

Builds the binary once per test session (a minute or two; set
TEST_EDGECACHE_BINARY=/path/to/edgecache to test an already built one), starts it as plain
`edgecache serve` in an empty directory (so the embedded defaults apply: data in
./edgecache-data), pushes an umoci-built image with skopeo, pulls it back byte for byte, and
stops it with SIGTERM.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import make_image, require_tool, wait_for

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "build.sh"

pytestmark = pytest.mark.slow


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def edgecache_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("TEST_EDGECACHE_BINARY")
    if prebuilt:
        path = Path(prebuilt).resolve()
        assert os.access(path, os.X_OK), f"TEST_EDGECACHE_BINARY={prebuilt} is not executable"
        return path
    if importlib.util.find_spec("PyInstaller") is None:
        msg = f"PyInstaller is not installed for {sys.executable} (pip install -e '.[build]')"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    dist = tmp_path_factory.mktemp("dist")
    work = tmp_path_factory.mktemp("pyinstaller-work")
    env = dict(os.environ, BUILD_PYTHON=sys.executable, BUILD_WORKDIR=str(work))
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(dist)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, (
        f"packaging/build.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == dist / "edgecache", proc.stdout
    assert os.access(path, os.X_OK)
    print(f"built {path} in {time.monotonic() - started:.0f}s")
    return path


def _oci_layout(ref: str) -> tuple[Path, str]:
    """Split "oci:/path/to/layout:tag" into (layout dir, tag)."""
    assert ref.startswith("oci:"), ref
    path, _, tag = ref[len("oci:") :].rpartition(":")
    return Path(path), tag


def _manifest_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(desc["digest"])
    raise AssertionError(f"tag {tag!r} not in {layout}/index.json: {index}")


def _blob(layout: Path, digest: str) -> bytes:
    algo, _, hexdigest = digest.partition(":")
    return (layout / "blobs" / algo / hexdigest).read_bytes()


def _image_blobs(layout: Path, manifest_digest: str) -> dict[str, bytes]:
    """Manifest, config and layers of one image, by digest."""
    manifest_bytes = _blob(layout, manifest_digest)
    manifest = json.loads(manifest_bytes)
    blobs = {manifest_digest: manifest_bytes}
    for desc in [manifest["config"], *manifest["layers"]]:
        blobs[desc["digest"]] = _blob(layout, desc["digest"])
    for digest, data in blobs.items():
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    return blobs


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"edgecache exited with {proc.returncode} before ready:\n{log.read_text()}")
        return path.exists()

    wait_for(
        ready, timeout=deadline_s, what=f"{path} to appear", on_timeout=lambda: log.read_text()
    )


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


@pytest.fixture
def served_binary(
    edgecache_binary: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    log = tmp_path / "edgecache.log"
    # Only embedded defaults plus these two settings: drop any EDGECACHE_* the caller exported.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECACHE_")}
    env.update(
        EDGECACHE_AUTH_ANONYMOUS_PUSH="true",
        # Port 0: the server picks a free loopback port and reports it in run/server.json.
        EDGECACHE_SERVER_LISTEN="127.0.0.1:0",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(edgecache_binary), "serve"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, cwd, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_binary_help(edgecache_binary: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(edgecache_binary), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("serve", "fsck", "status"):
        assert command in proc.stdout


def test_binary_serve_defaults_push_pull_sigterm(
    served_binary: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo")
    require_tool("umoci")
    proc, cwd, log = served_binary

    src_ref = make_image(tmp_path, [300_000, 1_000_000])
    src_layout, src_tag = _oci_layout(src_ref)
    src_digest = _manifest_digest(src_layout, src_tag)
    src_blobs = _image_blobs(src_layout, src_digest)

    # The embedded default data directory is ./edgecache-data, relative to the working directory.
    data = cwd / "edgecache-data"
    server_json = data / "run" / "server.json"
    _wait_for(server_json, proc, log, deadline_s=60)
    info = json.loads(server_json.read_text())
    assert info["tls"] is False
    url: str = info["url"]
    assert url.startswith("http://127.0.0.1:"), info
    # A one-file binary's bootloader runs the Python program as its child process.
    assert proc.pid in (info["pid"], _ppid(info["pid"])), info
    host = url.removeprefix("http://")
    remote = f"docker://{host}/edge/binary:v1"

    subprocess.run(
        [skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false", src_ref, remote],
        check=True,
        timeout=120,
    )
    dst_layout = tmp_path / "pulled"
    subprocess.run(
        [
            skopeo,
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            remote,
            f"oci:{dst_layout}:v1",
        ],
        check=True,
        timeout=120,
    )
    raw = subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", remote],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    assert raw == src_blobs[src_digest]

    dst_digest = _manifest_digest(dst_layout, "v1")
    assert dst_digest == src_digest
    assert _image_blobs(dst_layout, dst_digest) == src_blobs

    # Manifest, config and layers were stored under the default data directory.
    for digest, content in src_blobs.items():
        hexdigest = digest.removeprefix("sha256:")
        stored = data / "blobs" / "sha256" / hexdigest[:2] / hexdigest
        assert stored.read_bytes() == content

    # The frozen binary's preheat and scanning commands, against itself (their modules and
    # what they import only run when asked: croniter, PyJWT, cryptography).
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binary), *args, "--data", str(data)], cwd=cwd,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    binary = Path(str(proc.args[0])) if isinstance(proc.args, list) else Path(str(proc.args))
    warmed = cli("preheat", "edge/binary:v1", "--follow")
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    assert "site: skipped (already on this node)" in warmed.stdout
    listed = cli("preheat", "jobs")
    assert listed.returncode == 0 and "succeeded" in listed.stdout
    unscanned = cli("report", "edge/binary:v1")
    assert unscanned.returncode != 0 and "no scanner is configured" in unscanned.stderr
    assert "Traceback" not in unscanned.stderr

    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"edgecache did not stop within 30s of SIGTERM:\n{log.read_text()}")
    assert rc == 0, log.read_text()
    assert not server_json.exists(), "run/server.json must be removed at clean shutdown"
