"""MediaWiki XML dumps (`*-pages-articles.xml[.bz2]`, enwik8) -> article documents.

A dump is streamed, never loaded whole, in two steps that can run in different processes:

1. `iter_dump_chunks` (cheap, in the process that reads the file) decompresses the stream and
   cuts it, at `</page>` boundaries, into `DumpChunk`s of about `chunk_bytes` of XML. A chunk
   ends with the first page that ends at least `chunk_bytes` after the chunk's start, so the cut
   depends only on the content: conversions give the same chunks whatever the worker count.
   The `<siteinfo>` header, when present, gives the namespace names.
2. `read_chunk` (the expensive part, in a worker) parses each `<page>`, keeps main-namespace
   articles that are not redirects and turns their wikitext into prose (`wikitext.py`).

Bad input is reported, never raised: a page cut by the end of the data (enwik8 is cut in the
middle of a page) becomes `Rejected("truncated_page")` with its byte offset and title, a `.bz2`
that ends early becomes `Rejected("truncated")` after every complete page before the cut, pages
outside the main namespace, redirects and articles with no prose left after cleaning are
`Rejected("non_article" / "redirect" / "no_prose")` (counted, and tolerated by `--strict`: every
real dump has them: they are filtering, not damage), an unparsable page is
`Rejected("invalid_xml")`, a page above `max_doc_bytes` is `Rejected("too_large")`.
"""

from __future__ import annotations

import html
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field

from data_pipeline.sources.inputs import READ_SIZE, ReadMeter, TruncatedInput, open_input
from data_pipeline.sources.records import (
    DEFAULT_MAX_DOC_BYTES,
    Document,
    Record,
    Rejected,
    too_large,
)
from data_pipeline.sources.wikitext import clean_stripped, strip_escaped

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_NAMESPACES",
    "DumpChunk",
    "iter_dump_chunks",
    "parse_page",
    "read_chunk",
    "read_dump",
]

DEFAULT_CHUNK_BYTES = 32 << 20
"""XML bytes per chunk (one unit of parallel work and of resume)."""

DEFAULT_NAMESPACES = (
    "Media", "Special", "Talk", "User", "User talk", "Wikipedia", "Wikipedia talk", "File",
    "File talk", "Image", "Image talk", "MediaWiki", "MediaWiki talk", "Template", "Template talk",
    "Help", "Help talk", "Category", "Category talk", "Portal", "Portal talk", "Draft",
    "Draft talk", "TimedText", "TimedText talk", "Module", "Module talk", "Gadget",
    "Gadget talk", "Gadget definition", "Gadget definition talk", "Book", "Book talk",
    "Education Program", "Education Program talk", "WP", "WT", "Project", "Project talk",
)  # fmt: skip
"""Namespace names of English Wikipedia, for dumps without `<ns>` elements (enwik8's schema)."""

_PAGE_START = b"<page>"
_PAGE_END = b"</page>"
_NAMESPACE = re.compile(rb"<namespace[^>]*>([^<]+)</namespace>")
_REDIRECT_TEXT = re.compile(r"\s*#redirect\b", re.I)
_TITLE = re.compile(rb"<title>([^<]*)</title>")
_NS = re.compile(rb"<ns>([^<]*)</ns>")
_END_OF_DUMP = re.compile(rb"\s*(?:</mediawiki>\s*)?\Z")


@dataclass
class DumpChunk:
    """A run of consecutive pages of one dump, the unit of parallel work.

    Attributes:
        index: Position of the chunk in the dump (0, 1, ...).
        offset: Uncompressed byte offset of `data` in the dump.
        data: The XML of whole pages (the last chunk may end with a cut page).
        namespaces: Namespace names that mark non-article titles.
        rejected: Records found while cutting (a page too large to hold, a truncated stream).
    """

    index: int
    offset: int
    data: bytes
    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES
    rejected: list[Rejected] = field(default_factory=list)


def _namespaces(header: bytes) -> tuple[str, ...]:
    names = {m.group(1).decode("utf-8", "replace").strip() for m in _NAMESPACE.finditer(header)}
    return tuple(sorted(names | set(DEFAULT_NAMESPACES)))


