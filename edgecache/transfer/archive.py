"""Reading an input safely: a tar (plain, gzip or zstd, told by magic bytes) or a directory.

Entries are streamed one at a time, never extracted wholesale: a member's data is readable
only until the next member is requested. Everything a hostile archive could use is refused
here with the entry's name: absolute and `..` paths, links that resolve outside the archive,
device files and fifos, sparse entries, more than `max_entries` entries, decompressed output
beyond `max_ratio` times the input, and truncation (reported where it was noticed).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import TransferError
from .progress import Progress

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UNSUPPORTED_MAGIC = {b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2", b"PK\x03\x04": "zip"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_entries: int = 100_000
    # Real image tarballs compress 2-10x; a 50x ceiling leaves room for sparse-ish layers and
    # still stops a 1 MB bomb long before it fills a disk.
    max_ratio: int = 50
    # Tiny inputs (a few KiB of JSON) may expand this much whatever their ratio.
    ratio_floor: int = 64 << 20


@dataclass
class Member:
    """A regular file (`data` set) or a link (`link` = target path inside the archive)."""

    name: str
    size: int = 0
    link: str | None = None
    data: IO[bytes] | None = None


def compression_of(head: bytes) -> str:
    """ "gzip", "zstd" or "none" from the first bytes of a file."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def safe_name(name: str, label: str) -> str:
    """A member path normalised (`./a//b` -> `a/b`), or a refusal for escaping paths."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise TransferError(f"{label}: entry {name!r} has an absolute path: refused")
    if ".." in name.split("/"):
        raise TransferError(f"{label}: entry {name!r} contains '..': refused")
    normal = posixpath.normpath(name)
    if normal in (".", ""):
        return "."
    return normal


def _link_target(member: str, target: str, *, relative_to_member: bool, label: str) -> str:
    kind = "symlink" if relative_to_member else "hardlink"
    if target.startswith("/"):
        raise TransferError(
            f"{label}: {kind} {member!r} -> {target!r} has an absolute target: refused"
        )
    base = posixpath.dirname(member) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    if resolved == ".." or resolved.startswith("../") or resolved == ".":
        raise TransferError(
            f"{label}: {kind} {member!r} -> {target!r} points outside the archive: refused"
        )
    return resolved


@contextlib.contextmanager
def _translated(label: str, where: str) -> Iterator[None]:
    """Decoder and tar errors in words: almost always a truncated or damaged file."""
    try:
        yield
    except EOFError:
        raise TransferError(f"{label}: truncated: compressed data ends {where}") from None
    except tarfile.ReadError as exc:
        raise TransferError(f"{label}: truncated or damaged tar {where}: {exc}") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise TransferError(f"{label}: damaged gzip data {where}: {exc}") from None
    except Exception as exc:
        if type(exc).__name__ == "ZstdError":
            raise TransferError(f"{label}: damaged zstd data {where}: {exc}") from None
        raise


class _Counting:
    """The raw input: counts bytes for the progress bar and the expansion ratio."""

    def __init__(self, raw: IO[bytes], progress: Progress | None) -> None:
        self.raw = raw
        self.progress = progress
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        if self.progress is not None:
            self.progress.advance(len(data))
        return data

    def readable(self) -> bool:
        return True

    def skip(self, n: int) -> None:
        """Jump over `n` bytes of a plain file without reading them."""
        self.raw.seek(n, os.SEEK_CUR)
        self.count += n
        reported = min(n, self.prepaid)
        self.prepaid -= reported
        if self.progress is not None:
            self.progress.advance(n - reported)

    prepaid = 0  # bytes a _Direct reader already reported, inside the next skip

    def prepay(self, n: int) -> None:
        self.prepaid += n
        if self.progress is not None:
            self.progress.advance(n)


class _Direct:
    """A member of a plain tar file read with pread at its offset: one copy from the page
    cache into the chunk, where tarfile's reader made three. tarfile then seeks past it.

    detach() lets the member be read after the walk has moved on (by another thread, while
    the next members are read): it gets a descriptor of its own, and its bytes are counted
    for the progress bar as they are read rather than when the walk skips over them.
    """

    def __init__(self, counting: _Counting, offset: int, size: int, label: str, name: str):
        self.fd = counting.raw.fileno()
        self.counting = counting
        self.offset, self.left = offset, size
        self.label, self.name = label, name
        self.detached = False

    def detach(self) -> None:
        self.fd = os.dup(self.fd)
        self.detached = True
        self.counting.prepaid += self.left  # reported by read(), not by the skip

    def close(self) -> None:
        if self.detached and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        data = os.pread(self.fd, want, self.offset) if want else b""
        if len(data) < want:
            raise TransferError(
                f"{self.label}: truncated: entry {self.name!r} ends after "
                f"{self.offset + len(data)} bytes of the file"
            )
        self.offset += len(data)
        self.left -= len(data)
        if not self.detached:
            self.counting.prepay(len(data))
        elif self.counting.progress is not None:
            self.counting.progress.advance(len(data))
        return data


class _Capped:
    """Decompressed output, refused once it outgrows `max_ratio` x the input read so far
    (checked against the whole file size too, so a bomb is stopped early)."""

    def __init__(
        self, inner: Any, counting: _Counting, limits: Limits, total: int | None, label: str
    ):
        self.inner = inner
        self.counting = counting
        self.total = total  # None: a pipe, judged on what was read so far
        self.limits = limits
        self.label = label
        self.out = 0

    @property
    def cap(self) -> int:
        read = self.counting.count if self.total is None else self.total
        return max(self.limits.ratio_floor, read * self.limits.max_ratio)

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.inner.read(n)
        self.out += len(data)
        if self.out > self.cap:
            raise TransferError(
                f"{self.label}: expands without bound: more than {self.out} bytes from "
                f"{self.counting.count} compressed (limit {self.limits.max_ratio}x the file "
                f"size, at least {self.limits.ratio_floor} bytes): refused"
            )
        return data

    def readable(self) -> bool:
        return True


class _Forward:
    """Just enough `seek`/`tell` over a stream for tarfile's random-access reader.

    tarfile reads members in order; it seeks forward over data nobody read (read and dropped,
    or a real seek when the input is a plain file) and back one byte to probe for truncation,
    which the kept tail of the last read answers.
    """

    _TAIL = 4096

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pos = 0  # where the reader is
        self.end = 0  # how far the inner stream has been read; tail holds the bytes before it
        self.tail = b""

    def tell(self) -> int:
        return self.pos

    def _pull(self, n: int) -> bytes:
        data: bytes = self.inner.read(n)
        self.end += len(data)
        self.pos = self.end
        if len(data) >= self._TAIL:
            self.tail = data[-self._TAIL :]
        else:
            self.tail = (self.tail + data)[-self._TAIL :]
        return data

    def read(self, n: int = -1) -> bytes:
        behind = self.end - self.pos
        if not behind:
            return self._pull(n)
        start = len(self.tail) - behind
        kept = self.tail[start:] if n < 0 else self.tail[start : start + n]
        self.pos += len(kept)
        if n >= 0 and len(kept) == n:
            return kept
        return kept + self._pull(-1 if n < 0 else n - len(kept))

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.pos
        elif whence != 0:
            raise OSError("seek from the end of a stream")
        if offset <= self.end:
            if self.end - offset > len(self.tail):
                raise OSError(f"cannot seek back to {offset} in a stream")
            self.pos = offset
            return offset
        gap = offset - self.end
        skip = getattr(self.inner, "skip", None)
        if skip is not None and gap > 1:
            # Plain file: jump, then read the last byte so that a truncation probe works.
            skip(gap - 1)
            self.end += gap - 1
            self.tail = b""
            gap = 1
        while gap > 0:
            got = len(self._pull(min(gap, _CHUNK)))
            if not got:
                break
            gap -= got
        return self.pos


class _Guarded:
    """A member's data stream whose decoder errors name the member."""

    def __init__(self, inner: IO[bytes], label: str, name: str) -> None:
        self.inner = inner
        self.where = f"in entry {name!r}"
        self.label = label

    def read(self, n: int = -1) -> bytes:
        with _translated(self.label, self.where):
            return self.inner.read(n)


