"""Readers of the distributed formats: C4, WikiExtractor output and Parquet.

- `read_c4_file`: C4 as distributed, `c4-*.json.gz` with lines `{text, timestamp, url}`.
- `read_wikiextractor_file`: JSON lines `{id, url, title, text}` or `<doc>` text.
- `read_parquet_file`: one document per row of a text column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.sources.inputs import (
    CorpusError,
    ReadMeter,
    TruncatedInput,
    iter_lines,
    open_input,
)
from data_pipeline.sources.records import (
    DEFAULT_MAX_DOC_BYTES,
    Document,
    Record,
    Rejected,
    too_large,
    truncated,
)
from data_pipeline.sources.text import read_jsonl_file

__all__ = ["read_c4_file", "read_parquet_file", "read_wikiextractor_file"]

_DOC_OPEN = re.compile(rb"^<doc\b([^>]*)>\s*$")
_DOC_ATTR = re.compile(rb'(\w+)="([^"]*)"')


def read_c4_file(
    path: str | os.PathLike[str],
    *,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    meter_out: list[ReadMeter] | None = None,
) -> Iterator[Record]:
    """Reads one C4 file (`c4-train.00000-of-01024.json.gz`): lines `{text, timestamp, url}`.

    The text is taken as is (C4 is already cleaned). `timestamp` and `url` are not needed; some
    redistributions call the timestamp `date` (the OLMo samples), which is accepted too.

    Args:
        path: The file.
        max_doc_bytes: Larger documents are rejected (`too_large`).
        meter_out: If given, the file's `ReadMeter` is appended.

    Yields:
        `Document` (id `path:line`) and `Rejected` records naming the file and line.

    Raises:
        CorpusError: If the file cannot be read at all.
    """
    yield from read_jsonl_file(
        path, text_field="text", max_doc_bytes=max_doc_bytes, meter_out=meter_out
    )


def _prepend_title(obj: dict[str, Any], text: str) -> str:
    title = obj.get("title")
    if isinstance(title, str) and title.strip() and not text.startswith(title.strip() + "\n"):
        return f"{title.strip()}\n\n{text}"
    return text


def read_wikiextractor_file(
    path: str | os.PathLike[str],
    *,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    meter_out: list[ReadMeter] | None = None,
) -> Iterator[Record]:
    """Reads one WikiExtractor output file, in either of its formats.

    - `--json`: lines `{"id", "url", "title", "text"}`; the title is prepended to the text as a
      first paragraph (as in the `<doc>` format), the id is the article id.
    - default: `<doc id=".." url=".." title="..">` line, the text (its first line is the title),
      `</doc>` line.

    The format is told from the first non-blank byte (`{` or `<`).

    Args:
        path: The file (optionally compressed, e.g. `wiki_00.bz2`).
        max_doc_bytes: Larger documents are rejected (`too_large`).
        meter_out: If given, the file's `ReadMeter` is appended.

    Yields:
        `Document` and `Rejected` records (`invalid_doc_markup` for a `<doc>` without its end).

    Raises:
        CorpusError: If the file cannot be read at all or is in neither format.
    """
    path = Path(path)
    stream, meter = open_input(path)
    try:
        head = stream.peek(4096)[:4096].lstrip()
    except TruncatedInput:
        head = b""
    if head.startswith(b"{"):
        stream.close()
        yield from read_jsonl_file(
            path,
            text_field="text",
            id_field="id",
            max_doc_bytes=max_doc_bytes,
            transform=_prepend_title,
            meter_out=meter_out,
        )
        return
    if meter_out is not None:
        meter_out.append(meter)
    if head and not head.startswith(b"<doc"):
        stream.close()
        raise CorpusError(f"{path}: neither WikiExtractor JSON lines nor <doc> text format")
    with stream:
        yield from _doc_format(stream, path, max_doc_bytes)


def _doc_format(stream, path: Path, max_doc_bytes: int) -> Iterator[Record]:
    lines: list[bytes] | None = None
    size = start = 0
    doc_id = ""
    try:
        for line_no, _, line in iter_lines(stream, max_doc_bytes):
            where = f"{path}:{line_no}"
            opening = _DOC_OPEN.match(line) if line is not None else None
            if opening:
                if lines is not None:
                    detail = f"{path}:{start}: <doc> without </doc>; dropped"
                    yield Rejected(str(path), f"{path}:{start}", "invalid_doc_markup", detail)
                attrs = dict(_DOC_ATTR.findall(opening.group(1)))
                doc_id = attrs.get(b"id", b"").decode("utf-8", "replace") or where
                lines, size, start = [], 0, line_no
            elif line is not None and line.strip() == b"</doc>" and lines is not None:
                doc_where = f"{path}:{start}"
                if size > max_doc_bytes:
                    yield too_large(path, doc_where, max_doc_bytes)
                else:
                    yield _doc_record(b"\n".join(lines).strip(b"\n"), path, doc_where, doc_id)
                lines = None
            elif lines is not None:
                if line is None or size > max_doc_bytes:
                    size = max_doc_bytes + 1
                    continue
                lines.append(line)
                size += len(line) + 1
    except TruncatedInput as err:
        yield truncated(path, err, "; the document being read is dropped")
        return
    if lines is not None:
        detail = f"{path}:{start}: <doc> without </doc> at the end of the file; dropped"
        yield Rejected(str(path), f"{path}:{start}", "invalid_doc_markup", detail)


def _doc_record(data: bytes, path: Path, where: str, doc_id: str) -> Record:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        detail = f"{where}: invalid UTF-8 at byte {err.start} of the document"
        return Rejected(str(path), where, "invalid_utf8", detail)
    return Document(text, str(path), doc_id)


def read_parquet_file(
    path: str | os.PathLike[str],
    *,
    text_field: str = "text",
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    meter_out: list[ReadMeter] | None = None,
    batch_rows: int = 4096,
) -> Iterator[Record]:
    """Reads the text column of a Parquet file, one document per row, in row-group batches.

    Args:
        path: The file.
        text_field: The column (a string column).
        max_doc_bytes: Larger documents are rejected (`too_large`).
        meter_out: If given, a `ReadMeter` of the file is appended (its checksum reads the file).
        batch_rows: Rows decoded at a time.

    Yields:
        `Document` (id `path:row`, rows counted from 0) and `Rejected` records (`null_text`,
        `too_large`).

    Raises:
        CorpusError: If the file is not Parquet, or has no such string column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise CorpusError(f"cannot read {path}: {err}") from err
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise CorpusError(f"{path}: no column {text_field!r} (columns: {schema.names[:20]})")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CorpusError(f"{path}: column {text_field!r} is {kind}, not a string column")
    if meter_out is not None:
        meter = ReadMeter(open(path, "rb"))  # noqa: SIM115 - closed by the caller via finish
        meter.sequential = False  # pyarrow seeks: the checksum re-reads the file
        meter.bytes_read = path.stat().st_size
        meter_out.append(meter)
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                where = f"{path}:{row}"
                row += 1
                if text is None:
                    detail = f"{where}: column {text_field!r} is null"
                    yield Rejected(str(path), where, "null_text", detail)
                elif len(text) > max_doc_bytes and len(text.encode("utf-8")) > max_doc_bytes:
                    yield too_large(path, where, max_doc_bytes)
                else:
                    yield Document(text, str(path), where)
    except (OSError, pa.ArrowException) as err:
        where = f"{path}:{row}"
        detail = f"{where}: Parquet data unreadable after row {row}: {err}"
        yield Rejected(str(path), where, "truncated", detail)
