"""The `preload` and `export` subcommands; edgecache/cli.py adds them to its parser."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import Config
from .errors import TransferError
from .plan import MAX_REFERRERS, plural

DEFAULT_DATA = "./edgecache-data"


def _data(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data)
    from ..config import load

    return Path(load(args.config).server.data)


def _config(args: argparse.Namespace) -> Config:
    from ..runfiles import cli_config

    return cli_config(args.config, _data(args))


_CONFIG_HELP = (
    "the server's config, for its upstream names and aliases (default: the running "
    "server's, from <data>/run/server.json, else the embedded defaults)"
)


def add_preload_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "preload",
        help="load docker-save archives and OCI layouts into the store",
        description="Import `docker save` archives (manifest.json) and OCI image layouts (a "
        "directory or a tar with index.json), plain, gzip or zstd compressed. Works with the "
        "server running or stopped. Names are Docker references, stored fully qualified "
        "(nginx:1.27 -> docker.io/library/nginx:1.27), the repository the pull-through cache "
        "uses (through the config's upstreams: a name whose registry is an upstream's name, "
        "alias or URL host lands in that upstream's repository). A FILE may be a pipe "
        "(/dev/stdin). Repeating an import writes nothing; a killed import resumes where it "
        "stopped. Referrers in an OCI layout (signatures, SBOMs, scan reports: manifests with "
        "a subject, listed in index.json without a name, or only among its blobs) are stored "
        "untagged in the repository of their subject. The summary counts manifests (indexes "
        "and platform manifests), blobs (configs and layers) and referrers, each once, as "
        "export does.",
    )
    p.add_argument("--data", metavar="DIR", help=f"data directory (default {DEFAULT_DATA})")
    p.add_argument("files", metavar="FILE", nargs="+", help="archive or layout directory")
    p.add_argument(
        "--as",
        dest="rename",
        metavar="NAME:TAG",
        help="store the (single) image under this name: as clients pull it from this "
        "edgecache (team/app:1.0, or a project path such as lab/team/app:1.0 through an "
        "upstream's name or alias), or as a Docker reference to an upstream named host:port "
        "(registry.lab:5000/team/app:1.0)",
    )
    p.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="protect the content from eviction (default: on)",
    )


def add_export_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export",
        help="write images from the store to a tar",
        description="Write images (NAME:TAG or NAME@DIGEST: as stored, e.g. "
        "docker.io/library/nginx:1.27, as Docker names them, e.g. nginx:1.27 or "
        "127.0.0.1:5001/lab/app:1.0, or by a project path through an upstream's alias, e.g. "
        "lab/team/app:1.0) to an OCI-layout tar, or with --format docker a tar that docker "
        "load also reads. `edgecache preload` of the result restores the same digests. "
        "The OCI format carries the images' referrers (signatures, SBOMs, scan reports, and "
        f"theirs; at most {MAX_REFERRERS}), listed in index.json without a name; --format "
        "docker leaves them out. The summary counts manifests (indexes and platform "
        "manifests), blobs (configs and layers) and referrers, each once, as preload does. "
        "-o may be a pipe (/dev/stdout).",
    )
    p.add_argument("--data", metavar="DIR", help=f"data directory (default {DEFAULT_DATA})")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="tar file to write")
    p.add_argument("--format", choices=["oci", "docker"], default="oci")
    p.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)


def run_preload(args: argparse.Namespace) -> int:
    from .importer import preload

    try:
        summary = preload(
            _data(args),
            [Path(f) for f in args.files],
            rename=args.rename,
            pin=args.pin,
            config=_config(args),
        )
    except TransferError as exc:
        print(f"edgecache preload: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "edgecache preload: interrupted; nothing of the unfinished input was published "
            "(run the same command again: it resumes after the blobs already verified)",
            file=sys.stderr,
        )
        return 130
    for name, digest in summary.images:
        print(f"{name} {digest}")
    print(f"preloaded {summary.line()}")
    _preload_events(_data(args), summary.images)
    return 0


def _preload_events(data: Path, images: list[tuple[str, Any]]) -> None:
    """The preload event of preheat policies and scans: recorded in the index (a server
    started later picks it up), then the running server, if any, is told to look; and the
    scan records of the reports the archive carried (scan/service.py)."""
    import json
    import time

    from ..preheat.config import split_image
    from ..preheat.jobs import new_id
    from ..store import Store

    if not images:
        return
    event_id = new_id(time.time())
    record = {
        "id": event_id,
        "kind": "preload",
        "images": [
            {"repository": repo, "tag": tag, "digest": str(digest)}
            for name, digest in images
            for repo, tag in [split_image(name)]
        ],
    }
    from ..scan.service import record_imported_reports

    store = Store.open(data)
    try:
        # Vulnerability reports that came in the archive gate pulls here as scanned ones do.
        for name, digest in images:
            repo, _ = split_image(name)
            record_imported_reports(store, repo, str(digest))
        store.index.put_preheat(f"event/{event_id}", record)
    finally:
        store.close()
    try:
        import httpx

        url = json.loads((data / "run" / "server.json").read_text())["url"]
        token = (data / "run" / "admin-token").read_text().strip()
        httpx.post(
            f"{url}/_edgecache/admin/preheat/events",
            headers={"Authorization": f"Bearer {token}"},
            verify=False,  # the admin token authenticates; loopback
            timeout=10,
        )
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        pass  # no server running: it reads the events when it starts


def run_export(args: argparse.Namespace) -> int:
    from .export import export

    try:
        summary = export(
            _data(args), args.images, Path(args.output), fmt=args.format, config=_config(args)
        )
    except TransferError as exc:
        print(f"edgecache export: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        output = Path(args.output)
        what = "was not written" if output.is_file() or not output.exists() else "is incomplete"
        print(f"edgecache export: interrupted; {output} {what}", file=sys.stderr)
        return 130
    for name, digest in summary.images:
        print(f"{name} {digest}")
    print(f"exported {summary.line()} to {args.output}")
    if summary.left_out:
        print(
            f"edgecache export: left out {plural(summary.left_out, 'referrer')} (signatures, "
            "SBOMs, scan reports): the docker format cannot carry them; --format oci does",
            file=sys.stderr,
        )
    if summary.incomplete:
        digest, missing = next(iter(summary.incomplete.items()))
        more = len(summary.incomplete) - 1
        print(
            f"edgecache export: left out {plural(len(summary.incomplete), 'referrer')} the "
            f"store does not hold whole (referrer {digest}: {missing}"
            f"{f'; and {more} more' if more else ''}); pull them through this edgecache first",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point until edgecache/cli.py wires the subcommands in."""
    parser = argparse.ArgumentParser(prog="edgecache")
    sub = parser.add_subparsers(dest="command", required=True)
    add_preload_parser(sub)
    add_export_parser(sub)
    args = parser.parse_args(argv)
    return run_preload(args) if args.command == "preload" else run_export(args)


if __name__ == "__main__":
    sys.exit(main())