def iter_dump_chunks(
    stream,
    path: str,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
) -> Iterator[DumpChunk]:
    """Cuts a decompressed dump stream into chunks of whole pages (see the module docstring).

    Args:
        stream: Binary stream of the XML (from `inputs.open_input`).
        path: The file, for messages.
        chunk_bytes: Target XML bytes per chunk.
        max_doc_bytes: A page whose XML exceeds 4x this is skipped while cutting (`too_large`),
            so memory stays bounded.

    Yields:
        `DumpChunk`s in order; a truncated stream ends with a chunk carrying a `truncated`
        record.
    """
    max_page = 4 * max_doc_bytes + (64 << 10)
    marker = len(_PAGE_END)
    buf = bytearray()
    base = 0  # dump offset of buf[0]
    start = page_end = search = 0  # chunk start, end of its last whole page, search position
    header_done = eof = False
    index = 0
    namespaces = DEFAULT_NAMESPACES
    pending: list[Rejected] = []
    while True:
        if not header_done:
            first = buf.find(_PAGE_START)
            if first < 0 and not eof:
                block = _read(stream, path, base + len(buf), pending)
                eof = not block
                buf += block
                continue
            start = page_end = search = first if first >= 0 else len(buf)
            namespaces = _namespaces(bytes(buf[:start]))
            header_done = True
        while (end := buf.find(_PAGE_END, search)) >= 0:
            page_end = search = end + marker
            if page_end - start >= chunk_bytes:
                yield DumpChunk(
                    index, base + start, bytes(memoryview(buf)[start:page_end]), namespaces, pending
                )
                index, start, pending = index + 1, page_end, []
        search = max(search, len(buf) - marker + 1)
        if start >= READ_SIZE:  # forget what was handed out
            del buf[:start]
            base, page_end, search, start = base + start, page_end - start, search - start, 0
        if len(buf) - page_end > max_page:  # an enormous page: hand out what precedes, skip it
            if page_end > start:
                yield DumpChunk(
                    index, base + start, bytes(memoryview(buf)[start:page_end]), namespaces, pending
                )
                index, pending = index + 1, []
            pending.append(_skip_page(buf, page_end, base, path, max_doc_bytes))
            carry = bytes(buf[-(marker - 1) :])
            carry_at = base + len(buf) - len(carry)
            buf = bytearray()
            base = carry_at + len(carry)
            while not eof:
                block = _read(stream, path, carry_at + len(carry), pending)
                eof = not block
                data = carry + block
                end = data.find(_PAGE_END)
                if end >= 0:
                    base = carry_at + end + marker
                    buf = bytearray(data[end + marker :])
                    break
                carry, carry_at = data[-(marker - 1) :], carry_at + len(data) - (marker - 1)
                base = carry_at + len(carry)
            start = page_end = search = 0
            continue
        if eof:
            break
        block = _read(stream, path, base + len(buf), pending)
        eof = not block
        buf += block
    if not _END_OF_DUMP.match(buf, start) or pending:
        yield DumpChunk(index, base + start, bytes(memoryview(buf)[start:]), namespaces, pending)


def _read(stream, path: str, offset: int, pending: list[Rejected]) -> bytes:
    """One block of the stream; a decompression failure ends it with a `truncated` record.

    `read1` makes one raw read: `read(n)` gathers several and drops them all when one fails,
    which loses the complete pages decoded just before a cut.
    """
    try:
        return stream.read1(READ_SIZE)
    except TruncatedInput as err:
        where = f"{path}@{offset}"
        detail = f"{where}: input truncated or corrupt ({err.cause}); pages after it are lost"
        pending.append(Rejected(path, where, "truncated", detail))
        return b""


def _skip_page(buf: bytearray, at: int, base: int, path: str, max_doc_bytes: int) -> Rejected:
    title = _TITLE.search(buf, at, at + 4096)
    name = f" ({title.group(1).decode('utf-8', 'replace')!r})" if title else ""
    return too_large(path, f"{path}@{base + at}{name}", max_doc_bytes)


def parse_page(
    page: bytes, path: str, offset: int, namespaces: tuple[str, ...] = DEFAULT_NAMESPACES
) -> Record:
    """Parses one `<page>...</page>` element into a cleaned article or a rejection.

    Args:
        page: The page's XML bytes.
        path: The dump, for ids and messages.
        offset: Uncompressed byte offset of the page in the dump.
        namespaces: Names whose `Name:` title prefix marks a non-article (used without `<ns>`).

    Returns:
        A `Document` (id `path@offset`, text = title + cleaned prose) or a `Rejected` record
        (`invalid_xml`, `non_article`, `redirect`, `no_prose`).
    """
    where = f"{path}@{offset}"
    skipped = _skip_without_parsing(page, path, where)
    if skipped is not None:
        return skipped
    try:
        element = ET.fromstring(_strip_last_text(page))
    except ET.ParseError as err:
        return Rejected(path, where, "invalid_xml", f"{where}: invalid page XML: {err}")
    title = element.findtext("title") or ""
    ns = element.findtext("ns")
    label = f"{where} ({title!r})"
    prefix, colon, _ = title.partition(":")
    if (ns is not None and ns.strip() != "0") or (
        ns is None and colon and prefix.strip().lower() in {n.lower() for n in namespaces}
    ):
        detail = f"{label}: not an article (namespace {ns.strip() if ns else prefix})"
        return Rejected(path, where, "non_article", detail)
    revisions = element.findall("revision")
    text = (revisions[-1].findtext("text") if revisions else None) or ""
    if element.find("redirect") is not None or _REDIRECT_TEXT.match(text):
        return Rejected(path, where, "redirect", f"{label}: redirect")
    cleaned = clean_stripped(text, title)
    if cleaned == title.strip() or not cleaned:  # templates, tables and lists only
        return Rejected(path, where, "no_prose", f"{label}: no prose left after cleaning")
    return Document(cleaned, path, where)