def iter_members(path: Path, limits: Limits, progress: Progress | None) -> Iterator[Member]:
    """Members of the input at `path`, a directory or a (compressed) tar file."""
    if path.is_dir():
        yield from _dir_members(path, limits, progress)
    else:
        yield from _tar_members(path, limits, progress)


def input_size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(path) for f in files)


class _Prepended:
    """A pipe whose first bytes were already read (to tell its format): they come first.

    Reads are filled up to `n` bytes (or the end): a pipe hands over what it has, while
    tarfile takes a short read for the end of the data.
    """

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            data, self.head = self.head + self.raw.read(), b""
            return data
        parts = [self.head[:n]]
        self.head = self.head[n:]
        got = len(parts[0])
        while got < n:
            chunk = self.raw.read(n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)


class _ReadOnly:
    """Only `read`: over a pipe, _Forward must read what it skips instead of seeking."""

    def __init__(self, inner: _Counting) -> None:
        self.read = inner.read


def _tar_members(path: Path, limits: Limits, progress: Progress | None) -> Iterator[Member]:
    label = str(path)
    with open(path, "rb", buffering=0) as raw:
        head = _Prepended(b"", raw).read(512)
        # A pipe (`preload /dev/stdin < x.tar`, `<(zcat ...)`) cannot seek: it is read
        # straight through, without the pread path, and its size is unknown in advance.
        seekable = raw.seekable()
        if seekable:
            raw.seek(0)
        for magic, name in _UNSUPPORTED_MAGIC.items():
            if head.startswith(magic):
                raise TransferError(
                    f"{label}: {name}-compressed input is not supported (plain, gzip or zstd)"
                )
        source: Any = raw if seekable else _Prepended(head, raw)
        counting: Any = _Counting(source, progress)
        size = path.stat().st_size if seekable else None
        kind = compression_of(head)
        stream: Any = counting if seekable else _ReadOnly(counting)
        if kind == "gzip":
            stream = _Capped(gzip.GzipFile(fileobj=counting, mode="rb"), counting, limits,
                             size, label)  # fmt: skip
        elif kind == "zstd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(counting, read_across_frames=True)
            stream = _Capped(reader, counting, limits, size, label)
        plain = counting if kind == "none" and seekable else None
        yield from _walk_tar(stream, label, limits, plain, kind)


