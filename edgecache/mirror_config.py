"""Client configuration that points containerd, Docker or podman at an edgecache instance.

Pure functions (text in, text out) behind `edgecache mirror-config containerd|docker|podman`;
only `write_containerd_hosts` touches the filesystem.

How each client reaches an upstream through edgecache, and so what the config must say:
- containerd (hosts.toml, docs/hosts.md of containerd): one directory per registry host
  under certs.d, named as containerd looks it up ("docker.io", "ghcr.io", and for a host
  with a port "host_port_"). A `[host."<edgecache>"]` entry makes containerd ask edgecache
  first and add `?ns=<registry host>` to every request, which is how edgecache picks the
  upstream (by name, alias or URL host). `server` is where containerd falls back when
  edgecache fails, silently: a pull that "works" may not have gone through edgecache.
- Docker (daemon.json `registry-mirrors`): only Docker Hub is ever mirrored, and the requests
  carry no ns, so edgecache routes them to `[proxy] default_upstream`.
- podman / CRI-O / skopeo (registries.conf v2): mirrors get no ns either, so each mirror
  `location` uses the Harbor-style project path `<edgecache host>/<project>`, the project
  being the upstream's name or an alias without a port (':' is not valid in a path).

Several edgecache URLs (the nodes of a site, [peers]) are listed in the order given: containerd
tries its hosts in order and moves to the next when one fails, Docker's registry-mirrors and
registries.conf mirrors likewise; the first is normally the node's own edgecache.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from .config import Config, UpstreamConfig
from .oci.errors import NameInvalid
from .oci.names import validate_repository

Kind = Literal["containerd", "docker", "podman"]

DOCKER_HUB_REGISTRY = "https://registry-1.docker.io"
CERTS_D = "/etc/containerd/certs.d"


class MirrorConfigError(ValueError):
    """The requested client config cannot work with this edgecache config; says what to fix."""


def _toml_str(value: str) -> str:
    """A TOML basic string. JSON's escapes are a subset of TOML's except DEL, which TOML
    requires escaped; ensure_ascii=False avoids \\ud83d-style surrogate pairs TOML rejects."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _mirrors(mirror_url: str | Sequence[str]) -> list[tuple[str, str]]:
    """(scheme, host[:port]) of each edgecache URL, in order, without repeats."""
    urls = [mirror_url] if isinstance(mirror_url, str) else list(mirror_url)
    if not urls:
        raise MirrorConfigError("no edgecache URL given")
    return list(dict.fromkeys(_mirror_origin(url) for url in urls))


