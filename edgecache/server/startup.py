"""What `serve` does before it serves: bind the listening socket, and say what it serves.

The socket is bound here rather than by hypercorn (which is handed its descriptor as fd://)
so that a port in use or a host that does not resolve is one line for the operator, not an
exception group from inside hypercorn's task tree. The banner is the short block a new
operator reads at start: where it listens, what it mirrors, who may push, and the command
that points containerd at it.
"""

from __future__ import annotations

import errno
import shlex
import socket
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_UPSTREAMS, SCHEMA, Config, parse_hostport
from ..usererror import UserError

_BIND_HINTS = {
    errno.EADDRINUSE: "the port is in use by another process (pick another with --listen)",
    errno.EADDRNOTAVAIL: "that address is not one of this machine's",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
}


def listen_socket(listen: str, *, reuseport: str = "") -> socket.socket:
    """The bound listening socket for `listen`, or a UserError that says why not.

    `reuseport` "first" or "join": each serving process binds its own socket to the one
    address (server/workers.py), and the kernel spreads new connections over them evenly. The
    first binds without SO_REUSEPORT once before: another program (or another edgecache)
    already on the port must be refused as "in use", not silently share its connections."""
    if reuseport == "first":
        probe = listen_socket(listen)
        listen = bound_address(probe)  # the port chosen for port 0
        probe.close()
    host, port = parse_hostport(listen)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        why = (exc.strerror or str(exc)).lower()
        raise UserError(
            f"cannot listen on {listen}: host {host!r} does not resolve ({why})"
        ) from None
    except UnicodeError:  # the IDNA codec refuses empty or over-long labels
        raise UserError(f"cannot listen on {listen}: {host!r} is not a valid host name") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if reuseport:  # before the bind, on every socket that shares the address
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = _BIND_HINTS.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
        raise UserError(f"cannot listen on {listen}: {hint}") from None
    return sock


def bound_address(sock: socket.socket) -> str:
    """host:port of a bound socket, as `listen` takes it (the port chosen for port 0)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def banner(config: Config, bound: str, data: Path, processes: int = 1) -> str:
    """What a new operator needs to know at start: where, what is mirrored, who may push,
    and the one command that points containerd here."""
    data = data.resolve()
    mirrored = []
    for upstream in config.upstreams.values():
        text = upstream.name
        if upstream.aliases:
            text += f" (also {', '.join(upstream.aliases)})"
        default = DEFAULT_UPSTREAMS.get(upstream.name, {}).get("url")
        if upstream.url != default and upstream.host != upstream.name:
            text += f" at {upstream.url}"
        mirrored.append(text)
    auth = config.auth
    if auth.anonymous_push:
        pushes = "open to anyone (anonymous_push = true)"
    elif auth.users:
        pushes = f"for {len(auth.users)} user{'s' if len(auth.users) != 1 else ''} (basic auth)"
    else:
        pushes = (
            "refused: no users are configured (add [auth.users] or [auth] htpasswd_file, "
            "or set anonymous_push = true)"
        )
    command = ["edgecache", "mirror-config", "containerd"]
    if config.server.data != SCHEMA["server"]["data"][1]:
        command += ["--data", shlex.quote(str(data))]
    host, _ = parse_hostport(config.server.listen)
    if host in ("0.0.0.0", "::"):  # other nodes cannot use the loopback URL of server.json
        scheme = "https" if config.server.tls else "http"
        command += ["--url", f"{scheme}://{socket.gethostname()}:{bound.rsplit(':', 1)[1]}"]
    command += ["--write", "/etc/containerd/certs.d"]
    return "\n".join(
        [
            f"edgecache {__version__} listening on {bound} (data {data})",
            f"  mirrors:     {', '.join(mirrored) or 'nothing (no upstreams configured)'}",
            f"  pushes:      {pushes}",
            f"  pulls:       {'anonymous' if auth.anonymous_pull else 'need a user'}",
            f"  access log:  {config.server.access_log}",
            f"  processes:   {processes}"
            + (" (this one fetches, and runs GC and the admin API)" if processes > 1 else ""),
            f"  containerd:  {' '.join(command)}",
        ]
    )