def _not_a_tar(head: bytes, label: str, kind: str) -> TransferError | None:
    """Why the first block of the (decompressed) input is no tar header, if it is not.

    Told before tarfile sees it: a text file given by mistake would otherwise be reported as
    a truncated or damaged tar, which sends the operator looking for a download gone wrong.
    """
    inside = "" if kind == "none" else f"{kind} data whose content is "
    expected = "expected a docker save or OCI layout tar (plain, gzip or zstd) or a directory"
    if not head:
        return TransferError(f"{label}: {inside or 'an '}empty file, not a tar archive: {expected}")
    if len(head) < tarfile.BLOCKSIZE:
        return TransferError(
            f"{label}: {inside}not a tar archive ({len(head)} bytes, shorter than one tar "
            f"header): {expected}"
        )
    if not head.strip(b"\0"):
        return TransferError(f"{label}: {inside}not a tar archive (an empty first block, no "
                             f"entries): {expected}")  # fmt: skip
    try:
        tarfile.TarInfo.frombuf(head[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return TransferError(f"{label}: {inside}not a tar archive: {expected}")
    return None


def _walk_tar(
    stream: Any, label: str, limits: Limits, plain: _Counting | None, kind: str = "none"
) -> Iterator[Member]:
    last = "the start"
    forward = _Forward(stream)
    with _translated(label, "at the start"):
        head = forward.read(tarfile.BLOCKSIZE)
        forward.seek(0)
    problem = _not_a_tar(head, label, kind)
    if problem is not None:
        raise problem
    with _translated(label, "at the start"):
        # Random-access mode over a forward-only view: tarfile's stream mode ("r|") re-joins
        # its buffer on every read and ran at 110 MB/s; this reads each chunk once.
        # Closed with the underlying file by the caller's `with open(...)`.
        tar = tarfile.TarFile(fileobj=forward, mode="r")  # type: ignore[arg-type]
    count = 0
    members = iter(tar)
    while True:
        with _translated(label, f"after entry {last!r}"):
            info = next(members, None)
        if info is None:
            return
        count += 1
        if count > limits.max_entries:
            raise TransferError(f"{label}: more than {limits.max_entries} entries: refused")
        name = safe_name(info.name, label)
        last = name
        if info.isdir():
            continue
        if info.issym() or info.islnk():
            target = _link_target(name, info.linkname, relative_to_member=info.issym(),
                                  label=label)  # fmt: skip
            yield Member(name, link=target)
        elif info.isreg() and not info.issparse():
            if plain is not None:
                direct = _Direct(plain, info.offset_data, info.size, label, name)
                yield Member(name, info.size, data=direct)  # type: ignore[arg-type]
                continue
            data = tar.extractfile(info)
            assert data is not None
            yield Member(name, info.size, data=_Guarded(data, label, name))  # type: ignore[arg-type]
        else:
            what = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                    tarfile.FIFOTYPE: "a fifo"}.get(info.type)  # fmt: skip
            if what is None:
                what = "a sparse file" if info.issparse() else f"of tar type {info.type!r}"
            raise TransferError(f"{label}: entry {name!r} is {what}: refused")


def _dir_members(root: Path, limits: Limits, progress: Progress | None) -> Iterator[Member]:
    label = str(root)
    real_root = root.resolve()
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        names = sorted(filenames) + [d for d in dirnames if (here / d).is_symlink()]
        for entry in names:
            count += 1
            if count > limits.max_entries:
                raise TransferError(f"{label}: more than {limits.max_entries} entries: refused")
            full = here / entry
            name = full.relative_to(root).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = full.resolve()
                if not target.is_relative_to(real_root):
                    raise TransferError(
                        f"{label}: symlink {name!r} -> {os.readlink(full)!r} points outside "
                        "the layout: refused"
                    )
                yield Member(name, link=target.relative_to(real_root).as_posix())
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb", buffering=0) as f:
                    yield Member(name, st.st_size, data=_Counting(f, progress))  # type: ignore[arg-type]
            else:
                raise TransferError(f"{label}: entry {name!r} is not a regular file: refused")
