"""Document records and the generic readers: raw files -> a stream of `Document` records.

Every reader is a generator of records, so sources compose: `sources.py` adds MediaWiki XML
dumps, WikiExtractor output, C4 and Parquet on top of these ones:

- `iter_text_files`: plain text, one document per file or one per blank-line-separated paragraph.
- `iter_jsonl`: JSON lines (optionally `.gz`/`.bz2`/`.xz`/`.zst`), one document per line.
- `iter_stdlib_docstrings`: the demo corpus, the docstrings of the installed Python standard
  library, read with `ast` (nothing is imported), one document per module, in a fixed order.

A broken document (invalid JSON, invalid UTF-8, a missing field, a line above `max_doc_bytes`, a
file that does not parse, the rest of a truncated `.gz`) is not an exception: the reader yields a
`Rejected` record naming the file and line (or byte offset), and the shard writer counts it by
reason. A file that cannot be read at all raises `CorpusError` naming the file; an empty
compressed file is `truncated` at byte 0; `iter_documents` reports a directory it cannot list as
an `unreadable_directory` record.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from data_pipeline.sources.inputs import (
    COMPRESSED_SUFFIXES,
    CorpusError,
    ReadMeter,
    TruncatedInput,
    iter_lines,
    open_input,
    resolve_inputs,
)

try:
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is the fallback
    _json_loads = json.loads

__all__ = [
    "DEFAULT_MAX_DOC_BYTES",
    "JSONL_SUFFIXES",
    "SOURCES",
    "CorpusError",
    "Document",
    "Record",
    "Rejected",
    "compressed_endings",
    "expand_paths",
    "iter_documents",
    "iter_jsonl",
    "iter_stdlib_docstrings",
    "iter_text_files",
    "module_docstrings",
    "read_jsonl_file",
    "read_text_file",
    "stdlib_root",
    "take_bytes",
]

SOURCES = ("wikipedia", "wikiextractor", "c4", "jsonl", "text", "parquet", "demo")
"""Source kinds accepted by `iter_documents` (and `perceiver data prepare --source`)."""

DEFAULT_MAX_DOC_BYTES = 64 << 20
"""Documents above this many UTF-8 bytes are rejected (`too_large`), never held whole."""

# Directory names skipped when walking the standard library for the demo corpus.
STDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
)
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


def _decode(data: bytes, path: Path | str, where: str) -> str | Rejected:
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
            decoded = _decode(data, path, str(path))
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
                    text = _decode(b"\n".join(paragraph), path, where)
                    yield text if isinstance(text, Rejected) else Document(text, str(path), where)
                paragraph, size = [], 0
            elif line is None:
                yield too_large(path, f"{path}:{line_no}", max_doc_bytes)
    except TruncatedInput as err:
        yield truncated(path, err, "; the paragraph being read is dropped")
        return
    if paragraph:
        where = f"{path}:{start}"
        text = _decode(b"\n".join(paragraph), path, where)
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


def stdlib_root() -> Path:
    """The directory of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def module_docstrings(source: str, filename: str = "<unknown>") -> list[str]:
    """Extracts a module's docstrings (module, classes, functions) in source order.

    Docstrings are cleaned with `inspect.cleandoc` (via `ast.get_docstring`); empty ones are
    dropped. Nested definitions, including those under `if`/`try`/`with` blocks, are included.

    Args:
        source: Python source code.
        filename: Used in `SyntaxError` messages.

    Returns:
        The docstrings.

    Raises:
        SyntaxError: If the source does not parse.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules
        tree = ast.parse(source, filename=filename)
    docs: list[str] = []
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, documented):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                docs.append(doc)
        children: list[ast.AST] = []
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            value = getattr(node, field, None)
            if isinstance(value, list):
                children.extend(c for c in value if isinstance(c, ast.AST))
        # Sort by position so the traversal is in source order (fields are not interleaved).
        children.sort(key=lambda c: (getattr(c, "lineno", 0), getattr(c, "col_offset", 0)))
        stack.extend(reversed(children))
    return docs


def _stdlib_files(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in STDLIB_SKIP_DIRS and not d.startswith((".", "config-"))
        )
        rel = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("."):
                continue
            parts = [*rel.parts, name[:-3]]
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                yield ".".join(parts), Path(dirpath) / name


def iter_stdlib_docstrings(
    *, root: str | os.PathLike[str] | None = None, max_bytes: int | None = None
) -> Iterator[Record]:
    """The demo corpus: docstrings of the installed Python standard library.

    Walks the `.py` files under `root` (default `stdlib_root()`) in sorted order, skipping test,
    `idlelib`, `turtledemo` and `site-packages` directories, and parses each with `ast` (no module
    is imported). Each module with at least one docstring becomes one document: its module,
    class and function docstrings joined by blank lines. The output is deterministic for a given
    Python installation.

    Args:
        root: Library directory to walk.
        max_bytes: Stop once the documents' UTF-8 bytes reach this total (see `take_bytes`).

    Yields:
        `Document(text, source=file path, doc_id="stdlib:<module>")`, and `Rejected` records
        (`syntax_error`, `invalid_encoding`) for files that do not parse.

    Raises:
        CorpusError: If `root` is not a directory or a file cannot be read.
    """
    base = Path(root) if root is not None else stdlib_root()
    if not base.is_dir():
        raise CorpusError(f"standard library directory not found: {base}")
    yield from take_bytes(_iter_stdlib(base), max_bytes)


def _iter_stdlib(base: Path) -> Iterator[Record]:
    for module, path in _stdlib_files(base):
        doc_id = f"stdlib:{module}"
        try:
            with tokenize.open(path) as f:
                source = f.read()
        except (SyntaxError, UnicodeDecodeError) as err:  # bad coding cookie or bytes
            yield Rejected(str(path), doc_id, "invalid_encoding", f"{path}: {err}")
            continue
        except OSError as err:
            raise CorpusError(f"cannot read {path}: {err}") from err
        try:
            docs = module_docstrings(source, str(path))
        except (SyntaxError, ValueError) as err:
            line = getattr(err, "lineno", None)
            detail = f"{path}:{line}: {err}" if line else f"{path}: {err}"
            yield Rejected(str(path), doc_id, "syntax_error", detail)
            continue
        if docs:
            yield Document("\n\n".join(docs), str(path), doc_id)


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
    from data_pipeline.sources.kinds import SourceOptions, input_suffixes, read_input

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