def _mirror_origin(mirror_url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of an edgecache URL; no path: clients add /v2/ themselves."""
    parts = urlsplit(mirror_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MirrorConfigError(
            f"mirror URL {mirror_url!r}: expected http://HOST[:PORT] or https://HOST[:PORT]"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise MirrorConfigError(
            f"mirror URL {mirror_url!r}: expected only scheme, host and port "
            "(clients append /v2/ themselves; credentials do not belong in it)"
        )
    return parts.scheme, parts.netloc


def registry_hosts(upstream: UpstreamConfig) -> list[str]:
    """The ns hosts `upstream` answers for that a client can put in an image reference.

    Those are exactly what edgecache's routing matches an ns against (Config.upstream_for):
    its name, its aliases and its URL's host[:port], keeping the ones that are host names. A
    client only sends (as ns) or matches (as prefix) a host name, so "dockerhub" or "lab" is
    reachable by project path only. Host names have a dot ("docker.io") or a port
    ("127.0.0.1:5000"), or are "localhost", as in the image reference grammar's rule for
    telling a registry host from a path component.
    """
    hosts: list[str] = []
    for n in (upstream.name, *upstream.aliases, upstream.host):
        is_host = "." in n or ":" in n or n == "localhost"
        if is_host and n not in hosts:
            hosts.append(n)
    return hosts


def project_name(upstream: UpstreamConfig) -> str | None:
    """The name of `upstream` usable as a project path (/v2/<project>/<repo>), if any.

    A "host:port" name is reachable by ns only: ':' is not allowed in a repository name.
    """
    for name in (upstream.name, *upstream.aliases):
        if "/" in name:
            continue
        try:
            validate_repository(name)
        except NameInvalid:
            continue
        return name
    return None


def containerd_host_directory(host: str) -> str:
    """The certs.d directory containerd looks up first for `host`: ":port" -> "_port_".

    containerd tries "host_port_", then "host:port", then "_default"; the first form is also
    the only one valid on Windows, so it is the one written.
    """
    head, sep, port = host.rpartition(":")
    if sep and head and not head.endswith(":") and port.isdigit():
        return f"{head}_{port}_"
    return host


def _containerd_server(upstream: UpstreamConfig) -> str:
    # Docker Hub's API is not at docker.io; containerd would be redirected there anyway, but
    # the fallback should name the real endpoint.
    host = urlsplit(upstream.url).hostname
    if upstream.is_docker_hub and host in ("docker.io", "index.docker.io"):
        return DOCKER_HUB_REGISTRY
    return upstream.url


def containerd_hosts(
    upstreams: Mapping[str, UpstreamConfig],
    mirror_url: str | Sequence[str],
    *,
    ca_file: str | None = None,
    skip_verify: bool = False,
) -> dict[str, str]:
    """{"<certs.d directory>/hosts.toml": content} for every registry host name of every upstream.

    `ca_file` / `skip_verify` are for an https edgecache whose certificate the node does not
    already trust. An http:// mirror needs nothing extra: containerd speaks plain HTTP to an
    http:// host entry.
    """
    mirrors = [f"{scheme}://{netloc}" for scheme, netloc in _mirrors(mirror_url)]
    files: dict[str, str] = {}
    for upstream in upstreams.values():
        for host in registry_hosts(upstream):
            lines = [
                f'# {host} via edgecache upstream "{upstream.name}"; server = fallback',
                f"server = {_toml_str(_containerd_server(upstream))}",
            ]
            for mirror in mirrors:
                lines += ["", f"[host.{_toml_str(mirror)}]", '  capabilities = ["pull", "resolve"]']
                if skip_verify:
                    lines.append("  skip_verify = true")
                if ca_file:
                    lines.append(f"  ca = {_toml_str(ca_file)}")
            files[f"{containerd_host_directory(host)}/hosts.toml"] = "\n".join(lines) + "\n"
    return files


def docker_daemon_json(mirror_url: str | Sequence[str]) -> str:
    """The daemon.json keys that make Docker pull Docker Hub images through edgecache.

    An http:// mirror must also be an insecure registry (host:port, no scheme) or Docker
    refuses to talk plain HTTP to it.
    """
    mirrors = _mirrors(mirror_url)
    doc: dict[str, list[str]] = {"registry-mirrors": [f"{s}://{n}" for s, n in mirrors]}
    insecure = [netloc for scheme, netloc in mirrors if scheme == "http"]
    if insecure:
        doc["insecure-registries"] = insecure
    return json.dumps(doc, indent=2) + "\n"


def podman_registries_conf(
    upstreams: Mapping[str, UpstreamConfig],
    mirror_host: str | Sequence[tuple[str, bool]],
    *,
    insecure: bool = False,
) -> str:
    """registries.conf (v2) with edgecache as the mirror of every upstream registry host.

    `mirror_host` is edgecache's host[:port] (no scheme); `insecure` for an http edgecache.
    Several: (host[:port], insecure) pairs, in order.
    """
    hosts = [(mirror_host, insecure)] if isinstance(mirror_host, str) else list(mirror_host)
    out = [
        "# registries.conf (v2) for podman, CRI-O, skopeo and buildah: pulls go through",
        "# edgecache first, by project path (these clients send no ?ns=).",
    ]
    for upstream in upstreams.values():
        project = project_name(upstream)
        if project is None:
            continue  # see _unreachable_note: no path form to put in the mirror location
        for host in registry_hosts(upstream):
            out += [
                "",
                "[[registry]]",
                f"prefix = {_toml_str(host)}",
                f"location = {_toml_str(host)}",
            ]
            for mirror, http in hosts:
                location = _toml_str(f"{mirror}/{project}")
                out += ["", "[[registry.mirror]]", f"location = {location}"]
                if http:
                    out.append("insecure = true")
    return "\n".join(out) + "\n"


def _unreachable_note(config: Config, mirror_host: str, kind: Kind) -> list[str]:
    """Comment lines naming the upstreams this client config cannot cover, and why."""
    lines = []
    for upstream in config.upstreams.values():
        hosts = registry_hosts(upstream)
        project = project_name(upstream)
        if not hosts:
            # Without a host name no client sends it as ns or uses it as a prefix; the
            # project path still works for anything that names it explicitly.
            lines.append(
                f'# upstream "{upstream.name}" has no registry host name or alias, so no '
                f"client config points at it; pull it as {mirror_host}/{upstream.name}/<repo>"
            )
        elif kind == "podman" and project is None:
            lines.append(
                f'# upstream "{upstream.name}" has no name or alias usable as a project path '
                "(a host:port is not one), so podman cannot mirror it: add an alias like "
                '"lab" to it'
            )
    return lines


def render(
    kind: Kind,
    config: Config,
    mirror_url: str | Sequence[str],
    *,
    ca_file: str | None = None,
    skip_verify: bool = False,
) -> str:
    """The text `edgecache mirror-config <kind>` prints for the edgecache at `mirror_url`.

    Raises MirrorConfigError when the result could not work (bad URL; no upstream with a
    host name; Docker without a Docker Hub default upstream), with what to change.
    """
    mirrors = _mirrors(mirror_url)
    netloc = mirrors[0][1]
    if kind == "containerd":
        files = containerd_hosts(
            config.upstreams, mirror_url, ca_file=ca_file, skip_verify=skip_verify
        )
        if not files:
            raise MirrorConfigError(
                "no upstream has a registry host name (like docker.io or host:port) as its "
                "name or alias, so containerd has nothing to mirror through edgecache"
            )
        out = [
            f"# containerd: write each file below under {CERTS_D}/ and set, in",
            "# /etc/containerd/config.toml (no restart needed for later hosts.toml changes):",
            "#   containerd 1.6/1.7 (version = 2):",
            '#     [plugins."io.containerd.grpc.v1.cri".registry]',
            f'#       config_path = "{CERTS_D}"',
            "#   containerd 2.x (version = 3):",
            '#     [plugins."io.containerd.cri.v1.images".registry]',
            f'#       config_path = "{CERTS_D}"',
            f"# ctr: ctr images pull --hosts-dir {CERTS_D} <image>",
            *_unreachable_note(config, netloc, kind),
        ]
        for path, content in files.items():
            out += ["", f"# {CERTS_D}/{path}", content.rstrip("\n")]
        return "\n".join(out) + "\n"
    if kind == "docker":
        hub = next((u for u in config.upstreams.values() if u.is_docker_hub), None)
        if hub is None:
            raise MirrorConfigError(
                "Docker only mirrors Docker Hub, and no upstream is Docker Hub here: "
                "add an upstream named docker.io (url = "
                f'"{DOCKER_HUB_REGISTRY}")'
            )
        if config.upstream_for(config.proxy.default_upstream) is not hub:
            raise MirrorConfigError(
                "Docker's mirror requests carry no ?ns=, so edgecache sends them to "
                "[proxy] default_upstream, which must be the Docker Hub upstream: set "
                f'default_upstream = "{hub.name}" in [proxy] '
                f"(or EDGECACHE_PROXY_DEFAULT_UPSTREAM={hub.name})"
            )
        return docker_daemon_json(mirror_url)
    if kind == "podman":
        hosts = [(host, scheme == "http") for scheme, host in mirrors]
        text = podman_registries_conf(config.upstreams, hosts)
        if "[[registry]]" not in text:
            raise MirrorConfigError(
                "no upstream has both a registry host name (like docker.io) and a project "
                "name (no :port) among its name and aliases, so registries.conf has nothing "
                "to mirror through edgecache"
            )
        note = _unreachable_note(config, netloc, kind)
        return "\n".join(note) + "\n" + text if note else text
    raise MirrorConfigError(f"unknown client {kind!r}: expected containerd, docker or podman")


def write_containerd_hosts(files: Mapping[str, str], directory: Path) -> list[Path]:
    """Write `containerd_hosts(...)` output under `directory` (a certs.d); return the paths.

    Each file is replaced atomically: containerd re-reads hosts.toml on every pull and must
    never see a half-written one.
    """
    written = []
    for relative, content in files.items():
        rel = PurePosixPath(relative)
        if (
            rel.is_absolute()
            or len(rel.parts) != 2
            or rel.name != "hosts.toml"
            or (rel.parts[0] in ("", ".", ".."))
        ):
            raise MirrorConfigError(f"{relative!r}: expected <registry host>/hosts.toml")
        target = directory / rel.parts[0] / "hosts.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hosts.toml.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content)
            os.chmod(tmp, 0o644)  # containerd runs as root, but admins read these too
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
