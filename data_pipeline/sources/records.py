"""Record types and the helpers every reader shares; imports no reader.

Readers (`text.py`, `demo.py`, `formats.py`, `wikipedia.py`) yield `Document` and `Rejected`
records; `kinds.py` picks the reader for a source kind. A broken document (invalid JSON, invalid
UTF-8, a missing field, a line above `max_doc_bytes`, a file that does not parse, the rest of a
truncated `.gz`) is not an exception: the reader yields a `Rejected` record naming the file and
line (or byte offset), and the shard writer counts it by reason. A file that cannot be read at
all raises `CorpusError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.sources.inputs import (
    COMPRESSED_SUFFIXES,
    CorpusError,
    TruncatedInput,
    resolve_inputs,
)

__all__ = [
    "DEFAULT_MAX_DOC_BYTES",
    "JSONL_SUFFIXES",
    "SOURCES",
    "CorpusError",
    "Document",
    "Record",
    "Rejected",
    "compressed_endings",
    "decode_utf8",
    "expand_paths",
    "take_bytes",
    "too_large",
    "truncated",
]

SOURCES = ("wikipedia", "wikiextractor", "c4", "jsonl", "text", "parquet", "demo")
"""Source kinds accepted by `iter_documents` (and `perceiver data prepare --source`)."""

DEFAULT_MAX_DOC_BYTES = 64 << 20
"""Documents above this many UTF-8 bytes are rejected (`too_large`), never held whole."""


JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class Document:
    """One document of raw text.

    Attributes:
        text: The text, as read (no normalisation).
        source: Where it came from (a file path).
        doc_id: An id unique within the corpus and stable across runs (`path`, `path:line`, or
            `stdlib:module.name`); it names the document in messages.
    """

    text: str
    source: str
    doc_id: str


@dataclass(frozen=True)
class Rejected:
    """A record that could not become a document; counted by reason, then skipped.

    Attributes:
        source: The file it came from.
        doc_id: Its position (`path:line`) or id.
        reason: A short machine-readable reason, e.g. `invalid_json`, `invalid_utf8`.
        detail: A message for humans naming the file and line.
    """

    source: str
    doc_id: str
    reason: str
    detail: str


Record = Document | Rejected
"""What readers yield."""


def expand_paths(
    inputs: Iterable[str | os.PathLike[str]], suffixes: Sequence[str] = ()
) -> list[Path]:
    """Expands local files, globs and directories into a sorted, de-duplicated list of files.

    Directories are walked recursively in sorted order; hidden entries (starting with `.`) are
    skipped, and so are files whose name does not end with one of `suffixes` (when given). Files
    named explicitly are always kept. (`inputs.resolve_inputs` also takes URLs.)

    Args:
        inputs: Files, globs and/or directories.
        suffixes: File name endings to keep inside directories, e.g. `(".jsonl", ".jsonl.gz")`.

    Returns:
        The files, directories expanded in place, in the order given.

    Raises:
        CorpusError: If an input does not exist.
    """
    return [Path(f.name) for f in resolve_inputs(inputs, suffixes)]


def compressed_endings(suffixes: Sequence[str]) -> tuple[str, ...]:
    """`suffixes` with and without every compression suffix (`.txt`, `.txt.gz`, ...)."""
    return tuple(s + c for s in suffixes for c in ("", *COMPRESSED_SUFFIXES))


def decode_utf8(data: bytes, path: Path | str, where: str) -> str | Rejected:
    """`data` as UTF-8 text (a leading BOM dropped), or an `invalid_utf8` record at `where`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejected(
            str(path), where, "invalid_utf8", f"{where}: invalid UTF-8 at byte {err.start}"
        )
    return text.removeprefix("\ufeff")


def truncated(path: Path | str, err: TruncatedInput, what: str = "") -> Rejected:
    """The record a reader yields when decompression stops early (`TruncatedInput`)."""
    where = f"{path}@{err.offset}"
    detail = f"{where}: input truncated or corrupt after {err.offset} uncompressed bytes"
    return Rejected(str(path), where, "truncated", f"{detail}{what} ({err.cause})")


def too_large(path: Path | str, where: str, limit: int) -> Rejected:
    """The record for a document above `max_doc_bytes` (skipped without being kept in memory)."""
    detail = f"{where}: document larger than max_doc_bytes={limit}"
    return Rejected(str(path), where, "too_large", detail)


def take_bytes(records: Iterable[Record], max_bytes: int | None) -> Iterator[Record]:
    """Passes records through until the documents' UTF-8 bytes reach `max_bytes`.

    Documents are never cut: the one that reaches the cap is the last one yielded, so the total
    can exceed `max_bytes` by less than one document. `Rejected` records pass through uncounted.

    Args:
        records: Reader output.
        max_bytes: The cap; `None` means no cap.

    Yields:
        The records, up to the cap.

    Raises:
        ValueError: If `max_bytes` is not positive.
    """
    if max_bytes is None:
        yield from records
        return
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    total = 0
    for record in records:
        yield record
        if isinstance(record, Document):
            total += len(record.text.encode("utf-8"))
            if total >= max_bytes:
                return
