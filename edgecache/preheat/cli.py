"""`edgecache preheat`: what the admin API's preheat endpoints offer, for a terminal.

edgecache preheat IMAGE...            preheat images now (provider site unless --provider)
edgecache preheat run POLICY          run a policy now
edgecache preheat jobs [ID]           jobs, newest first (or one job); --follow: live
edgecache preheat cancel ID           cancel a queued or running job
edgecache preheat policies            the policies, from the config and the admin API
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .. import cliformat
from .jobs import FINAL

VERBS = ("run", "jobs", "cancel", "policies")
POLL = 0.5


def add_parser(sub: Any, add_data: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "preheat",
        help="put images on the site (and into P2P engines) before anyone pulls",
        description="Preheat images now (IMAGE... as repository:tag or repository@digest, "
        "repositories named as clients name them, e.g. docker.io/library/nginx:1.27), run a "
        "policy (run POLICY), list jobs (jobs [ID]), cancel one (cancel ID) or list the "
        "policies (policies), through the running server's admin API.",
    )
    p.add_argument(
        "words",
        nargs="+",
        metavar="ARG",
        help="IMAGE... | run POLICY | jobs [ID] | cancel ID | policies",
    )
    p.add_argument(
        "--provider",
        action="append",
        default=[],
        help="preheat IMAGE: a provider to use (repeatable; default site)",
    )
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        help="preheat IMAGE: only these platforms of an index, e.g. linux/amd64 (repeatable)",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="show the job's progress until it ends (exit status 1 unless it succeeded)",
    )
    p.add_argument("--limit", type=int, default=20, help="jobs: how many (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_data(p)
    p.add_argument("--url", help="server URL (default: from <data>/run/server.json)")
    p.add_argument("--token", help="admin token (default: from <data>/run/admin-token)")


def run(args: argparse.Namespace, admin: Callable[..., Any]) -> int:
    words = args.words
    verb = words[0] if words[0] in VERBS else None
    if verb == "run":
        if len(words) != 2:
            return _usage("preheat run POLICY")
        return _job(args, admin, admin("preheat/run", "POST", json_body={"policy": words[1]}))
    if verb == "cancel":
        if len(words) != 2:
            return _usage("preheat cancel ID")
        print(f"cancelled {admin(f'preheat/jobs/{_id(words[1])}/cancel', 'POST')['cancelled']}")
        return 0
    if verb == "policies":
        policies = admin("preheat/policies")
        print(json.dumps(policies, indent=2) if args.json else _policies(policies))
        return 0
    if verb == "jobs":
        if len(words) > 2:
            return _usage("preheat jobs [ID]")
        if len(words) == 2:
            record = admin(f"preheat/jobs/{_id(words[1])}")
            return _job(args, admin, record)
        jobs = admin("preheat/jobs", limit=str(args.limit))
        live = [j for j in jobs if j["state"] not in FINAL]
        if args.follow and live:  # the newest job still going
            return _job(args, admin, live[0])
        print(json.dumps(jobs, indent=2) if args.json else jobs_table(jobs))
        return 0
    body: dict[str, Any] = {"images": words}
    if args.provider:
        body["providers"] = args.provider
    if args.platform:
        body["platforms"] = args.platform
    return _job(args, admin, admin("preheat/run", "POST", json_body=body))


def _id(job_id: str) -> str:
    """A job id as it goes in the admin URL: nothing in it can reach another endpoint."""
    return quote(job_id, safe="")


def _usage(text: str) -> int:
    print(f"edgecache: usage: edgecache {text}", file=sys.stderr)
    return 2


def _job(args: argparse.Namespace, admin: Callable[..., Any], record: dict[str, Any]) -> int:
    if args.follow:
        record = _follow(admin, record)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(job_text(record))
    if record["state"] in FINAL or args.follow:
        return 0 if record["state"] == "succeeded" else 1
    return 0


def _follow(admin: Callable[..., Any], record: dict[str, Any]) -> dict[str, Any]:
    tty = sys.stderr.isatty()
    shown = ""
    while record["state"] not in FINAL:
        line = progress_line(record)
        if line != shown:
            print(("\r" + line + "\x1b[K") if tty else line, end="" if tty else "\n",
                  file=sys.stderr, flush=True)  # fmt: skip
            shown = line
        time.sleep(POLL)
        record = admin(f"preheat/jobs/{_id(record['id'])}")
    if tty and shown:
        print(file=sys.stderr)
    return record


def progress_line(record: dict[str, Any], width: int = 30) -> str:
    progress = record.get("progress") or {}
    total, done = progress.get("results", 0), progress.get("finished", 0)
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"{record['id']} {record['state']:<9} [{bar}] {done}/{total} results, "
        f"{cliformat.size(record.get('bytes', 0))}"
    )


def job_text(record: dict[str, Any]) -> str:
    lines = [
        f"job {record['id']}: {record['state']}"
        + (f" (policy {record['policy']}" if record.get("policy") else " (")
        + f"{', ' if record.get('policy') else ''}trigger {record['trigger']})",
    ]
    if record.get("started") and record.get("finished"):
        lines.append(
            f"  took {cliformat.duration(record['finished'] - record['started'])}, "
            f"{cliformat.size(record.get('bytes', 0))} fetched"
        )
    if record.get("error"):
        lines.append(f"  {record['error']}")
    for image in record.get("images", []):
        note = image.get("error") or image.get("skipped") or ""
        platforms = ", ".join(p for p in image.get("platforms", []) if p)
        lines.append(
            f"  {image['image']}"
            + (f" {image['digest'][:19]}" if image.get("digest") else "")
            + (f" [{platforms}]" if platforms else "")
            + (f": {note}" if note else "")
        )
        for provider, results in record.get("results", {}).items():
            result = results.get(image["image"])
            if result is None:
                continue
            text = f"    {provider}: {result['state']}"
            if result.get("bytes"):
                text += f", {cliformat.size(result['bytes'])}"
            if result.get("attempts", 1) > 1:
                text += f", {result['attempts']} attempts"
            if result.get("error") or result.get("detail"):
                text += f" ({result.get('error') or result.get('detail')})"
            lines.append(text)
    return "\n".join(lines)


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no preheat jobs yet"
    rows = [
        (
            j["id"],
            cliformat.date(j["created"]),
            j.get("policy") or "-",
            j["trigger"],
            j["state"],
            str(len(j.get("images", []))),
            cliformat.size(j.get("bytes", 0)),
        )
        for j in jobs
    ]
    headers = ("job", "created", "policy", "trigger", "state", "images", "bytes")
    return "\n".join(cliformat.table(headers, rows, right=(5, 6)))


def _policies(policies: list[dict[str, Any]]) -> str:
    if not policies:
        return "no preheat policies"
    rows = [
        (
            p["name"],
            ", ".join(p["repositories"]),
            ", ".join(p["tags"]),
            ", ".join(p["providers"]),
            ", ".join(p["on"]) or "-",
            p["schedule"] or "-",
            str(len(p["watch"])),
            p.get("source", ""),
        )
        for p in policies
    ]
    headers = ("policy", "repositories", "tags", "providers", "on", "schedule", "watched", "from")
    return "\n".join(cliformat.table(headers, rows, right=()))
