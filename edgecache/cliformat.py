"""How `edgecache status` and `edgecache gc` print what the admin API answers.

For people: dates instead of epoch seconds, durations in words, sizes with units (and the
exact byte count where it may be compared), nested records as indented lines, tables with
aligned columns. `--json` prints the API's answer unchanged for scripts. The layout is driven
by the key names the API uses (`*_bytes`, `*_seconds`, `*_ratio`, `time`, `started`...), so a
statistic added to the API later prints sensibly without a change here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DATE_KEYS = frozenset({"time", "started", "ended", "until", "created", "updated", "found"})


def size(n: float) -> str:
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_SPANS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def duration(seconds: float) -> str:
    """3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h: the two largest units, which is all one reads."""
    left = round(seconds)
    for i, (unit, length) in enumerate(_SPANS):
        if left >= length or unit == "s":
            text = f"{left // length} {unit}"
            if i + 1 < len(_SPANS):
                smaller, small_length = _SPANS[i + 1]
                if rest := left % length // small_length:
                    text += f" {rest} {smaller}"
            return text
    raise AssertionError("unreachable")


def date(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _is_date(key: str) -> bool:
    # "last_full_pass": when the scrub's last full pass ended.
    return key in _DATE_KEYS or key.endswith(("_at", "_time", "_pass"))


def value_text(key: str, value: Any) -> str:
    """One value, formatted by what its key says it is."""
    if value is None:
        return "-"
    if isinstance(value, Mapping):  # e.g. repository -> how it holds the content
        return ", ".join(f"{k} ({v})" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(value_text(key, v) for v in value) or "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if _is_date(key):
        return date(value) if value else "-"
    if key.endswith("_per_second") and "bytes" in key:  # a rate: rate_bytes_per_second
        return f"{size(value)}/s"
    if "bytes" in key.split("_") or key == "size":  # store_bytes, bytes_verified
        return f"{size(value)} ({value:,} bytes)" if value >= 1024 else size(value)
    if key.endswith("_ago") or key.endswith("seconds_ago"):
        return f"{duration(value)} ago"
    if key.endswith("_seconds") or key == "seconds":
        return duration(value)
    if key.endswith("_ratio"):
        return f"{value:.1%}"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def label(key: str) -> str:
    """`oldest_content_age_seconds` -> `oldest content age` (the unit is in the value)."""
    if key == "seconds_ago":
        return "when"
    for suffix in ("_seconds_ago", "_bytes_per_second", "_seconds"):
        if key.endswith(suffix):
            key = key[: -len(suffix)] + ("_ago" if suffix == "_seconds_ago" else "")
            break
    return key.replace("_", " ")


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    indent: str = "",
    right: Sequence[int] | None = None,
) -> list[str]:
    """Aligned columns; `right` are right-aligned (default: all but the first, numbers)."""
    right = range(1, len(headers)) if right is None else right
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [
            f"{cell:>{widths[i]}}" if i in right else f"{cell:<{widths[i]}}"
            for i, cell in enumerate(row)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def fields(data: Mapping[str, Any], indent: str = "") -> list[str]:
    """`label  value` lines; nested records indented under their label, lists as tables."""
    width = max((len(label(k)) for k in data), default=0) + 2
    lines = []
    for key, value in data.items():
        if isinstance(value, Mapping) and value and all(isinstance(v, int) for v in value.values()):
            lines.append(f"{indent}{label(key)}")
            pairs = [[str(k), value_text(key, v)] for k, v in value.items()]
            lines += table(["", ""], pairs, indent + "  ")[1:]
        elif isinstance(value, Mapping) and value:
            lines.append(f"{indent}{label(key)}")
            lines += fields(value, indent + "  ")
        elif _records(value):
            lines.append(f"{indent}{label(key)}")
            headers = list(dict.fromkeys(k for record in value for k in record))
            cells = [[value_text(h, r.get(h)) for h in headers] for r in value]
            lines += table([label(h) for h in headers], cells, indent + "  ")
        else:
            lines.append(f"{indent}{label(key):<{width}}{value_text(key, value)}")
    return lines


def status(stats: dict[str, Any], url: str) -> str:
    stats = dict(stats)
    by_repo: dict[str, int] = stats.pop("bytes_by_repository", None) or {}
    version = stats.pop("version", "?")
    now = stats.pop("time", None)
    workers: list[dict[str, Any]] = stats.pop("workers", None) or []
    head = f"edgecache {version} at {url}" + (f", {date(now)}" if now else "")
    lines = [head, "", *fields(stats)]
    if workers:
        rows = [_worker_row(w) for w in workers]
        lines += ["", *table(["process", "pid", "state", "restarts", "up"], rows)]
    if by_repo:
        rows = [(repo, size(n)) for repo, n in by_repo.items()]
        lines += ["", *table(["repository", "size"], rows)]
    return "\n".join(lines)


def _worker_row(w: dict[str, Any]) -> tuple[str, ...]:
    if w.get("owner"):
        return ("owner", str(w["pid"]), "serving, fetching, gc, admin", "-", "-")
    state = "serving" if w.get("serving") else ("starting" if w.get("pid") else "down")
    up = duration(w["up_seconds"]) if w.get("up_seconds") else "-"
    return (f"worker {w['worker']}", str(w.get("pid") or "-"), state, str(w["restarts"]), up)


def gc_run(record: dict[str, Any], dry_run: bool) -> str:
    done = record["would_free"] if dry_run else record["freed"]
    verb = "would free" if dry_run else "freed"
    objects = done.get("candidates", done.get("objects", 0))
    lines = [
        f"gc {verb} {_count(objects, 'object')}, {size(done['bytes'])} "
        f"({record['ended'] - record['started']:.2f} s; {record['live']} live objects kept)"
    ]
    by_repo = done.get("by_repository", {})
    if by_repo:
        rows = [
            (repo, _count(e["objects"], "object"), size(e["bytes"])) for repo, e in by_repo.items()
        ]
        lines += table(["repository", "objects", "size"], rows, "  ")[1:]
    for reason, count in record.get("skipped", {}).items():
        lines.append(f"  skipped {count}: {reason}")
    young = record.get("kept_young") or {}
    if young.get("objects"):
        grace = duration(record.get("options", {}).get("grace", 0))
        one = young["objects"] == 1
        lines.append(
            f"  {_count(young['objects'], 'object')} ({size(young['bytes'])}) "
            f"{'is' if one else 'are'} younger than the grace window ({grace}, [gc] grace) and "
            f"{'was' if one else 'were'} kept; {'it goes' if one else 'they go'} after "
            f"{date(young['until'])}"
        )
    return "\n".join(lines)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def gc_history(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run in runs:
        done = run.get("would_free") if run["dry_run"] else run.get("freed")
        young = (run.get("kept_young") or {}).get("objects", 0)
        skipped = ", ".join(f"{k}: {v}" for k, v in run.get("skipped", {}).items())
        if young:
            skipped = ", ".join(filter(None, [skipped, f"younger than the grace window: {young}"]))
        rows.append(
            (
                date(run["started"]),
                "dry-run" if run["dry_run"] else "run",
                run["trigger"][:22],
                f"{run['ended'] - run['started']:.2f}",
                str(done.get("candidates", done.get("objects", 0)) if done else 0),
                size(done.get("bytes", 0) if done else 0),
                skipped or "-",
            )
        )
    headers = ["started", "kind", "trigger", "seconds", "objects", "size", "skipped or kept"]
    return "\n".join(table(headers, rows, right=(3, 4, 5)))
