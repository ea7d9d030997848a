"""Benchmark targets: what a run measures, by name, with how to start, stop and reach it.

Used through _harness.py (which re-exports these names): edgecache (optionally with
`[server] workers = N`), docker-registry (optionally a pull-through cache of the run's
upstream), nginx serving an OCI layout's blob files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

# A target's process: given its own directory and the URL of the upstream it should proxy
# (None when the run has no upstream), an unstarted Proc.
Factory = Callable[[Path, "str | None"], c.Proc]


class Target:
    """One thing measured: a name, how to start and stop it, where to reach it.

    prefix: what goes before a repository name in this target's paths ("up/" for an edgecache
    that proxies the upstream it names "up"). shares: another target whose process this one
    measures by another path (an edgecache's /healthz), started and stopped with it.
    """

    def __init__(
        self,
        name: str,
        factory: Factory | None = None,
        *,
        kind: str = "",
        prefix: str = "",
        path: str = "",
        shares: Target | None = None,
    ) -> None:
        self.name, self.factory, self.kind = name, factory, kind or name
        self.prefix, self.path, self.shares = prefix, path, shares
        self.proc: c.Proc | None = None

    def __repr__(self) -> str:
        return f"Target({self.name!r})"

    def start(self, workdir: Path, upstream: str | None = None) -> c.Proc:
        if self.shares is not None:
            return self.server
        assert self.factory is not None, self.name
        slug = "".join(ch if ch.isalnum() else "-" for ch in self.name)
        # Known before it starts: a start that fails half-way is still stopped by the harness.
        self.proc = self.factory(workdir / slug, upstream)
        self.proc.start()
        return self.proc

    def stop(self) -> None:
        if self.shares is None and self.proc is not None:
            self.proc.stop()

    @contextlib.contextmanager
    def running(self, workdir: Path, upstream: str | None = None) -> Iterator[c.Proc]:
        """A fresh instance for one measurement (a cold cache), stopped afterwards."""
        try:
            yield self.start(workdir, upstream)
        finally:
            self.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    @property
    def server(self) -> c.Proc:
        proc = self.shares.server if self.shares is not None else self.proc
        assert proc is not None, f"{self.name} is not running"
        return proc

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def repo(self, name: str) -> str:
        return self.prefix + name


def with_workers(config: str, workers: int | None) -> str:
    """`config` with `workers = N` in its [server] table (unchanged for None: today's code
    rejects the key, so it is written only when asked for)."""
    if workers is None:
        return config
    lines = config.splitlines()
    if "[server]" in (line.strip() for line in lines):
        i = [line.strip() for line in lines].index("[server]")
        lines.insert(i + 1, f"workers = {workers}")
        return "\n".join(lines) + "\n"
    return (
        config
        + ("\n" if config and not config.endswith("\n") else "")
        + (f"[server]\nworkers = {workers}\n")
    )


def edgecache(
    name: str = "edgecache",
    *,
    config: str = "",
    workers: int | None = None,
    upstream_name: str | None = None,
    src: str | None = None,
    env: dict[str, str] | None = None,
) -> Target:
    """An `edgecache serve`; upstream_name: it proxies the run's upstream under that name
    (`[upstreams.<name>] url = <upstream>`), so the image is at /v2/<name>/<repo>."""

    def make(d: Path, upstream: str | None) -> c.Proc:
        text = config
        if upstream_name is not None and upstream is not None:
            text = f'[upstreams."{upstream_name}"]\nurl = "{upstream}"\n' + text
        text = with_workers(text, workers)
        return c.Edgecache(d, config=text or None, env=env, src=src)

    prefix = f"{upstream_name}/" if upstream_name is not None else ""
    return Target(name, make, kind="edgecache", prefix=prefix)


def edgecaches(workers: Sequence[int] | None, name: str = "edgecache", **kw: Any) -> list[Target]:
    """One edgecache target, or one per worker count ("edgecache w=1", "edgecache w=2")."""
    if not workers:
        return [edgecache(name, **kw)]
    return [edgecache(f"{name} w={w}", workers=w, **kw) for w in workers]


def registry(name: str = "registry", *, json_log: bool = False) -> Target:
    """docker-registry; a pull-through cache of the run's upstream when there is one."""
    return Target(name, lambda d, up: c.Registry(d, proxy_remote=up, json_log=json_log))


def nginx(
    blob_dir: Path,
    workers: str = "auto",
    name: str = "nginx",
    tls: tuple[Path, Path] | None = None,
) -> Target:
    return Target(name, lambda d, _up: c.Nginx(d, blob_dir, workers, tls))


def edgecache_knows(section: str, key: str) -> bool:
    """Whether the edgecache under test (work tree or $BENCH_EDGECACHE_SRC) has that config key."""
    code = (
        "import sys; from edgecache.config import SCHEMA; "
        "sys.exit(0 if sys.argv[2] in SCHEMA.get(sys.argv[1], {}) else 1)"
    )
    env = dict(os.environ)
    if os.environ.get("BENCH_EDGECACHE_SRC"):
        env["PYTHONPATH"] = os.environ["BENCH_EDGECACHE_SRC"]
    # cwd "/": `python -c` puts the cwd first on sys.path, which must not shadow the source.
    argv = [str(c.VENV_BIN / "python"), "-c", code, section, key]
    return subprocess.run(argv, env=env, cwd="/", capture_output=True).returncode == 0
