"""The one harness of the benchmarks: options, targets, interleaved rounds, ratios, the table.

A script states its targets and its measurement; this module does the rest the same way for
all of them:
- options every script has: --rounds, --workdir, --json FILE, --record [FILE] (and --workers
  for the scripts that compare edgecache's worker counts);
- targets (`Target`): a name, how to start and stop it, where to reach it; started once for
  the run, or afresh for every measurement (cold caches);
- rounds: every round measures every target (at every level, e.g. client count), the target
  order alternating from round to round, so that on a box whose load drifts neither side
  always goes first;
- the report: per target and level, the value of each round, the median, and the median (and
  min-max) of the per-round ratios to a baseline measured in the same round; printed as a
  markdown table under a header (date, machine, edgecache source, load average), written as
  JSON with --json, inserted into RESULTS.md with the exact command line by --record.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c
from _targets import Target, edgecache, edgecache_knows, edgecaches, nginx, registry, with_workers

__all__ = [
    "RECORD_MARKER", "RESULTS_MD", "Bench", "Column", "Group", "Target", "edgecache",
    "edgecache_knows", "edgecaches", "fmt_ratio", "level_col", "median_col", "metric",
    "name_col", "nginx", "per_round", "ratio_col", "record_run", "registry", "with_workers",
]  # fmt: skip

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
# --record inserts each run right below this line (newest first); without it, at the end.
RECORD_MARKER = "<!-- runs recorded with --record go below this line, newest first -->"

T = TypeVar("T")


# ---------------------------------------------------------------------------------- results


@dataclass
class Group:
    """One row of the table: a target's measurements at one level, and its baseline's."""

    name: str
    level: Any
    recs: list[dict[str, Any]]
    base: list[dict[str, Any]]

    def vals(self, key: str) -> list[Any]:
        return [r[key] for r in self.recs]

    def median(self, key: str) -> float:
        return c.median(self.vals(key)) if self.recs else math.nan

    def ratios(self, key: str, base: Sequence[dict[str, Any]] | None = None) -> list[float]:
        """This target's value / the baseline's (or `base`'s), per round (both measured in
        that round)."""
        by_round = {r["round"]: r[key] for r in (self.base if base is None else base)}
        return [r[key] / by_round[r["round"]] for r in self.recs if r["round"] in by_round]


Column = tuple[str, Callable[[Group], Any]]


def fmt_ratio(rs: Sequence[float]) -> str:
    """Median of per-round ratios, and their min-max when there are several rounds."""
    if not rs or any(math.isnan(r) for r in rs):
        return "-"
    med = f"{c.median(rs):.2f}x"
    return med if len(rs) == 1 else f"{med} ({min(rs):.2f}-{max(rs):.2f})"


def level_col(header: str) -> Column:
    return header, lambda g: g.level


def name_col(header: str = "target") -> Column:
    return header, lambda g: g.name


Fmt = str | Callable[[Any], str]  # a str.format pattern, or a function


def _fmt(fmt: Fmt) -> Callable[[Any], str]:
    return fmt.format if isinstance(fmt, str) else fmt


def per_round(header: str, key: str, fmt: Fmt = "{:.0f}") -> Column:
    return header, lambda g: " / ".join(_fmt(fmt)(v) for v in g.vals(key))


def median_col(header: str, key: str, fmt: Fmt = "{:.0f}") -> Column:
    return header, lambda g: _fmt(fmt)(g.median(key))


def ratio_col(header: str, key: str) -> Column:
    return header, lambda g: fmt_ratio(g.ratios(key))


def metric(label: str, key: str, fmt: Fmt = "{:.0f}", baseline: str | None = None) -> list[Column]:
    """The usual three columns of the measured value: per round, median, ratio to baseline."""
    cols = [per_round(f"{label} per round", key, fmt), median_col(f"median {label}", key, fmt)]
    if baseline:
        cols.append(ratio_col(f"ratio to {baseline} (median, min-max)", key))
    return cols


# ------------------------------------------------------------------------------------- run


class Bench:
    """One run of one benchmark script: its options, the targets it started, its records."""

    def __init__(
        self,
        name: str,
        doc: str | None,
        *,
        rounds: int | None,
        workdir: bool = True,
        workers: bool = False,
    ) -> None:
        self.name = name
        self.records: list[dict[str, Any]] = []
        self._owned: list[c.Proc | Target] = []
        self.ap = argparse.ArgumentParser(
            description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        if rounds is not None:
            self.ap.add_argument(
                "--rounds", type=int, default=rounds, help="rounds (target order alternates)"
            )
        if workdir:
            self.ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgecache-bench"))
        self.ap.add_argument("--json", type=Path, help="also write every measurement here")
        self.ap.add_argument(
            "--record",
            nargs="?",
            type=Path,
            const=RESULTS_MD,
            metavar="FILE",
            help="insert the results, with this command line, into FILE (default RESULTS.md)",
        )
        if workers:
            self.ap.add_argument(
                "--workers",
                metavar="N,M",
                help="run edgecache once per [server] workers value, as separate targets "
                "(e.g. 1,2); without it, one edgecache with its default",
            )
            self.ap.add_argument(
                "--compare",
                metavar="REV",
                action="append",
                default=[],
                help="also measure the edgecache of git revision REV (a snapshot), as targets "
                "'edgecache@REV', in the same rounds; repeatable",
            )
        self.workers: list[int] | None = None
        self.compare: list[tuple[str, Path]] = []

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        a = self.ap.parse_args(argv)
        self.args = a
        if getattr(a, "workers", None):
            self.workers = [int(x) for x in a.workers.split(",")]
            if not edgecache_knows("server", "workers"):
                raise SystemExit(
                    f"--workers: the edgecache under test ({c.edgecache_source()}) has no "
                    "[server] workers key yet"
                )
        self.started = datetime.datetime.now()
        self.load0 = c.loadavg()
        if getattr(a, "workdir", None) is not None:
            a.workdir.mkdir(parents=True, exist_ok=True)
            self.run_dir: Path = a.workdir / f"{self.name}-{int(time.time())}"
        for rev in getattr(a, "compare", []):
            self.compare.append((rev, c.snapshot(rev, a.workdir / f"src-{rev}")))
        return a

    def edgecaches(self, name: str = "edgecache", **kw: Any) -> list[Target]:
        """The edgecache targets of this run: the code under test, one per --workers value,
        then the same for each --compare revision ("edgecache@REV w=N")."""
        targets = edgecaches(self.workers, name, **kw)
        for rev, src in self.compare:
            targets += edgecaches(self.workers, f"{name}@{rev}", src=str(src), **kw)
        return targets

    # ---- processes: everything started through the Bench is stopped when the run ends

    def own(self, proc: T) -> T:
        self._owned.append(proc)  # type: ignore[arg-type]
        return proc

    def start(self, targets: Sequence[Target], upstream: str | None = None) -> None:
        for t in targets:
            self.own(t)
            t.start(self.run_dir, upstream)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in reversed(self._owned):
            with contextlib.suppress(Exception):
                p.stop()
        if getattr(self, "run_dir", None) is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # ---- rounds

    def schedule(
        self,
        targets: Sequence[T],
        levels: Sequence[Any] = (None,),
        level_name: str = "clients",
        label: Callable[[T], str] = lambda t: str(getattr(t, "name", t)),
    ) -> Iterator[tuple[int, Any, T]]:
        """(round, level, target) for every measurement: rounds, then levels, then targets,
        the target order alternating from round to round."""
        for r in range(1, self.args.rounds + 1):
            for level in levels:
                for t in targets if r % 2 else targets[::-1]:
                    at = "" if level is None else f", {level} {level_name}"
                    c.log(f"round {r}/{self.args.rounds}: {label(t)}{at} (load {c.loadavg()}) ...")
                    yield r, level, t

    def record(self, name: str, rnd: int, level: Any = None, **values: Any) -> dict[str, Any]:
        rec = {"target": name, "round": rnd, "level": level, **values}
        self.records.append(rec)
        return rec

    # ---- report

    def groups(
        self, baseline: str | Callable[[str, Any], tuple[str, Any]] | None = None
    ) -> list[Group]:
        """A Group per (level, target) in the order first measured; `baseline`: a target name,
        or a function (name, level) -> the (name, level) to compare with."""
        keys: list[tuple[Any, str]] = []
        for r in self.records:
            if (r["level"], r["target"]) not in keys:
                keys.append((r["level"], r["target"]))
        levels = [level for level, _ in keys]
        keys.sort(key=lambda k: levels.index(k[0]))  # levels together, stable

        def recs(name: str, level: Any) -> list[dict[str, Any]]:
            return [r for r in self.records if r["target"] == name and r["level"] == level]

        out = []
        for level, name in keys:
            if baseline is None:
                base: list[dict[str, Any]] = []
            elif isinstance(baseline, str):
                base = recs(baseline, level)
            else:
                base = recs(*baseline(name, level))
            out.append(Group(name, level, recs(name, level), base))
        return out

    def ratio_to(self, header: str, key: str, name: str) -> Column:
        """A second ratio column: to target `name` (same level, same round)."""

        def fn(g: Group) -> str:
            base = [r for r in self.records if r["target"] == name and r["level"] == g.level]
            return fmt_ratio(g.ratios(key, base))

        return header, fn

    def table(
        self,
        columns: Sequence[Column],
        baseline: str | Callable[[str, Any], tuple[str, Any]] | None = None,
        groups: Sequence[Group] | None = None,
    ) -> str:
        rows = [[fn(g) for _, fn in columns] for g in groups or self.groups(baseline)]
        return c.table([h for h, _ in columns], rows)

    def header(self, *lines: str) -> list[str]:
        rounds = getattr(self.args, "rounds", None)
        how = f"{rounds} round(s), target order alternating by round; " if rounds else ""
        return [
            f"# {self.name}  {self.started.isoformat(timespec='seconds')}",
            f"# nproc {len(os.sched_getaffinity(0))}; {c.machine()}",
            f"# edgecache: {c.edgecache_source()}",
            *(f"# {line}" for line in lines),
            f"# {how}load average at start: {self.load0}, at end: {c.loadavg()}",
        ]

    def command(self) -> str:
        exe, script = Path(sys.executable), Path(sys.argv[0]).resolve()
        with contextlib.suppress(ValueError):
            exe = exe.relative_to(c.REPO_ROOT)
        with contextlib.suppress(ValueError):
            script = script.relative_to(c.REPO_ROOT)
        return shlex.join([str(exe), str(script), *sys.argv[1:]])

    def report(self, header: Sequence[str], body: Sequence[str], **json_extra: Any) -> None:
        """Print header + body (tables, notes); --json writes the records, --record the text."""
        print()
        print("\n".join([*header, *body]))
        a = self.args
        if a.json:
            a.json.write_text(
                json.dumps(
                    {
                        "bench": self.name,
                        "command": self.command(),
                        "started": self.started.isoformat(timespec="seconds"),
                        "header": list(header),
                        **json_extra,
                        "results": self.records,
                    },
                    indent=1,
                    default=str,
                )
            )
        if a.record:
            record_run(a.record, self.name, self.started, self.command(), [*header, *body])
            c.log(f"recorded in {a.record}")


def record_run(
    path: Path, name: str, started: datetime.datetime, command: str, lines: Sequence[str]
) -> None:
    """Insert a run into a results file: below RECORD_MARKER (newest first), else at the end.
    Lines starting with "#" (headers, notes) are fenced so that markdown keeps them as text."""
    out = [
        f"### `{name}`, {started.isoformat(timespec='minutes')}",
        "",
        f"Command: `{command}`",
    ]
    fenced = False
    for line in lines:
        code = line.startswith("#")
        if code != fenced:
            out += ["```", ""] if fenced else ["", "```"]
            fenced = code
        out.append(line)
    if fenced:
        out.append("```")
    block = "\n".join(out) + "\n"
    text = path.read_text() if path.exists() else ""
    if RECORD_MARKER in text:
        head, _, tail = text.partition(RECORD_MARKER + "\n")
        text = f"{head}{RECORD_MARKER}\n\n{block}{tail}"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
