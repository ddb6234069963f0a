"""Corpus inputs: finding files (paths, globs, directories, s3:// and gs:// URLs) and reading them.

Every reader opens its file through `open_input`, which

- decompresses by suffix: `.gz` (with `isal`, 2-3x faster than zlib), `.bz2`, `.xz`, `.zst`, all
  members/streams/frames of each; anything else is read as is;
- counts and checksums the raw (compressed) bytes as they are read (`ReadMeter`), which gives the
  progress bar its MB/s and the manifest its per-input sha256 without a second pass;
- turns a decompression failure into `TruncatedInput` carrying the uncompressed offset reached, so
  a reader can keep everything before a cut (a truncated `.gz`, an interrupted download) and
  report the rest, while a file that fails before yielding a single byte (missing, unreadable,
  not compressed as its suffix says) raises `CorpusError` naming it; an empty compressed file
  is a cut at byte 0 (every later read raises the same `TruncatedInput` again).

Remote inputs (`s3://`, `gs://`, ... anything mosaicml-streaming's storage can list and
download) are listed with streaming's `CloudUploader.list_objects` and downloaded one at a time,
by the worker that converts them, with `CloudDownloader.direct_download`.
"""

from __future__ import annotations

import bz2
import fnmatch
import glob
import hashlib
import io
import lzma
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

__all__ = [
    "COMPRESSED_SUFFIXES",
    "CorpusError",
    "InputFile",
    "ReadMeter",
    "TruncatedInput",
    "download_input",
    "file_sha256",
    "is_remote",
    "iter_lines",
    "open_input",
    "resolve_inputs",
]

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
READ_SIZE = 1 << 20
DECODE_SIZE = 1 << 16
_DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
)
try:
    from isal.isal_zlib import error as _isal_error

    _DECOMPRESSION_ERRORS += (_isal_error,)
except ImportError:  # pragma: no cover
    pass
try:
    from zstandard import ZstdError

    _DECOMPRESSION_ERRORS += (ZstdError,)
except ImportError:  # pragma: no cover
    pass


class CorpusError(RuntimeError):
    """A corpus input that cannot be read at all (missing, unreadable, not what its name says)."""


class TruncatedInput(Exception):
    """Decompression stopped early: the file is cut or corrupt after `offset` good bytes.

    Attributes:
        path: The file.
        offset: Uncompressed bytes successfully read before the failure.
        cause: What the decompressor said.
    """

    def __init__(self, path: str, offset: int, cause: str) -> None:
        super().__init__(
            f"{path}: compressed data ends or is corrupt after {offset} bytes: {cause}"
        )
        self.path = path
        self.offset = offset
        self.cause = cause


@dataclass(frozen=True)
class InputFile:
    """One input of a conversion.

    Attributes:
        name: What the user sees: a local path or a URL.
        size: Size in bytes (of the compressed file), -1 while unknown (remote, not listed).
        mtime_ns: Modification time of a local file (0 for remote), part of its fingerprint.
    """

    name: str
    size: int = -1
    mtime_ns: int = 0

    @property
    def remote(self) -> bool:
        """Whether the input is a URL to download first."""
        return is_remote(self.name)

    def fingerprint(self) -> str:
        """Changes when the file does: `size:mtime_ns` (re-converted on resume if it differs)."""
        return f"{self.size}:{self.mtime_ns}"


def is_remote(name: str) -> bool:
    """Whether `name` is a URL with a scheme (`s3://...`), not a local path."""
    return "://" in name and not name.startswith("file://")


def _local_file(path: Path) -> InputFile:
    st = path.stat()
    return InputFile(str(path), st.st_size, st.st_mtime_ns)


def _walk(
    root: Path, suffixes: Sequence[str], unreadable: list[tuple[str, str]] | None
) -> list[Path]:
    def onerror(err: OSError) -> None:
        detail = f"{err.filename}: cannot list directory: {err.strerror or err}"
        if unreadable is None:
            raise CorpusError(detail) from err
        unreadable.append((str(err.filename), f"{detail}; skipped"))

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or (suffixes and not name.endswith(tuple(suffixes))):
                continue
            found.append(Path(dirpath) / name)
    return found


def _list_remote(pattern: str, suffixes: Sequence[str]) -> list[InputFile]:
    from streaming.base.storage import CloudUploader

    parsed = urlparse(pattern)
    path = parsed.path.lstrip("/")
    has_glob = any(c in path for c in "*?[")
    prefix = path.split("*")[0].split("?")[0].split("[")[0] if has_glob else path
    root = f"{parsed.scheme}://{parsed.netloc}"
    uploader = CloudUploader.get(root, exist_ok=True, keep_local=True)
    names = sorted(uploader.list_objects(prefix) or [])
    out = []
    for name in names:
        if has_glob and not fnmatch.fnmatchcase(name, path):
            continue
        if not has_glob and name != path:  # a "directory": keep what ends with a suffix
            if not name.startswith(path.rstrip("/") + "/"):
                continue
            if suffixes and not name.endswith(tuple(suffixes)):
                continue
        out.append(InputFile(f"{root}/{name}"))
    if not out:
        raise CorpusError(f"input not found: no object matches {pattern}")
    return out


