"""The demo corpus: the docstrings of the installed Python standard library.

Read with `ast` (nothing is imported), one document per module, in a fixed order, so the demo
needs no download and is deterministic for a given Python installation.
"""

from __future__ import annotations

import ast
import os
import sysconfig
import tokenize
import warnings
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.sources.inputs import CorpusError
from data_pipeline.sources.records import Document, Record, Rejected, take_bytes

__all__ = ["iter_stdlib_docstrings", "module_docstrings", "stdlib_root"]

# Directory names skipped when walking the standard library for the demo corpus.
STDLIB_SKIP_DIRS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
)


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
