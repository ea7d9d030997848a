"""Image names in archives -> store repositories and tags, and back for export.

A name in a docker-save RepoTags list or an OCI `ref.name` annotation is a Docker reference:
`nginx:1.27` means `docker.io/library/nginx:1.27` to docker, podman, skopeo and containerd
alike. The store keeps the fully qualified name because that is the repository the
pull-through cache uses for the same image (`<upstream>/<repo>`, cache/routing.py): a containerd
node that mirrors docker.io through edgecache (`?ns=docker.io`) pulls `nginx:1.27` from
`docker.io/library/nginx`, and `skopeo copy docker://edge/docker.io/library/nginx:1.27` reaches
it through the project path. `--as NAME:TAG` is taken literally (it names a repository here).

Registries with a port are first-class: `registry.lab:5000/team/app:1.0` is the repository
`registry.lab:5000/team/app`, the one the cache fills for an upstream named `registry.lab:5000`
(containerd pulls it with `?ns=registry.lab:5000`). A ':' is not allowed in a repository name
on the wire, but the cache's own repositories are `<upstream name>/<repo>` and an upstream may be
named host:port, so such names are valid here (`validate_store_repository`).

Then `store_repository` maps a name through the config exactly as the server routes a project
path: a first component that is an upstream's name, alias or URL host (`lab/team/app` with
`aliases = ["lab"]`, or `127.0.0.1:5001/team/app` for an upstream at that address) becomes
that upstream's repository (`registry.lab:5000/team/app`), so that what is preloaded is what
the server serves and what the server cached is what `export` finds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cache.routing import remote_name
from ..config import Config
from ..oci.errors import NameInvalid, OCIError
from ..oci.names import MAX_NAME_LENGTH, validate_repository, validate_tag
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


def validate_store_repository(repo: str) -> str:
    """A repository name, whose first component may also be a registry `host:port`."""
    first, sep, rest = repo.partition("/")
    host, colon, port = first.partition(":")
    if not colon:
        return validate_repository(repo)
    if not sep:
        raise NameInvalid(f"invalid repository name {repo!r}: a registry {first!r} and no path")
    if not port.isdigit() or len(port) > 5 or int(port) > 65535:
        raise NameInvalid(
            f"invalid repository name {repo!r}: component 1 {first!r}: expected HOST:PORT "
            "with a port from 0 to 65535"
        )
    validate_repository(f"{host}/{rest}")
    if len(repo) > MAX_NAME_LENGTH:
        raise NameInvalid(
            f"repository name is {len(repo)} characters long, the limit is {MAX_NAME_LENGTH}"
        )
    return repo


def _checked(repo: str, tag: str, origin: str) -> ImageName:
    try:
        return ImageName(validate_store_repository(repo), validate_tag(tag))
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


def store_repository(config: Config, repo: str) -> str:
    """The repository the server keeps `repo` in: through an upstream its first component
    names (cache/routing.py's project path), else `repo` itself."""
    first, sep, rest = repo.partition("/")
    upstream = config.upstream_for(first) if sep else None
    if upstream is None:
        return repo
    return f"{upstream.name}/{remote_name(upstream, rest)}"


def in_store(config: Config, name: ImageName, origin: str) -> ImageName:
    repo = store_repository(config, name.repo)
    return name if repo == name.repo else _checked(repo, name.tag, origin)