def resolve_inputs(
    inputs: Iterable[str | os.PathLike[str]],
    suffixes: Sequence[str] = (),
    unreadable: list[tuple[str, str]] | None = None,
) -> list[InputFile]:
    """Expands files, globs, directories and URLs into a de-duplicated list of input files.

    Directories are walked recursively in sorted order, skipping hidden entries and (when
    `suffixes` is given) files whose names end otherwise; files named explicitly are always kept.
    Globs (`*`, `?`, `[...]`, `**`) are expanded in sorted order. URLs are listed with
    mosaicml-streaming's storage (a glob or a prefix "directory").

    Args:
        inputs: Files, directories, globs and/or URLs.
        suffixes: File name endings picked up inside directories.
        unreadable: If given, a directory that cannot be listed (permissions) is skipped and
            `(directory, "DIR: cannot list directory: REASON; skipped")` appended here.

    Returns:
        The inputs in the order given, each expansion sorted.

    Raises:
        CorpusError: If an input matches nothing, or a directory cannot be listed and
            `unreadable` is None.
    """
    out: list[InputFile] = []
    seen: set[str] = set()
    for raw in inputs:
        text = os.fspath(raw)
        if is_remote(text):
            found = _list_remote(text, suffixes)
        else:
            text = text.removeprefix("file://")
            path = Path(text)
            if path.is_dir():
                found = [_local_file(p) for p in _walk(path, suffixes, unreadable)]
            elif path.is_file():
                found = [_local_file(path)]
            elif any(c in text for c in "*?["):
                matches = sorted(glob.glob(text, recursive=True))
                found = [_local_file(Path(p)) for p in matches if Path(p).is_file()]
                if not found:
                    raise CorpusError(f"input not found: no file matches {text}")
            else:
                raise CorpusError(f"input not found: {path}")
        for item in found:
            if item.name not in seen:
                seen.add(item.name)
                out.append(item)
    return out


def download_input(url: str, dest_dir: str | os.PathLike[str], timeout: float = 600.0) -> Path:
    """Downloads a remote input into `dest_dir` with streaming's `CloudDownloader`.

    Args:
        url: The object's URL.
        dest_dir: Local directory (created); the file keeps its base name.
        timeout: Seconds allowed for the download.

    Returns:
        The local path.

    Raises:
        CorpusError: If the download fails.
    """
    from streaming.base.storage import CloudDownloader

    dest = Path(dest_dir) / Path(urlparse(url).path).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        CloudDownloader.direct_download(url, str(dest), timeout)
    except Exception as err:  # storage back-ends raise their own exception types
        raise CorpusError(f"cannot download {url}: {err}") from err
    return dest


