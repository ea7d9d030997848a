"""A preheat job: one run of a policy (or of images named by hand) against its providers.

A job resolves its images first (tag -> digest, the platform manifests an index selects, the
filters), then hands them to each provider; providers run side by side, and one that fails
(after its retries) fails only its own results. The record, written to LMDB as the job moves
(at most every PROGRESS_WRITE seconds, and at each change of state), is what `edgecache
preheat jobs` shows; only the newest `[preheat] jobs_kept` records are kept.

States: queued -> running -> succeeded | partial (some results failed) | failed (all did) |
cancelled | stopped (a watch window closed; the next window resumes).
Result states: pending, running, done (the provider confirmed), sent (Kraken took it; no check
URL to confirm), skipped (nothing to do), failed, cancelled.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

FINAL = ("succeeded", "partial", "failed", "cancelled", "stopped")
OK_RESULTS = ("done", "sent", "skipped")
PROGRESS_WRITE = 1.0


_SEQUENCE = itertools.count()


def new_id(now: float) -> str:
    """Sortable by creation (LMDB keys), also within a millisecond of one process; unique
    across processes (the random part)."""
    return f"{int(now * 1000):013d}-{next(_SEQUENCE) % 4096:03x}{os.urandom(2).hex()}"


@dataclass
class Result:
    state: str = "pending"
    bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    error: str = ""
    detail: str = ""  # what the provider calls it: a Dragonfly job id, "sent to Kraken"

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "bytes": self.bytes}
        out["seconds"] = round(self.seconds, 3)
        if self.attempts:
            out["attempts"] = self.attempts
        if self.error:
            out["error"] = self.error
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class Image:
    repository: str
    reference: str  # the tag or digest asked for
    tag: str | None = None
    digest: str = ""
    media_type: str = ""
    size: int = 0
    # What providers fetch: the manifests of a single image, or the platform manifests an
    # index selects ({"digest", "mediaType", "size", "platform": "os/arch[/variant]"}).
    manifests: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""  # why the policy's filters left it out
    error: str = ""  # why it could not be resolved

    @property
    def name(self) -> str:
        if self.tag is None:
            return f"{self.repository}@{self.digest or self.reference}"
        return f"{self.repository}:{self.tag}"

    @property
    def ready(self) -> bool:
        return bool(self.digest) and not self.skipped and not self.error

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.name, "digest": self.digest}
        if (self.manifests and len(self.manifests) > 1) or any(
            "platform" in m for m in self.manifests
        ):
            out["platforms"] = [m.get("platform", "") for m in self.manifests]
        if self.skipped:
            out["skipped"] = self.skipped
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Job:
    id: str
    trigger: str
    providers: list[str]
    images: list[Image]
    policy: str | None = None
    created: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    state: str = "queued"
    error: str = ""
    # provider -> image name -> result
    results: dict[str, dict[str, Result]] = field(default_factory=dict)
    provider_errors: dict[str, str] = field(default_factory=dict)
    # How to run it (not recorded): the filters, whether the images are the policy's whole
    # selection (resolved when it starts), and when it must stop (a watch window's end).
    selector: Any = None
    select_all: bool = False
    deadline: float | None = None

    def result(self, provider: str, image: Image) -> Result:
        return self.results.setdefault(provider, {}).setdefault(image.name, Result())

    @property
    def bytes(self) -> int:
        return sum(r.bytes for rs in self.results.values() for r in rs.values())

    def settle(self) -> None:
        """The final state from the results (unless cancelled or stopped already)."""
        if self.state in ("cancelled", "stopped"):
            for results in self.results.values():
                for r in results.values():
                    if r.state in ("pending", "running"):
                        r.state = "cancelled"
            return
        states = [r.state for rs in self.results.values() for r in rs.values()]
        failed_images = [i for i in self.images if i.error]
        if not states and not failed_images:
            self.state = "succeeded"  # nothing selected: nothing to do
        elif all(s in OK_RESULTS for s in states) and not failed_images:
            self.state = "succeeded"
        elif any(s in OK_RESULTS for s in states):
            self.state = "partial"
        else:
            self.state = "failed"

    def progress(self) -> dict[str, int]:
        states = [r.state for rs in self.results.values() for r in rs.values()]
        return {
            "results": len(states),
            "finished": sum(s not in ("pending", "running") for s in states),
            "failed": sum(s == "failed" for s in states),
        }

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "policy": self.policy,
            "trigger": self.trigger,
            "state": self.state,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "bytes": self.bytes,
            "providers": self.providers,
            "images": [i.record() for i in self.images],
            "results": {
                provider: {name: r.record() for name, r in results.items()}
                for provider, results in self.results.items()
            },
            "progress": self.progress(),
        }
        if self.provider_errors:
            out["provider_errors"] = dict(self.provider_errors)
        if self.error:
            out["error"] = self.error
        return out
