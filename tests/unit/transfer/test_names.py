"""Docker reference normalisation: archive names -> store repositories."""

from __future__ import annotations

import pytest

from edgecache.transfer.errors import TransferError
from edgecache.transfer.names import familiar, literal, normalize


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


def test_registry_with_port_is_refused_with_advice() -> None:
    with pytest.raises(TransferError, match=r"here: 'localhost:5000/app:v1' .*port.*--as"):
        normalize("localhost:5000/app:v1", "here")


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
