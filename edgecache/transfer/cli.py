"""The `preload` and `export` subcommands; edgecache/cli.py adds them to its parser."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import TransferError

DEFAULT_DATA = "./edgecache-data"


def _data(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data)
    from ..config import load

    return Path(load().server.data)


def add_preload_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "preload",
        help="load docker-save archives and OCI layouts into the store",
        description="Import `docker save` archives (manifest.json) and OCI image layouts (a "
        "directory or a tar with index.json), plain, gzip or zstd compressed. Works with the "
        "server running or stopped. Names are Docker references, stored fully qualified "
        "(nginx:1.27 -> docker.io/library/nginx:1.27), the repository the pull-through cache "
        "uses. Repeating an import writes nothing; a killed import resumes where it stopped.",
    )
    p.add_argument("--data", metavar="DIR", help=f"data directory (default {DEFAULT_DATA})")
    p.add_argument("files", metavar="FILE", nargs="+", help="archive or layout directory")
    p.add_argument(
        "--as",
        dest="rename",
        metavar="NAME:TAG",
        help="store the (single) image as this repository and tag, taken literally",
    )
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
        description="Write images (NAME:TAG or NAME@DIGEST, as stored, e.g. "
        "docker.io/library/nginx:1.27 or nginx:1.27) to an OCI-layout tar, or with "
        "--format docker a tar that docker load also reads. `edgecache preload` of the "
        "result restores the same digests.",
    )
    p.add_argument("--data", metavar="DIR", help=f"data directory (default {DEFAULT_DATA})")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="tar file to write")
    p.add_argument("--format", choices=["oci", "docker"], default="oci")


def run_preload(args: argparse.Namespace) -> int:
    from .importer import preload

    try:
        summary = preload(
            _data(args), [Path(f) for f in args.files], rename=args.rename, pin=args.pin
        )
    except TransferError as exc:
        print(f"edgecache preload: {exc}", file=sys.stderr)
        return 1
    for name, digest in summary.images:
        print(f"{name} {digest}")
    print(f"preloaded {summary.line()}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import export

    try:
        summary = export(_data(args), args.images, Path(args.output), fmt=args.format)
    except TransferError as exc:
        print(f"edgecache export: {exc}", file=sys.stderr)
        return 1
    for name, digest in summary.images:
        print(f"{name} {digest}")
    print(f"exported {summary.line()} to {args.output}")
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
