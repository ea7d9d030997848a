"""The `edgecache` command: a thin layer over the same modules the server uses.

Commands that change a running server go through its admin API (found via <data>/run/);
commands that only read or check the store open it directly (LMDB is multi-process safe).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import SCHEMA, ConfigError, load
from .usererror import UserError

DEFAULT_DATA = SCHEMA["server"]["data"][1]


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help=f"data directory (default {DEFAULT_DATA})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecache",
        description="A single-binary OCI registry cache for edge sites.",
        epilog="Run 'edgecache COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"edgecache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the registry cache",
        description="Serve the OCI distribution API. With no options: listen on 0.0.0.0:5000, "
        "data in ./edgecache-data, embedded defaults. A config file and EDGECACHE_<SECTION>_<KEY> "
        "variables override the defaults; these flags override both.",
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (port 0: any)")
    _add_data(serve)
    serve.add_argument("--config", metavar="FILE", help="TOML config (see config/edgecache.toml)")
    serve.add_argument(
        "--upstream",
        metavar="NAME=URL",
        action="append",
        default=[],
        help="add an upstream registry (repeatable): NAME is its project path "
        "(/v2/NAME/<repo>) and the ns host it answers for, e.g. "
        "docker.io=https://registry-1.docker.io",
    )

    fsck = sub.add_parser(
        "fsck",
        help="check the store (index against files, both ways)",
        description="Check that every index entry has a file with the right size and digest and "
        "every file has an entry. Exit status 0 when clean, 1 when problems were found. Safe "
        "while the server runs (writes in flight are listed as in progress); --repair "
        "refuses to run then.",
    )
    _add_data(fsck)
    fsck.add_argument(
        "--repair", action="store_true", help="remove entries and files that cannot be trusted"
    )
    fsck.add_argument("--quick", action="store_true", help="check sizes only, do not hash")

    status = sub.add_parser(
        "status",
        help="show statistics of a running server",
        description="Ask a running server (found through --data, or --url/--token) for its "
        "store statistics.",
    )
    _add_data(status)
    status.add_argument("--url", help="server URL (default: from <data>/run/server.json)")
    status.add_argument("--token", help="admin token (default: from <data>/run/admin-token)")
    status.add_argument("--json", action="store_true", help="print JSON")
    gc = sub.add_parser(
        "gc",
        help="run garbage collection in the running server (or preview it)",
        description="Ask the running server (found through --data, or --url/--token) to "
        "collect unreachable content now, while it keeps serving. --dry-run reports exactly "
        "what a real run would free (objects and bytes, per repository) and changes nothing.",
    )
    _add_data(gc)
    gc.add_argument("--dry-run", action="store_true", help="report, do not delete")
    gc.add_argument("--history", action="store_true", help="show past runs instead")
    gc.add_argument("--url", help="server URL (default: from <data>/run/server.json)")
    gc.add_argument("--token", help="admin token (default: from <data>/run/admin-token)")
    gc.add_argument("--json", action="store_true", help="print JSON")

    mirror = sub.add_parser(
        "mirror-config",
        help="print containerd/docker/podman config that pulls through this instance",
        description="Print ready-to-use client configuration for this edgecache: containerd "
        "hosts.toml files (one per upstream host), a Docker daemon.json snippet (Docker Hub "
        'only; needs [proxy] default_upstream = "docker.io"), or podman/CRI-O '
        "registries.conf mirrors (Harbor-style project paths, since they send no ns).",
    )
    mirror.add_argument("kind", choices=["containerd", "docker", "podman"])
    mirror.add_argument(
        "--url",
        action="append",
        help="this edgecache's URL as the clients reach it (default: the running server's, "
        "from <data>/run/server.json, else http://<hostname>:<listen port>); repeat it to "
        "list several edgecache nodes, tried in that order",
    )
    mirror.add_argument(
        "--peers",
        action="store_true",
        help="after the URL(s), list every other member of the site ([peers] members), so "
        "that clients fall through to them when the first is down",
    )
    _add_data(mirror)
    mirror.add_argument(
        "--config",
        metavar="FILE",
        help="the config the server runs with (default: the running server's upstreams, "
        "from <data>/run/server.json, else the embedded defaults)",
    )
    mirror.add_argument(
        "--upstream",
        metavar="NAME=URL",
        action="append",
        default=[],
        help="an upstream given to serve with --upstream (repeatable)",
    )
    mirror.add_argument("--ca-file", help="containerd: CA bundle to verify an https edgecache")
    mirror.add_argument(
        "--skip-verify",
        action="store_true",
        help="containerd: do not verify an https edgecache (lab use)",
    )
    mirror.add_argument(
        "--write",
        metavar="DIR",
        help="containerd: write the hosts.toml files under DIR "
        "(e.g. /etc/containerd/certs.d) instead of printing them",
    )
    from .transfer.cli import add_export_parser, add_preload_parser

    add_preload_parser(sub)
    add_export_parser(sub)
    from .preheat.cli import add_parser as add_preheat_parser

    add_preheat_parser(sub, _add_data)
    from .scan.cli import add_parsers as add_scan_parsers

    add_scan_parsers(sub, _add_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["_gc-mark"]:
        from .gc import markchild  # the server's GC mark, in its own process (not for users)

        return markchild.main()
    if (sys.argv[1:] if argv is None else argv)[:1] == ["_worker"]:
        from .server import workers  # a serving process started by `serve` (not for users)

        return workers.main()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "fsck":
            return _fsck(args)
        if args.command == "status":
            return _status(args)
        if args.command == "gc":
            return _gc(args)
        if args.command == "mirror-config":
            return _mirror_config(args)
        if args.command == "preload":
            from .transfer.cli import run_preload

            return run_preload(args)
        if args.command == "preheat":
            from .preheat.cli import run as run_preheat

            return run_preheat(args, lambda *a, **k: _admin(args, *a, **k))
        if args.command in ("scan", "report"):
            from .scan.cli import run_report, run_scan

            command = run_scan if args.command == "scan" else run_report
            return command(args, lambda *a, **k: _admin(args, *a, **k))
        if args.command == "export":
            from .transfer.cli import run_export

            return run_export(args)
    except ConfigError as exc:
        print(f"edgecache: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"edgecache: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edgecache {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `edgecache status | head`: the reader has what it wanted. Nothing more to say, and
        # no second error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    raise AssertionError(args.command)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from .server.run import serve

    overrides: dict[str, dict[str, Any]] = {"server": {}}
    if args.listen:
        overrides["server"]["listen"] = args.listen
    if args.data:
        overrides["server"]["data"] = args.data
    config = load(args.config, overrides=overrides, extra_upstreams=_upstream_flags(args))
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every upstream request at INFO; our own logs say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    trio.run(serve, config)
    return 0


def _upstream_flags(args: argparse.Namespace) -> dict[str, str]:
    upstreams: dict[str, str] = {}
    for item in args.upstream:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"--upstream {item!r}: expected NAME=URL")
        upstreams[name] = url
    return upstreams


def _mirror_config(args: argparse.Namespace) -> int:
    import socket

    from .config import parse_hostport
    from .mirror_config import (
        MirrorConfigError,
        containerd_hosts,
        render,
        write_containerd_hosts,
    )
    from .runfiles import cli_config, server_info
    from .usererror import output_file_error

    overrides: dict[str, dict[str, Any]] = {"server": {"data": args.data}} if args.data else {}
    data = Path(args.data or load(args.config).server.data)
    config = cli_config(
        args.config, data, overrides=overrides, extra_upstreams=_upstream_flags(args)
    )
    urls: list[str] = list(args.url or [])
    if not urls:
        url = (server_info(data) or {}).get("url")
        if not isinstance(url, str):
            host, port = parse_hostport(config.server.listen)
            if host in ("0.0.0.0", "::", ""):
                host = socket.getfqdn()
            scheme = "https" if config.server.tls else "http"
            url = f"{scheme}://{host}:{port}"
        urls.append(url)
    if args.peers:
        members = list(config.peers.members)
        if not members and args.config is None:
            running = (server_info(data) or {}).get("peers")
            members = (
                [m for m in running if isinstance(m, str)] if isinstance(running, list) else []
            )
        if not members:
            print(
                "edgecache: --peers: no [peers] members in this config (pass --config with "
                "the site's config, or run it where the node's server runs)",
                file=sys.stderr,
            )
            return 2
        urls += [m for m in members if m not in urls]
    try:
        if args.write:
            if args.kind != "containerd":
                raise MirrorConfigError("--write is for containerd's hosts.toml files")
            files = containerd_hosts(
                config.upstreams, urls, ca_file=args.ca_file, skip_verify=args.skip_verify
            )
            try:
                written = write_containerd_hosts(files, Path(args.write))
            except OSError as exc:
                raise output_file_error(Path(exc.filename or args.write), exc) from None
            for path in written:
                print(f"wrote {path}")
            return 0
        print(
            render(args.kind, config, urls, ca_file=args.ca_file, skip_verify=args.skip_verify),
            end="",
        )
    except MirrorConfigError as exc:
        print(f"edgecache: {exc}", file=sys.stderr)
        return 2
    return 0


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data)
    return Path(load().server.data)


def _fsck(args: argparse.Namespace) -> int:
    from .store import Store
    from .store.fsck import fsck
    from .store.lock import DataDirInUse, DataDirLock, holder, preload_running

    data = _data_dir(args)
    if not (data / "index").is_dir():
        print(f"edgecache: {data} is not an edgecache data directory", file=sys.stderr)
        return 2
    hold = None
    if args.repair:
        # Held for the repair: a server or preload starting meanwhile is refused (or waits).
        try:
            hold = DataDirLock.acquire(data, "edgecache fsck --repair", with_preloads=True)
        except DataDirInUse as exc:
            print(
                f"edgecache: fsck --repair refused: {exc}; stop it first (plain fsck is "
                "safe while it runs)",
                file=sys.stderr,
            )
            return 2
        live = False
    else:
        user = holder(data)
        live = user is not None or preload_running(data)
        if live:
            print(f"data directory in use by {user or 'edgecache preload'}: checking it live")
    try:
        store = Store.open(data)
        try:
            report = fsck(
                store.layout, store.index, repair=args.repair, verify=not args.quick, live=live
            )
        finally:
            store.close()
    finally:
        if hold is not None:
            hold.release()
    for line in report.in_progress:
        print("in progress: " + line)
    for line in report.problems:
        print(("repaired: " if line in report.repaired else "problem: ") + line)
    print(
        f"checked {report.checked_blobs} index entries and {report.checked_files} files: "
        f"{len(report.problems)} problems"
        + (f", {len(report.repaired)} repaired" if args.repair else "")
        + (f", {len(report.in_progress)} writes in progress" if report.in_progress else "")
    )
    return (
        0 if report.clean or (args.repair and len(report.repaired) == len(report.problems)) else 1
    )


def _server_endpoint(args: argparse.Namespace) -> tuple[str, str]:
    data = _data_dir(args)
    url, token = args.url, args.token
    if url is not None and "://" not in url:  # --url edge:5000, as Docker names a registry
        url = f"http://{url}"
    if (url is None or token is None) and data.exists() and not data.is_dir():
        raise UserError(f"data directory {data} is a file, not a directory")
    if url is None:
        try:
            url = json.loads((data / "run" / "server.json").read_text())["url"]
        except (OSError, ValueError, KeyError):
            raise UserError(f"no running server found in {data} (use --url)") from None
    if token is None:
        try:
            token = (data / "run" / "admin-token").read_text().strip()
        except OSError:
            raise UserError(f"no admin token in {data}/run (use --token)") from None
    return url, token


def _admin(
    args: argparse.Namespace,
    name: str,
    method: str = "GET",
    json_body: Any = None,
    **params: str,
) -> Any:
    import httpx

    url, token = _server_endpoint(args)
    try:
        response = httpx.request(
            method,
            f"{url}/_edgecache/admin/{name}",
            params=params,
            json=json_body,
            headers={"Authorization": f"Bearer {token}"},
            verify=False,  # the admin token, not the certificate, authenticates; loopback
            timeout=None,  # a GC over a large store takes as long as it takes
        )
    except httpx.TransportError as exc:
        raise UserError(f"cannot reach the server at {url}: {exc}") from None
    if response.status_code not in (200, 202):
        raise UserError(f"server answered {response.status_code}: {_error_text(response)}")
    return response.json()


def _error_text(response: Any) -> str:
    """The message of an OCI error answer, else the body."""
    try:
        return "; ".join(e["message"] for e in response.json()["errors"])
    except (ValueError, KeyError, TypeError):
        return str(response.text)


def _admin_get(args: argparse.Namespace, name: str) -> dict[str, Any]:
    result: dict[str, Any] = _admin(args, name)
    return result


def _gc(args: argparse.Namespace) -> int:
    from . import cliformat

    if args.history:
        runs = _admin(args, "gc/history")
        print(json.dumps(runs, indent=2) if args.json else cliformat.gc_history(runs))
        return 0
    params = {"dry_run": "true"} if args.dry_run else {}
    record = _admin(args, "gc", "POST", **params)
    print(json.dumps(record, indent=2) if args.json else cliformat.gc_run(record, args.dry_run))
    return 0


def _status(args: argparse.Namespace) -> int:
    from . import cliformat

    stats = _admin_get(args, "status")
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(cliformat.status(stats, _server_endpoint(args)[0]))
    return 0
