"""Docker reference normalisation: archive names -> store repositories."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgecache.cache.routing import resolve
from edgecache.config import Config, load
from edgecache.transfer.errors import TransferError
from edgecache.transfer.names import familiar, literal, normalize, store_repository


@pytest.mark.parametrize(
    ("ref", "repo", "tag"),
    [
        ("nginx:1.27", "docker.io/library/nginx", "1.27"),
        ("nginx", "docker.io/library/nginx", "latest"),
        ("team/app:v1", "docker.io/team/app", "v1"),
        ("docker.io/library/nginx:1.27", "docker.io/library/nginx", "1.27"),
        ("index.docker.io/nginx:1", "docker.io/library/nginx", "1"),
        ("ghcr.io/org/tool:v2", "ghcr.io/org/tool", "v2"),
        ("localhost/app:dev", "localhost/app", "dev"),
        ("quay.io/a/b:c@sha256:" + "0" * 64, "quay.io/a/b", "c"),
    ],
)
def test_normalize(ref: str, repo: str, tag: str) -> None:
    name = normalize(ref, "here")
    assert (name.repo, name.tag) == (repo, tag)


@pytest.mark.parametrize(
    ("ref", "repo", "tag"),
    [
        ("localhost:5000/app:v1", "localhost:5000/app", "v1"),
        ("127.0.0.1:5001/lab/app:1.0", "127.0.0.1:5001/lab/app", "1.0"),
        ("registry.lab:5000/team/app", "registry.lab:5000/team/app", "latest"),
        ("registry.lab:5000/team/app@sha256:" + "0" * 64, "registry.lab:5000/team/app", "latest"),
    ],
)
def test_registry_with_port_is_a_repository_of_its_own(ref: str, repo: str, tag: str) -> None:
    # The repository the cache fills for an upstream named host:port, not a tag "5000/app".
    for parse in (normalize, literal):
        name = parse(ref, "here")
        assert (name.repo, name.tag) == (repo, tag)


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("localhost:99999/app:v1", "port from 0 to 65535"),
        ("localhost:50a/app:v1", "port from 0 to 65535"),
        ("Registry.lab:5000/app:v1", "uppercase letter 'R'"),
        ("registry.lab:5000/App:v1", "uppercase letter 'A'"),
    ],
)
def test_bad_registry_with_port_is_refused_precisely(ref: str, fragment: str) -> None:
    with pytest.raises(TransferError, match=rf"^here: .*{re.escape(fragment)}"):
        normalize(ref, "here")


def _config(tmp_path: Path, upstreams: str) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(upstreams)
    return load(path, env={})


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("registry.lab:5000/team/app", "registry.lab:5000/team/app"),  # the upstream's name
        ("lab/team/app", "registry.lab:5000/team/app"),  # a Harbor-style project by alias
        ("127.0.0.1:5001/team/app", "registry.lab:5000/team/app"),  # the URL's host:port
        ("hub/nginx", "docker.io/library/nginx"),  # Docker Hub's official images
        ("team/app", "team/app"),  # a local repository
        ("other.io:5000/x", "other.io:5000/x"),  # no such upstream: kept as it is
    ],
)
def test_store_repository_routes_like_the_server(tmp_path: Path, name: str, repo: str) -> None:
    config = _config(
        tmp_path,
        '[upstreams."registry.lab:5000"]\nurl = "http://127.0.0.1:5001"\naliases = ["lab"]\n'
        '[upstreams."docker.io"]\nurl = "https://registry-1.docker.io"\naliases = ["hub"]\n',
    )
    assert store_repository(config, name) == repo
    # The same repository cache/routing.py fills for a project path (where one exists).
    if ":" not in name:
        assert resolve(config, name, None).store_repo == repo


def test_uppercase_is_refused_precisely() -> None:
    with pytest.raises(TransferError, match=r"RepoTags: .*uppercase letter 'A'"):
        normalize("App:v1", "RepoTags")


def test_literal_keeps_the_name() -> None:
    assert str(literal("team/app:v1", "--as")) == "team/app:v1"
    assert str(literal("team/app", "--as")) == "team/app:latest"


def test_familiar() -> None:
    assert familiar("docker.io/library/nginx") == "nginx"
    assert familiar("docker.io/team/app") == "team/app"
    assert familiar("team/app") == "team/app"
