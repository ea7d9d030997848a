"""Image names in archives -> store repositories and tags, and back for export.

A name in a docker-save RepoTags list or an OCI `ref.name` annotation is a Docker reference:
`nginx:1.27` means `docker.io/library/nginx:1.27` to docker, podman, skopeo and containerd
alike. The store keeps the fully qualified name because that is the repository the
pull-through cache uses for the same image (`<upstream>/<repo>`, cache/routing.py): a containerd
node that mirrors docker.io through edgecache (`?ns=docker.io`) pulls `nginx:1.27` from
`docker.io/library/nginx`, and `skopeo copy docker://edge/docker.io/library/nginx:1.27` reaches
it through the project path. `--as NAME:TAG` is taken literally (it names a repository here).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..oci.errors import OCIError
from ..oci.names import validate_repository, validate_tag
from .errors import TransferError

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class ImageName:
    repo: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repo}:{self.tag}"


def _split(ref: str) -> tuple[str, str | None]:
    """`name[:tag][@digest]` -> (name, tag); a digest part is dropped (the content has one)."""
    ref = ref.partition("@")[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, None


def _checked(repo: str, tag: str, origin: str) -> ImageName:
    try:
        return ImageName(validate_repository(repo), validate_tag(tag))
    except OCIError as exc:
        raise TransferError(f"{origin}: {exc.message}") from None


def normalize(ref: str, origin: str) -> ImageName:
    """A Docker reference as Docker reads it; `origin` says where it was found (for errors)."""
    name, tag = _split(ref.strip())
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = DOCKER_HUB, name
    if ":" in domain:
        raise TransferError(
            f"{origin}: {ref!r} names a registry with a port ({domain}), which cannot be part "
            "of a repository name; give the image a name with --as NAME:TAG"
        )
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    return _checked(f"{domain}/{path}", tag or "latest", origin)


def literal(ref: str, origin: str) -> ImageName:
    """`NAME[:TAG]` taken as a repository of this registry (for --as and our own exports)."""
    name, tag = _split(ref.strip())
    return _checked(name, tag or "latest", origin)


def familiar(repo: str) -> str:
    """How `docker images` shows a repository: docker.io/library/nginx -> nginx."""
    if repo.startswith(f"{DOCKER_HUB}/"):
        path = repo[len(DOCKER_HUB) + 1 :]
        return path.removeprefix("library/") if path.count("/") == 1 else path
    return repo
