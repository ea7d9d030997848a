"""Consistency check of a data directory, in both directions.

index → disk: every blob entry has a file of the recorded size whose bytes hash to its name;
disk → index: every file under blobs/ has an entry; leftovers in tmp/ and upload files without
a session (or sessions without a file) are reported. `repair` removes what cannot be trusted:
entries without a (correct) file, files without an entry, orphan upload files and sessions.

`live` (a server or a preload is running; the CLI refuses `repair` then, see store/lock.py):
files in tmp/ and uploads/ are writes in progress, listed as such and not as problems, and
what a concurrent writer may have changed since the index was read (a blob published or
collected meanwhile) is looked up again before it counts as a problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..oci.digest import Digest
from .files import Layout, hash_file
from .index import Index


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    checked_blobs: int = 0
    checked_files: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(
    layout: Layout,
    index: Index,
    *,
    repair: bool = False,
    verify: bool = True,
    live: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    if repair and live:
        raise ValueError("fsck cannot repair a data directory in use")
    report = Report()

    def problem(text: str, fix: Callable[[], object] | None) -> None:
        report.problems.append(text)
        if repair and fix is not None:
            fix()
            report.repaired.append(text)

    indexed: set[str] = set()
    for key, record in list(index.all_blobs()):
        report.checked_blobs += 1
        indexed.add(key)
        digest = Digest.parse(key)
        path = layout.blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if live and index.blob(key) is None:
                continue  # collected since the index was read
            problem(f"{key}: indexed but file {path} is missing", partial(index.forget_blob, key))
            continue
        if size != int(record["size"]):
            problem(
                f"{key}: file has {size} bytes, index says {record['size']}",
                partial(_drop, index, key, path),
            )
            continue
        if verify and hash_file(path, digest.algorithm) != digest:
            problem(
                f"{key}: file content does not match its digest",
                partial(_drop, index, key, path),
            )
        if progress and report.checked_blobs % 1000 == 0:
            progress(f"checked {report.checked_blobs} blobs")

    for path in sorted(layout.blobs.glob("*/*/*")):
        report.checked_files += 1
        name = f"{path.parent.parent.name}:{path.name}"
        if name not in indexed and not (live and index.blob(name) is not None):
            problem(f"{name}: file {path} has no index entry", path.unlink)

    if live:
        _in_progress(layout, report)
        return report
    for path in layout.tmp.iterdir():
        problem(f"tmp/{path.name}: leftover of an unfinished write", path.unlink)

    sessions = {upload_id for upload_id, _ in index.all_uploads()}
    for path in layout.uploads.iterdir():
        if path.name not in sessions:
            problem(f"uploads/{path.name}: file without an upload session", path.unlink)
    for upload_id in sessions:
        if not layout.upload_path(upload_id).exists():
            problem(
                f"upload {upload_id}: session without a data file",
                partial(index.end_upload, upload_id),
            )
    return report


def _in_progress(layout: Layout, report: Report) -> None:
    # Sessions start and end (file and record in two steps) while this runs: matching files
    # against records would report races, so every one is listed as what it is.
    for path in sorted(layout.tmp.iterdir()):
        report.in_progress.append(f"tmp/{path.name}: a download, upload or preload in progress")
    for path in sorted(layout.uploads.iterdir()):
        report.in_progress.append(f"uploads/{path.name}: an upload session")


def _drop(index: Index, key: str, path: Path) -> None:
    index.forget_blob(key)
    path.unlink(missing_ok=True)
