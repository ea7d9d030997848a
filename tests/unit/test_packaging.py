"""packaging/kubernetes/: the manifests are valid Kubernetes objects (the published schemas,
offline, through kubernetes-validate) and the edgecache config they carry is one edgecache
accepts, with every pod's own member URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecache.config import load
from tests.support import require_module

MANIFEST = Path(__file__).parents[2] / "packaging" / "kubernetes" / "edgecache-site.yaml"
KUBERNETES = "1.30"  # a version every supported cluster line has schemas for


def documents() -> list[dict[str, Any]]:
    yaml = require_module("yaml")
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in documents() if d["kind"] == kind]
    return doc


def test_every_object_is_valid_against_the_kubernetes_schemas() -> None:
    validate = require_module("kubernetes_validate")
    kinds = []
    for doc in documents():
        validate.validate(doc, KUBERNETES, strict=True)  # raises with the field at fault
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "Service", "StatefulSet"]


def test_the_config_is_one_edgecache_accepts_in_every_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_map = by_kind("ConfigMap")
    sts = by_kind("StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    text = config_map["data"]["edgecache.toml"]
    secret = tmp_path / "secret"
    secret.write_text("x" * 44 + "\n")
    text = text.replace("/var/run/edgecache-peer/secret", str(secret))
    path = tmp_path / "edgecache.toml"
    path.write_text(text)
    members = None
    for ordinal in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{ordinal}"
        me = env["EDGECACHE_PEERS_SELF"].replace("$(POD_NAME)", pod)
        config = load(path, env={"EDGECACHE_PEERS_SELF": me})
        assert config.peers.self_url == me
        members = config.peers.members
    # One member per pod, each named under the headless Service the StatefulSet uses.
    assert members is not None and len(members) == sts["spec"]["replicas"]
    service = by_kind("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert all(f".{service['metadata']['name']}." in m for m in members)
    # The secret is mounted where the config reads it, outside the config's own mount.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/edgecache-peer/secret".startswith(mounts["peer-secret"] + "/")
    assert not mounts["peer-secret"].startswith(mounts["config"] + "/")
    assert container["args"][-1].startswith(mounts["config"] + "/")
