"""`edgecache scan IMAGE...` and `edgecache report IMAGE`, through the running server's admin
API (the scans run there; the reports are in its store)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def add_parsers(sub: Any, add_data: Callable[[argparse.ArgumentParser], None]) -> None:
    scan = sub.add_parser(
        "scan",
        help="scan images for vulnerabilities now (through the configured scanner)",
        description="Ask the running server to scan images (repository:tag or "
        "repository@digest, as clients name them; each platform of an index) with its "
        "scanner adapter, and wait for the reports (--no-wait: only start).",
    )
    scan.add_argument("images", nargs="+", metavar="IMAGE")
    scan.add_argument("--scanner", help="which [scanners.NAME] (default: the default one)")
    scan.add_argument("--no-wait", action="store_true", help="start the scans and return")
    report = sub.add_parser(
        "report",
        help="print an image's vulnerability report",
        description="Print the stored report of an image: counts by severity and the worst "
        "vulnerabilities with package, version and fixed version (--json: the reports).",
    )
    report.add_argument("image", metavar="IMAGE")
    report.add_argument("--scanner", help="the report of this scanner (default: the newest)")
    report.add_argument("--top", type=int, default=10, help="how many vulnerabilities to list")
    for p in (scan, report):
        p.add_argument("--json", action="store_true", help="print JSON")
        add_data(p)
        p.add_argument("--url", help="server URL (default: from <data>/run/server.json)")
        p.add_argument("--token", help="admin token (default: from <data>/run/admin-token)")


def run_scan(args: argparse.Namespace, admin: Callable[..., Any]) -> int:
    failed = 0
    results = []
    for image in args.images:
        body: dict[str, Any] = {"image": image, "wait": not args.no_wait}
        if args.scanner:
            body["scanner"] = args.scanner
        answer = admin("scan", "POST", json_body=body)
        results.append(answer)
        for scan in answer["scans"]:
            failed += scan["state"] == "failed"
            if not args.json:
                note = scan["error"] or scan["severity"] or ""
                if scan["state"] == "done" and not scan["error"]:
                    note = f"highest severity {scan['severity'] or 'None'}"
                print(f"{answer['repository']}@{scan['digest']} ({scan['scanner']}): "
                      f"{scan['state']}{': ' + note if note else ''}")  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def run_report(args: argparse.Namespace, admin: Callable[..., Any]) -> int:
    from .report import HARBOR_REPORT, parse_report, summary_text

    params = {"image": args.image}
    if args.scanner:
        params["scanner"] = args.scanner
    answer = admin("report", **params)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0 if all(m["scanned"] for m in answer["manifests"]) else 1
    unscanned = 0
    for manifest in answer["manifests"]:
        name = f"{answer['repository']}@{manifest['digest']}"
        if not manifest["scanned"]:
            print(f"{name}: not scanned yet (edgecache scan {args.image})")
            unscanned += 1
            continue
        report = parse_report(HARBOR_REPORT, manifest["report"])
        print(summary_text(report, name, max(1, args.top)))
    if unscanned:
        print(f"{unscanned} manifest(s) not scanned", file=sys.stderr)
    return 1 if unscanned else 0