class ReadMeter(io.RawIOBase):
    """A raw file wrapper counting and sha256-hashing the bytes read through it.

    Attributes:
        bytes_read: Raw bytes read so far (progress).
        sequential: False once something seeked, so the hash no longer covers the file in order.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._sha = hashlib.sha256()
        self.bytes_read = 0
        self.sequential = True
        self._digest: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer)
        if n:
            self._sha.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n or 0

    def seekable(self) -> bool:
        return self._raw.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = self._raw.seek(offset, whence)
        if position != self.bytes_read:
            self.sequential = False
        return position

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        """Closes the file, hashing what was not read first (a reader may stop early)."""
        if not self.closed and not self._raw.closed and self._digest is None:
            self._digest = self._finish()
        self._raw.close()
        super().close()

    def _finish(self) -> str:
        if not self.sequential:
            return file_sha256(self._raw.name)
        block = bytearray(READ_SIZE)
        while n := self._raw.readinto(block):
            self._sha.update(memoryview(block)[:n])
        return self._sha.hexdigest()

    def sha256(self) -> str:
        """Hex sha256 of the whole file (the unread rest is read; cheap next to parsing)."""
        if self._digest is None:
            self._digest = self._finish()
        return self._digest


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            sha.update(block)
    return sha.hexdigest()


def _gzip_factory():
    try:
        from isal import isal_zlib

        return isal_zlib.decompressobj(wbits=31)
    except ImportError:  # pragma: no cover - isal is a dependency, zlib is the fallback
        return zlib.decompressobj(wbits=31)


def _zstd_factory():
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


_DECODERS = {
    ".gz": _gzip_factory,
    ".bz2": bz2.BZ2Decompressor,
    ".xz": lzma.LZMADecompressor,
    ".zst": _zstd_factory,
}


class _StreamDecoder(io.RawIOBase):
    """Decompresses a stream of members/frames/streams (gzip members, bz2 streams, zstd frames)
    with a decompressor object, so that everything decoded before a cut is returned first and
    the cut is then reported (`EOFError`) instead of silently ending the data (zstandard's own
    reader) or losing the last read (`gzip.GzipFile` raises for the whole buffer)."""

    def __init__(self, raw: IO[bytes], factory) -> None:
        super().__init__()
        self._raw = raw
        self._factory = factory
        self._obj = factory()
        self._pending = b""
        self._pos = 0
        self._started = False  # current member has consumed input
        self._members = 0  # members/streams/frames decoded to their end
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while self._pos >= len(self._pending) and not self._eof:
            data = self._raw.read(DECODE_SIZE)
            if not data:
                self._eof = True
                if self._started:
                    raise EOFError("compressed data ends before its end-of-stream marker")
                if not self._members:
                    raise EOFError("empty file: no compressed data at all")
                break
            out = []
            while data:
                self._started = True
                out.append(self._obj.decompress(data))
                if not self._obj.eof:
                    break
                data = self._obj.unused_data
                self._obj = self._factory()
                self._started = False
                self._members += 1
            self._pending, self._pos = b"".join(out), 0
        n = min(len(buffer), len(self._pending) - self._pos)
        buffer[:n] = self._pending[self._pos : self._pos + n]
        self._pos += n
        return n


def _decompressor(path: str, raw: IO[bytes]) -> IO[bytes]:
    name = path.lower()
    for suffix, factory in _DECODERS.items():
        if name.endswith(suffix):
            return _StreamDecoder(raw, factory)
    return raw


class _Checked(io.RawIOBase):
    """Wraps a decompressing stream: failures become `TruncatedInput`/`CorpusError`."""

    def __init__(self, path: str, stream: IO[bytes]) -> None:
        super().__init__()
        self._path = path
        self._stream = stream
        self.offset = 0
        self._cut: TruncatedInput | None = None  # raised again by every later read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._cut is not None:
            raise self._cut
        try:
            n = self._stream.readinto(buffer)
        except _DECOMPRESSION_ERRORS as err:
            if self.offset == 0 and not isinstance(err, EOFError):  # not what its suffix says
                raise CorpusError(f"cannot read {self._path}: {err}") from err
            cause = str(err) or type(err).__name__
            self._cut = TruncatedInput(self._path, self.offset, cause)
            raise self._cut from err
        self.offset += n or 0
        return n or 0

    def close(self) -> None:
        self._stream.close()
        super().close()


def open_input(
    path: str | os.PathLike[str], meter: ReadMeter | None = None
) -> tuple[IO[bytes], ReadMeter]:
    """Opens a local input for buffered binary reading of its decompressed content.

    Args:
        path: A local file.
        meter: Not for callers; the meter is created here and returned.

    Returns:
        `(stream, meter)`: the decompressed stream (whose reads raise `TruncatedInput` after a
        cut and `CorpusError` if nothing can be read) and the meter of its raw bytes. Read it
        with `read1` or `readline`: `read(n)` joins several raw reads and, when the last one
        raises at a cut, drops those before it with it.

    Raises:
        CorpusError: If the file cannot be opened.
    """
    name = os.fspath(path)
    try:
        raw = open(name, "rb")  # noqa: SIM115 - closed through the returned stream
    except OSError as err:
        raise CorpusError(f"cannot open {name}: {err.strerror or err}") from err
    meter = ReadMeter(raw)
    try:
        stream = _decompressor(name, meter)
    except _DECOMPRESSION_ERRORS as err:
        meter.close()
        raise CorpusError(f"cannot read {name}: {err}") from err
    return io.BufferedReader(_Checked(name, stream), READ_SIZE), meter


def iter_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, int, bytes | None]]:
    """Yields `(line_no, offset, line)` of a binary stream, newline removed; `line` is None for a
    line longer than `max_line_bytes`, which is skipped without being held in memory.

    Args:
        stream: Buffered binary stream.
        max_line_bytes: Longest line returned.

    Yields:
        1-based line number, uncompressed byte offset of the line start, and the line or None.

    Raises:
        TruncatedInput: From the stream, after every complete line before the cut.
    """
    offset = 0
    line_no = 0
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return
        line_no += 1
        start = offset
        offset += len(line)
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the enormous line
                line = stream.readline(READ_SIZE)
                offset += len(line)
            yield line_no, start, None
            continue
        yield line_no, start, line.rstrip(b"\n").removesuffix(b"\r")
