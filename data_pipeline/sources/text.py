"""Plain-text and JSON-lines readers: files -> `Document` and `Rejected` records.

- `iter_text_files`: plain text, one document per file or one per blank-line-separated paragraph.
- `iter_jsonl`: JSON lines (optionally `.gz`/`.bz2`/`.xz`/`.zst`), one document per line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from data_pipeline.sources.inputs import ReadMeter, TruncatedInput, iter_lines, open_input
from data_pipeline.sources.records import (
    DEFAULT_MAX_DOC_BYTES,
    JSONL_SUFFIXES,
    Document,
    Record,
    Rejected,
    compressed_endings,
    decode_utf8,
    expand_paths,
    too_large,
    truncated,
)

try:
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is the fallback
    _json_loads = json.loads

__all__ = ["iter_jsonl", "iter_text_files", "read_jsonl_file", "read_text_file"]


def read_text_file(
    path: str | os.PathLike[str],
    *,
    split_paragraphs: bool = False,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    meter_out: list[ReadMeter] | None = None,
) -> Iterator[Record]:
    """Reads one UTF-8 text file (optionally compressed); see `iter_text_files`.

    Args:
        path: The file.
        split_paragraphs: One document per blank-line-separated paragraph.
        max_doc_bytes: Larger documents are rejected (`too_large`).
        meter_out: If given, the file's `ReadMeter` is appended (progress and checksum).

    Yields:
        `Document` and `Rejected` records.

    Raises:
        CorpusError: If the file cannot be read at all.
    """
    path = Path(path)
    stream, meter = open_input(path)
    if meter_out is not None:
        meter_out.append(meter)
    with stream:
        if not split_paragraphs:
            try:
                data = stream.read(max_doc_bytes + 1)
            except TruncatedInput as err:
                yield truncated(path, err, "; the file (one document) is skipped")
                return
            if len(data) > max_doc_bytes:
                yield too_large(path, str(path), max_doc_bytes)
                return
            decoded = decode_utf8(data, path, str(path))
            yield (
                decoded
                if isinstance(decoded, Rejected)
                else Document(decoded, str(path), str(path))
            )
            return
        yield from _paragraphs(stream, path, max_doc_bytes)


def _paragraphs(stream: IO[bytes], path: Path, max_doc_bytes: int) -> Iterator[Record]:
    paragraph: list[bytes] = []
    size = start = 0
    try:
        for line_no, _, line in iter_lines(stream, max_doc_bytes):
            if line is not None and line.strip():
                if not paragraph:
                    start = line_no
                paragraph.append(line)
                size += len(line) + 1
                if size <= max_doc_bytes:
                    continue
            if paragraph:
                where = f"{path}:{start}"
                if size > max_doc_bytes or line is None:
                    yield too_large(path, where, max_doc_bytes)
                else:
                    text = decode_utf8(b"\n".join(paragraph), path, where)
                    yield text if isinstance(text, Rejected) else Document(text, str(path), where)
                paragraph, size = [], 0
            elif line is None:
                yield too_large(path, f"{path}:{line_no}", max_doc_bytes)
    except TruncatedInput as err:
        yield truncated(path, err, "; the paragraph being read is dropped")
        return
    if paragraph:
        where = f"{path}:{start}"
        text = decode_utf8(b"\n".join(paragraph), path, where)
        yield text if isinstance(text, Rejected) else Document(text, str(path), where)


def iter_text_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    split_paragraphs: bool = False,
    suffixes: Sequence[str] = (".txt",),
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> Iterator[Record]:
    """Reads UTF-8 text files (optionally compressed) as documents.

    Args:
        paths: Files, globs and/or directories (walked for files ending with one of `suffixes`,
            also with a compression suffix such as `.txt.gz`).
        split_paragraphs: If True, every run of lines separated by blank (whitespace-only) lines
            is a document with id `path:first_line`; otherwise the whole file is one document.
        suffixes: File endings to pick up inside directories.
        max_doc_bytes: Larger documents are rejected (`too_large`), never held in memory.

    Yields:
        `Document`s, and `Rejected` records (`invalid_utf8`, `too_large`, `truncated`).

    Raises:
        CorpusError: If a file cannot be read at all.
    """
    for path in expand_paths(paths, compressed_endings(suffixes)):
        yield from read_text_file(
            path, split_paragraphs=split_paragraphs, max_doc_bytes=max_doc_bytes
        )


def iter_jsonl(
    paths: Iterable[str | os.PathLike[str]],
    *,
    text_field: str = "text",
    id_field: str | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> Iterator[Record]:
    """Reads JSON-lines files (optionally compressed), one document per non-blank line.

    Args:
        paths: Files, globs and/or directories (walked for `.jsonl`/`.json`/`.ndjson`, possibly
            compressed, e.g. C4's `.json.gz`).
        text_field: Key of the document text in each object.
        id_field: Optional key of a document id; the default id is `path:line`.
        max_doc_bytes: Longer lines and texts are rejected (`too_large`).

    Yields:
        `Document`s, and `Rejected` records (`invalid_utf8`, `invalid_json`, `not_an_object`,
        `missing_field`, `field_not_string`, `too_large`, `truncated`) naming the file and line.

    Raises:
        CorpusError: If a file cannot be read at all.
    """
    for path in expand_paths(paths, compressed_endings(JSONL_SUFFIXES)):
        yield from read_jsonl_file(
            path, text_field=text_field, id_field=id_field, max_doc_bytes=max_doc_bytes
        )


def read_jsonl_file(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    id_field: str | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    transform: Callable[[dict[str, Any], str], str] | None = None,
    meter_out: list[ReadMeter] | None = None,
) -> Iterator[Record]:
    """Reads one JSON-lines file; see `iter_jsonl`.

    Args:
        path: The file.
        text_field: Key of the text.
        id_field: Key of an id (default id: `path:line`).
        max_doc_bytes: Longer lines and texts are rejected (`too_large`).
        transform: Optional `f(obj, text) -> text` applied to each document (e.g. to prepend a
            title).
        meter_out: If given, the file's `ReadMeter` is appended.

    Yields:
        `Document` and `Rejected` records.

    Raises:
        CorpusError: If the file cannot be read at all.
    """
    path = Path(path)
    stream, meter = open_input(path)
    if meter_out is not None:
        meter_out.append(meter)
    # JSON escapes can take up to 6 bytes per character, so lines get more room than texts.
    max_line = 6 * max_doc_bytes + 4096
    with stream:
        try:
            for line_no, _, raw in iter_lines(stream, max_line):
                where = f"{path}:{line_no}"
                if raw is None:
                    yield too_large(path, where, max_doc_bytes)
                    continue
                record = _json_record(raw, path, where, text_field, id_field, transform)
                if record is None:
                    continue
                if isinstance(record, Document) and len(record.text) > max_doc_bytes:
                    if len(record.text.encode("utf-8")) > max_doc_bytes:
                        record = too_large(path, where, max_doc_bytes)
                yield record
        except TruncatedInput as err:
            yield truncated(path, err, "; the line being read is dropped")


def _json_record(
    raw: bytes,
    path: Path,
    where: str,
    text_field: str,
    id_field: str | None,
    transform: Callable[[dict[str, Any], str], str] | None,
) -> Record | None:
    try:
        obj = _json_loads(raw)
    except UnicodeDecodeError as err:
        return Rejected(
            str(path), where, "invalid_utf8", f"{where}: invalid UTF-8 at byte {err.start}"
        )
    except ValueError as err:
        if not raw.strip():
            return None
        try:  # tell invalid UTF-8 from invalid JSON (orjson reports both as JSON errors)
            raw.decode("utf-8")
        except UnicodeDecodeError as uerr:
            detail = f"{where}: invalid UTF-8 at byte {uerr.start}"
            return Rejected(str(path), where, "invalid_utf8", detail)
        msg = getattr(err, "msg", str(err))
        col = getattr(err, "colno", None)
        detail = f"{where}: invalid JSON: {msg}" + (f" (column {col})" if col else "")
        return Rejected(str(path), where, "invalid_json", detail)
    if not isinstance(obj, dict):
        detail = f"{where}: expected a JSON object, got {type(obj).__name__}"
        return Rejected(str(path), where, "not_an_object", detail)
    if text_field not in obj:
        detail = f"{where}: no field {text_field!r} (fields: {sorted(obj)[:10]})"
        return Rejected(str(path), where, "missing_field", detail)
    text = obj[text_field]
    if not isinstance(text, str):
        detail = f"{where}: field {text_field!r} is {type(text).__name__}, not a string"
        return Rejected(str(path), where, "field_not_string", detail)
    if transform is not None:
        text = transform(obj, text)
    doc_id = str(obj[id_field]) if id_field is not None and id_field in obj else where
    return Document(text.removeprefix("\ufeff"), str(path), doc_id)
