"""Which repositories are local and which are proxied, and through which upstream.

Pure: decided from the config and the request alone. Two ways in reach the same cached
content: a Harbor-style project path (/v2/<upstream>/<repo>/...) and containerd's mirror mode
(/v2/<repo>/...?ns=<upstream host>); both store under "<upstream name>/<repo>".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, UpstreamConfig
from ..oci import errors


@dataclass(frozen=True)
class Target:
    store_repo: str  # the repository in our store
    upstream: UpstreamConfig | None = None  # None: a local (pushed) repository
    remote_repo: str = ""  # the repository at the upstream
    by_ns: bool = False  # chosen by ?ns= (responses then carry OCI-Namespace)

    @property
    def proxied(self) -> bool:
        return self.upstream is not None


def remote_name(upstream: UpstreamConfig, repo: str) -> str:
    """Docker Hub serves official images under library/: `nginx` is `library/nginx`."""
    if upstream.is_docker_hub and "/" not in repo:
        return f"library/{repo}"
    return repo


def _proxied(upstream: UpstreamConfig, repo: str, by_ns: bool) -> Target:
    remote = remote_name(upstream, repo)
    return Target(f"{upstream.name}/{remote}", upstream, remote, by_ns)


def resolve(config: Config, name: str, ns: str | None) -> Target:
    """Map a validated repository name (and the ns query parameter) to a Target."""
    if ns is not None:
        upstream = config.upstream_for(ns)
        if upstream is None:
            # No open proxy: a host we were not configured for is never contacted.
            raise errors.NameUnknown(f"no upstream is configured for ns={ns}", detail={"ns": ns})
        return _proxied(upstream, name, by_ns=True)
    first, _, rest = name.partition("/")
    if rest:
        upstream = config.upstream_for(first)
        if upstream is not None:
            return _proxied(upstream, rest, by_ns=False)
    default = config.proxy.default_upstream
    if default and first not in config.proxy.local_namespaces:
        upstream = config.upstream_for(default)
        assert upstream is not None  # checked when the config was loaded
        return _proxied(upstream, name, by_ns=False)
    return Target(name)
