"""Document readers: raw files -> a stream of `Document` records.

Every reader is a generator of records, so sources compose and later readers (Wikipedia XML, C4,
parallel workers, mixtures) slot in beside these ones:

- `iter_text_files`: plain text, one document per file or one per blank-line-separated paragraph.
- `iter_jsonl`: JSON lines (optionally `.gz`/`.bz2`/`.xz`/`.zst`), one document per line.
- `iter_stdlib_docstrings`: the demo corpus, the docstrings of the installed Python standard
  library, read with `ast` (nothing is imported), one document per module, in a fixed order.

A broken document (invalid JSON, invalid UTF-8, a missing field, a file that does not parse) is not
an exception: the reader yields a `Rejected` record naming the file and line, and the shard writer
counts it by reason. A file that cannot be read at all raises `CorpusError` naming the file.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import json
import lzma
import os
import sysconfig
import tokenize
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "SOURCES",
    "CorpusError",
    "Document",
    "Record",
    "Rejected",
    "expand_paths",
    "iter_documents",
    "iter_jsonl",
    "iter_stdlib_docstrings",
    "iter_text_files",
    "module_docstrings",
    "stdlib_root",
    "take_bytes",
]

SOURCES = ("text", "jsonl", "demo")
"""Source kinds accepted by `iter_documents` (and `perceiver data prepare --source`)."""

# Directory names skipped when walking the standard library for the demo corpus.
STDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
)
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


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


class CorpusError(RuntimeError):
    """A corpus input that cannot be read at all (missing, unreadable, corrupt archive)."""


def expand_paths(
    inputs: Iterable[str | os.PathLike[str]], suffixes: Sequence[str] = ()
) -> list[Path]:
    """Expands files and directories into a sorted, de-duplicated list of files.

    Directories are walked recursively in sorted order; hidden entries (starting with `.`) are
    skipped, and so are files whose name does not end with one of `suffixes` (when given). Files
    named explicitly are always kept.

    Args:
        inputs: Files and/or directories.
        suffixes: File name endings to keep inside directories, e.g. `(".jsonl", ".jsonl.gz")`.

    Returns:
        The files, directories expanded in place, in the order given.

    Raises:
        CorpusError: If an input does not exist.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith(".") or (suffixes and not name.endswith(tuple(suffixes))):
                        continue
                    found.append(Path(dirpath) / name)
        elif path.exists():
            found = [path]
        else:
            raise CorpusError(f"input not found: {path}")
        for file in found:
            if file not in seen:
                seen.add(file)
                out.append(file)
    return out


def _open_binary(path: Path) -> IO[bytes]:
    """Opens a possibly compressed file for binary reading, by suffix."""
    suffix = path.suffix
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".zst":
        import zstandard

        return zstandard.open(path, "rb")
    return open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.read()
    except (OSError, EOFError, lzma.LZMAError, ValueError) as err:
        raise CorpusError(f"cannot read {path}: {err}") from err


def _decode(data: bytes, path: Path, where: str) -> str | Rejected:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejected(
            str(path), where, "invalid_utf8", f"{where}: invalid UTF-8 at byte {err.start}"
        )
    return text.removeprefix("\ufeff")


def iter_text_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    split_paragraphs: bool = False,
    suffixes: Sequence[str] = (".txt",),
) -> Iterator[Record]:
    """Reads UTF-8 text files (optionally compressed) as documents.

    Args:
        paths: Files and/or directories (walked for files ending with one of `suffixes`, also
            with a compression suffix such as `.txt.gz`).
        split_paragraphs: If True, every run of lines separated by blank (whitespace-only) lines
            is a document with id `path:first_line`; otherwise the whole file is one document.
        suffixes: File endings to pick up inside directories.

    Yields:
        `Document`s, and `Rejected` records for files that are not valid UTF-8.

    Raises:
        CorpusError: If a file cannot be read.
    """
    endings = tuple(s + c for s in suffixes for c in ("", *_COMPRESSED_SUFFIXES))
    for path in expand_paths(paths, endings):
        decoded = _decode(_read_bytes(path), path, str(path))
        if isinstance(decoded, Rejected):
            yield decoded
            continue
        if not split_paragraphs:
            yield Document(decoded, str(path), str(path))
            continue
        paragraph: list[str] = []
        start = 0
        for line_no, line in enumerate(decoded.split("\n"), start=1):
            line = line.removesuffix("\r")
            if line.strip():
                if not paragraph:
                    start = line_no
                paragraph.append(line)
            elif paragraph:
                yield Document("\n".join(paragraph), str(path), f"{path}:{start}")
                paragraph = []
        if paragraph:
            yield Document("\n".join(paragraph), str(path), f"{path}:{start}")


