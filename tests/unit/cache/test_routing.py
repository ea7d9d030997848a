import pytest

from edgecache.cache.routing import Target, resolve
from edgecache.config import Config, load
from edgecache.oci import errors


def config(**proxy: object) -> Config:
    env = {f"EDGECACHE_PROXY_{k.upper()}": str(v) for k, v in proxy.items()}
    return load(env=env, extra_upstreams={"registry.lab": "http://127.0.0.1:9"})


def test_project_path_selects_the_upstream_and_docker_hub_gets_library() -> None:
    target = resolve(config(), "dockerhub/nginx", None)
    assert target.proxied and target.upstream is not None
    assert target.upstream.name == "docker.io"
    assert target.remote_repo == "library/nginx"
    assert target.store_repo == "docker.io/library/nginx"
    assert not target.by_ns


def test_ns_and_project_path_share_one_cache_entry() -> None:
    by_ns = resolve(config(), "library/nginx", "docker.io")
    by_project = resolve(config(), "docker.io/nginx", None)
    assert by_ns.store_repo == by_project.store_repo == "docker.io/library/nginx"
    assert by_ns.by_ns


def test_non_docker_hub_names_are_kept() -> None:
    target = resolve(config(), "registry.lab/team/app", None)
    assert target.remote_repo == "team/app"
    assert target.store_repo == "registry.lab/team/app"
    assert resolve(config(), "app", "registry.lab").remote_repo == "app"


def test_unknown_ns_is_refused_and_names_the_host() -> None:
    with pytest.raises(errors.NameUnknown) as info:
        resolve(config(), "library/nginx", "evil.example")
    assert "evil.example" in info.value.message


def test_without_default_upstream_other_names_are_local() -> None:
    assert resolve(config(), "team/app", None) == Target("team/app")
    # A single component named like an upstream is a local repository, not a project.
    assert resolve(config(), "docker.io", None) == Target("docker.io")


def test_default_upstream_serves_docker_registry_mirrors_except_local_namespaces() -> None:
    cfg = config(default_upstream="docker.io", local_namespaces="team,ops")
    target = resolve(cfg, "library/nginx", None)
    assert target.store_repo == "docker.io/library/nginx"
    assert resolve(cfg, "team/app", None) == Target("team/app")