def _strip_last_text(page: bytes) -> bytes:
    """The page with `wikitext.strip_escaped` applied to its last revision's text, still XML.

    Comments, references, templates and tables go before the parser decodes the text: they are
    most of an article's bytes, so the parser has half as much to decode.
    """
    at = page.rfind(b"<text")
    start = page.find(b">", at) + 1 if at >= 0 else 0
    if not start or page[start - 2 : start] == b"/>":  # no text, or an empty <text ... />
        return page
    end = page.rfind(b"</text>")  # from the end: the last text's close is near it
    if end < start:
        return page  # not well-formed: the parser says where
    return page[:start] + strip_escaped(page[start:end]) + page[end:]


def _skip_without_parsing(page: bytes, path: str, where: str) -> Rejected | None:
    """The rejection of a page whose metadata says it is not an article, without parsing it.

    Half the pages of a `pages-articles` dump are redirects and many others live outside the
    main namespace (templates, project pages: some of them huge); their `<ns>` and `<redirect>`
    come before the revision, so a search of the page's head decides. Pages without `<ns>`
    (old schemas) are left to the parser.
    """
    head_end = page.find(b"<revision")
    head = page[:head_end] if head_end >= 0 else page
    ns = _NS.search(head)
    if ns is None:
        return None
    namespace = ns.group(1).strip()
    redirect = b"<redirect" in head
    if namespace == b"0" and not redirect:
        return None
    title = _TITLE.search(head)
    name = html.unescape(title.group(1).decode("utf-8", "replace")) if title else "?"
    label = f"{where} ({name!r})"
    if namespace != b"0":
        detail = f"{label}: not an article (namespace {namespace.decode('utf-8', 'replace')})"
        return Rejected(path, where, "non_article", detail)
    return Rejected(path, where, "redirect", f"{label}: redirect")


def read_chunk(chunk: DumpChunk, path: str, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES):
    """Parses the pages of a chunk (what a worker does with it).

    Args:
        chunk: From `iter_dump_chunks`.
        path: The dump, for ids and messages.
        max_doc_bytes: Pages whose XML is larger are rejected (`too_large`).

    Yields:
        `Document` and `Rejected` records in page order, then the chunk's own rejections.
    """
    data, pos = chunk.data, 0
    while (begin := data.find(_PAGE_START, pos)) >= 0:
        end = data.find(_PAGE_END, begin)
        offset = chunk.offset + begin
        if end < 0:
            title = _TITLE.search(data, begin)
            name = title.group(1).decode("utf-8", "replace") if title else "?"
            where = f"{path}@{offset}"
            detail = (
                f"{where} ({name!r}): page cut by the end of the data after "
                f"{len(data) - begin} bytes; dropped"
            )
            yield Rejected(path, where, "truncated_page", detail)
            break
        pos = end + len(_PAGE_END)
        if pos - begin > 4 * max_doc_bytes:
            yield _skip_page(bytearray(data[begin : begin + 4096]), 0, offset, path, max_doc_bytes)
            continue
        yield parse_page(data[begin:pos], path, offset, chunk.namespaces)
    yield from chunk.rejected


def read_dump(
    path: str | os.PathLike[str],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    meter_out: list[ReadMeter] | None = None,
) -> Iterator[Record]:
    """Reads a whole dump in one process: chunks, then pages (see the module docstring).

    Args:
        path: A `.xml`, `.xml.bz2` (or `.gz`, `.zst`, ...) MediaWiki export.
        chunk_bytes: Chunk size (no effect on the output of this function).
        max_doc_bytes: Larger pages are rejected.
        meter_out: If given, the file's `ReadMeter` is appended.

    Yields:
        `Document` and `Rejected` records.

    Raises:
        CorpusError: If the file cannot be read at all.
    """
    name = os.fspath(path)
    stream, meter = open_input(name)
    if meter_out is not None:
        meter_out.append(meter)
    with stream:
        for chunk in iter_dump_chunks(stream, name, chunk_bytes, max_doc_bytes):
            yield from read_chunk(chunk, name, max_doc_bytes)