def iter_jsonl(
    paths: Iterable[str | os.PathLike[str]],
    *,
    text_field: str = "text",
    id_field: str | None = None,
) -> Iterator[Record]:
    """Reads JSON-lines files (optionally compressed), one document per non-blank line.

    Args:
        paths: Files and/or directories (walked for `.jsonl`/`.json`/`.ndjson`, possibly
            compressed, e.g. C4's `.json.gz`).
        text_field: Key of the document text in each object.
        id_field: Optional key of a document id; the default id is `path:line`.

    Yields:
        `Document`s, and `Rejected` records (`invalid_utf8`, `invalid_json`, `not_an_object`,
        `missing_field`, `field_not_string`) whose detail names the file and line.

    Raises:
        CorpusError: If a file cannot be read or its compression is corrupt.
    """
    endings = tuple(s + c for s in _JSONL_SUFFIXES for c in ("", *_COMPRESSED_SUFFIXES))
    for path in expand_paths(paths, endings):
        try:
            with _open_binary(path) as f:
                yield from _jsonl_records(f, path, text_field, id_field)
        except (OSError, EOFError, lzma.LZMAError) as err:
            raise CorpusError(f"cannot read {path}: {err}") from err


def _jsonl_records(
    f: IO[bytes], path: Path, text_field: str, id_field: str | None
) -> Iterator[Record]:
    for line_no, raw in enumerate(f, start=1):
        where = f"{path}:{line_no}"
        line = _decode(raw, path, where)
        if isinstance(line, Rejected):
            yield line
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            detail = f"{where}: invalid JSON: {err.msg} (column {err.colno})"
            yield Rejected(str(path), where, "invalid_json", detail)
            continue
        if not isinstance(obj, dict):
            detail = f"{where}: expected a JSON object, got {type(obj).__name__}"
            yield Rejected(str(path), where, "not_an_object", detail)
            continue
        if text_field not in obj:
            detail = f"{where}: no field {text_field!r} (fields: {sorted(obj)[:10]})"
            yield Rejected(str(path), where, "missing_field", detail)
            continue
        text = obj[text_field]
        if not isinstance(text, str):
            detail = f"{where}: field {text_field!r} is {type(text).__name__}, not a string"
            yield Rejected(str(path), where, "field_not_string", detail)
            continue
        doc_id = str(obj[id_field]) if id_field is not None and id_field in obj else where
        yield Document(text, str(path), doc_id)


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
) -> Iterator[Record]:
    """Reads a corpus by source kind; the one entry point the CLI and `prepare_corpus` use.

    Args:
        source: One of `SOURCES`: `"text"`, `"jsonl"` or `"demo"` (the stdlib docstrings).
        inputs: Files or directories (ignored, and must be empty, for `"demo"`).
        max_bytes: Cap on the documents' total UTF-8 bytes (see `take_bytes`).
        text_field: JSON field holding the text (`"jsonl"`).
        split_paragraphs: One document per blank-line-separated paragraph (`"text"`).

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
    if source == "text":
        records = iter_text_files(inputs, split_paragraphs=split_paragraphs)
    else:
        records = iter_jsonl(inputs, text_field=text_field)
    return take_bytes(records, max_bytes)
