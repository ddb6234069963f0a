"""Source kinds: which reader parses which files; `iter_documents` reads a whole corpus.

    wikipedia      MediaWiki XML dumps (`*-pages-articles*.xml[.bz2]`, enwik8)   wikipedia.py
    wikiextractor  WikiExtractor output: JSON lines `{id, url, title, text}` or `<doc>` text
    c4             C4 as distributed: `c4-*.json.gz`, lines `{text, timestamp, url}`  formats.py
    jsonl          generic JSON lines (plain, .gz, .bz2, .xz, .zst), `--text-field`  text.py
    text           plain text files, one document per file or per paragraph        text.py
    parquet        Parquet files, one document per row of a text column (`--text-field`)
    demo           the Python standard library's docstrings (no inputs)            demo.py

`read_input(source, path, options)` reads one input file of a source; `input_suffixes(source)`
says which files a directory walk picks up. Both are what conversion workers call.
`iter_documents` reads all inputs of a source in one process. This module sits above every
reader; none of them imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from data_pipeline.sources.demo import iter_stdlib_docstrings
from data_pipeline.sources.formats import read_c4_file, read_parquet_file, read_wikiextractor_file
from data_pipeline.sources.inputs import CorpusError, ReadMeter, resolve_inputs
from data_pipeline.sources.records import (
    DEFAULT_MAX_DOC_BYTES,
    JSONL_SUFFIXES,
    SOURCES,
    Record,
    Rejected,
    compressed_endings,
    take_bytes,
)
from data_pipeline.sources.text import read_jsonl_file, read_text_file
from data_pipeline.sources.wikipedia import DEFAULT_CHUNK_BYTES, read_dump

__all__ = [
    "SOURCES",
    "SourceOptions",
    "input_suffixes",
    "iter_documents",
    "read_input",
]


@dataclass(frozen=True)
class SourceOptions:
    """Reader settings shared by all sources (each uses the ones that apply to it).

    Attributes:
        text_field: JSON key or Parquet column of the text (`jsonl`, `parquet`).
        id_field: Optional JSON key of a document id (`jsonl`).
        split_paragraphs: One document per blank-line-separated paragraph (`text`).
        max_doc_bytes: Documents above this many UTF-8 bytes are rejected (`too_large`).
        chunk_bytes: XML bytes per unit of parallel work (`wikipedia`).
    """

    text_field: str = "text"
    id_field: str | None = None
    split_paragraphs: bool = False
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (stored in the build plan and manifest)."""
        return {
            "text_field": self.text_field,
            "id_field": self.id_field,
            "split_paragraphs": self.split_paragraphs,
            "max_doc_bytes": self.max_doc_bytes,
            "chunk_bytes": self.chunk_bytes,
        }


def input_suffixes(source: str) -> tuple[str, ...]:
    """File endings a directory walk keeps for `source` (empty: every non-hidden file).

    Raises:
        ValueError: For an unknown source.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    return {
        "wikipedia": compressed_endings((".xml",)),
        "wikiextractor": (),  # WikiExtractor writes AA/wiki_00 (no suffix), or wiki_00.bz2
        "c4": compressed_endings((".json", ".jsonl")),
        "jsonl": compressed_endings(JSONL_SUFFIXES),
        "text": compressed_endings((".txt",)),
        "parquet": (".parquet",),
        "demo": (),
    }[source]


def read_input(
    source: str,
    path: str | os.PathLike[str],
    options: SourceOptions = SourceOptions(),
    meter_out: list[ReadMeter] | None = None,
) -> Iterator[Record]:
    """Reads one input file of `source` (for `demo`, `path` is ignored: the stdlib is read).

    Args:
        source: One of `SOURCES`.
        path: The local file.
        options: Reader settings.
        meter_out: If given, the file's `ReadMeter` is appended (progress and checksum).

    Returns:
        An iterator of `Document` and `Rejected` records.

    Raises:
        ValueError: For an unknown source.
        CorpusError: If the file cannot be read at all (while iterating).
    """
    limit = options.max_doc_bytes
    if source == "wikipedia":
        return read_dump(
            path, chunk_bytes=options.chunk_bytes, max_doc_bytes=limit, meter_out=meter_out
        )
    if source == "wikiextractor":
        return read_wikiextractor_file(path, max_doc_bytes=limit, meter_out=meter_out)
    if source == "c4":
        return read_c4_file(path, max_doc_bytes=limit, meter_out=meter_out)
    if source == "jsonl":
        return read_jsonl_file(
            path,
            text_field=options.text_field,
            id_field=options.id_field,
            max_doc_bytes=limit,
            meter_out=meter_out,
        )
    if source == "text":
        return read_text_file(
            path,
            split_paragraphs=options.split_paragraphs,
            max_doc_bytes=limit,
            meter_out=meter_out,
        )
    if source == "parquet":
        return read_parquet_file(
            path, text_field=options.text_field, max_doc_bytes=limit, meter_out=meter_out
        )
    if source == "demo":
        return iter_stdlib_docstrings()
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def iter_documents(
    source: str,
    inputs: Sequence[str | os.PathLike[str]] = (),
    *,
    max_bytes: int | None = None,
    text_field: str = "text",
    split_paragraphs: bool = False,
    id_field: str | None = None,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> Iterator[Record]:
    """Reads a whole corpus by source kind, in one process, inputs in order.

    (`convert.convert` reads the same inputs in parallel, one file or dump chunk per task.)

    Args:
        source: One of `SOURCES` (see `sources.py`; `"demo"` is the stdlib docstrings).
        inputs: Local files, globs or directories (none for `"demo"`).
        max_bytes: Cap on the documents' total UTF-8 bytes (see `take_bytes`).
        text_field: JSON field or Parquet column holding the text (`jsonl`, `parquet`).
        split_paragraphs: One document per blank-line-separated paragraph (`text`).
        id_field: JSON field of a document id (`jsonl`).
        max_doc_bytes: Larger documents are rejected (`too_large`).

    Returns:
        An iterator of `Document` and `Rejected` records.

    Raises:
        ValueError: For an unknown source or missing/unexpected inputs (raised at once).
        CorpusError: If an input cannot be read (raised while iterating).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if source == "demo":
        if inputs:
            raise ValueError("source 'demo' reads the Python standard library and takes no inputs")
        return iter_stdlib_docstrings(max_bytes=max_bytes)
    if not inputs:
        raise ValueError(f"source {source!r} needs at least one input file or directory")
    options = SourceOptions(
        text_field=text_field,
        id_field=id_field,
        split_paragraphs=split_paragraphs,
        max_doc_bytes=max_doc_bytes,
    )

    def records() -> Iterator[Record]:
        unreadable: list[tuple[str, str]] = []
        found = resolve_inputs(inputs, input_suffixes(source), unreadable)
        for directory, detail in unreadable:
            yield Rejected(directory, directory, "unreadable_directory", detail)
        for item in found:
            if item.remote:
                raise CorpusError(f"{item.name}: remote inputs are read by `convert` only")
            yield from read_input(source, item.name, options)

    return take_bytes(records(), max_bytes)
