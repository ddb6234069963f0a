"""MediaWiki XML dumps: articles only, redirects and other namespaces counted, truncation."""

import bz2

import pytest

from data_pipeline.sources.inputs import open_input
from data_pipeline.sources.records import Document, Rejected
from data_pipeline.sources.wikipedia import iter_dump_chunks, read_chunk, read_dump
from tests.data_pipeline.corpora import (
    ARTICLE_CLEAN,
    GZIP_HOLDS_BACK,
    compress_in_blocks,
    decoded_by_prefix,
    mediawiki_xml,
    wiki_pages,
    write_dump,
)


def summary(records):
    return [
        (r.reason, r.doc_id) if isinstance(r, Rejected) else ("doc", r.text.split("\n")[0])
        for r in records
    ]


@pytest.mark.parametrize("name", ["dump.xml", "dump.xml.bz2"])
def test_articles_redirects_namespaces(tmp_path, name):
    path = write_dump(tmp_path / name)
    records = list(read_dump(path))
    kinds = [k for k, _ in summary(records)]
    assert kinds == ["doc", "redirect", "non_article", "non_article", "doc", "no_prose", "doc"]
    docs = [r for r in records if isinstance(r, Document)]
    assert docs[0].text == ARTICLE_CLEAN
    assert docs[1].text.startswith("Émile & Co\n\nÉmile & Co sell crêpes in Paris – since 1901.")
    assert docs[2].text == "Ünïcode 中文\n\nText in 中文 and emoji 🙂.\n\nSecond paragraph."
    data = mediawiki_xml(wiki_pages())
    for doc in docs:  # ids are byte offsets of the <page> in the uncompressed dump
        offset = int(doc.doc_id.rsplit("@", 1)[1])
        assert data[offset : offset + 6] == b"<page>"
    talk = next(r for r in records if isinstance(r, Rejected) and r.reason == "non_article")
    assert "'Talk:Glimmer'" in talk.detail and talk.detail.startswith(f"{path}@")


def test_old_schema_without_ns_uses_title_prefixes(tmp_path):
    path = write_dump(tmp_path / "enwik8-like.xml", with_ns=False, siteinfo=False)
    kinds = [k for k, _ in summary(read_dump(path))]
    # No <ns>/<redirect>: "Talk:"/"Template:" prefixes and "#REDIRECT" text decide.
    assert kinds == ["doc", "redirect", "non_article", "non_article", "doc", "no_prose", "doc"]


def test_chunks_do_not_change_the_records(tmp_path):
    path = write_dump(tmp_path / "dump.xml")
    expected = list(read_dump(path, chunk_bytes=1 << 30))
    for chunk_bytes in (1, 200, 1500):
        stream, _ = open_input(path)
        chunks = list(iter_dump_chunks(stream, str(path), chunk_bytes))
        assert [c.index for c in chunks] == list(range(len(chunks)))
        if chunk_bytes == 1:
            assert len(chunks) == len(wiki_pages())  # one page each
        records = [r for c in chunks for r in read_chunk(c, str(path))]
        assert records == expected


def test_invalid_page_xml_is_rejected_and_the_rest_kept(tmp_path):
    data = mediawiki_xml(wiki_pages())
    first_text = data.index(b"<text")
    broken = (
        data[:first_text] + b"<text>a < b &undefined;" + data[data.index(b">", first_text) + 1 :]
    )
    path = tmp_path / "broken.xml"
    path.write_bytes(broken)
    records = list(read_dump(path))
    assert summary(records)[0] == ("invalid_xml", f"{path}@{data.index(b'<page>')}")
    assert "invalid page XML" in records[0].detail
    assert [k for k, _ in summary(records)][1:] == [
        "redirect", "non_article", "non_article", "doc", "no_prose", "doc"
    ]  # fmt: skip


def test_dump_ending_after_the_last_page(tmp_path):
    data = mediawiki_xml(wiki_pages())
    expected = summary(read_dump(write_dump(tmp_path / "a.xml")))
    for tail in (b"", b"\n\n", b"</mediawiki>\n  \n"):
        path = tmp_path / "b.xml"
        path.write_bytes(data.removesuffix(b"</mediawiki>\n") + tail)
        got = [(kind, where.replace("b.xml", "a.xml")) for kind, where in summary(read_dump(path))]
        assert got == expected


def test_truncated_plain_dump_reports_the_cut_page(tmp_path):
    data = mediawiki_xml(wiki_pages())
    cut = data.index("Ünïcode".encode()) + 40  # inside the last page, like enwik8's end
    path = tmp_path / "cut.xml"
    path.write_bytes(data[:cut])
    records = list(read_dump(path))
    assert [k for k, _ in summary(records)][:-1] == [
        "doc", "redirect", "non_article", "non_article", "doc", "no_prose",
    ]  # fmt: skip
    last = records[-1]
    assert last.reason == "truncated_page" and "'Ünïcode 中文'" in last.detail
    assert last.doc_id == f"{path}@{data.rindex(b'<page>')}"


def test_truncated_bz2_keeps_pages_before_the_cut(tmp_path):
    pages = wiki_pages() * 40  # several bz2 blocks are not needed: the cut is mid-stream
    compressed = bz2.compress(mediawiki_xml(pages))
    path = tmp_path / "cut.xml.bz2"
    path.write_bytes(compressed[: len(compressed) * 2 // 3])
    records = list(read_dump(path))
    reasons = [r.reason for r in records if isinstance(r, Rejected)]
    assert reasons[-1] == "truncated" and "truncated or corrupt" in records[-1].detail
    # bz2 decodes whole 900 kB blocks: a cut in the only block loses everything, reported.
    assert all(isinstance(r, Document) or r.reason != "truncated" for r in records[:-1])


@pytest.mark.shared_data
@pytest.mark.parametrize("suffix", [".bz2", ".gz", ".zst"])
def test_cut_dump_keeps_every_page_its_decompressor_recovers(shared_data, tmp_path, suffix):
    """A dump cut anywhere gives the records of exactly the XML its own decompressor releases
    (fed byte by byte up to the cut): every complete page, then the cut page, then the cut."""
    real = shared_data / "wikipedia_xml" / "enwiki-table-markup.xml.bz2"
    data = compress_in_blocks(bz2.decompress(real.read_bytes()), suffix)
    decoded, lengths = decoded_by_prefix(data, suffix)
    cut_path, plain = tmp_path / f"cut.xml{suffix}", tmp_path / "recovered.xml"
    pages_seen = set()
    for cut in [len(data) * k // 9 for k in range(1, 9)]:
        cut_path.write_bytes(data[:cut])
        *records, last = read_dump(cut_path)
        assert list(read_dump(cut_path, chunk_bytes=20_000)) == [*records, last]
        assert last.reason == "truncated" and last.doc_id.startswith(f"{cut_path}@")
        reached = int(last.doc_id.rsplit("@", 1)[1])
        slack = GZIP_HOLDS_BACK if suffix == ".gz" else 0
        assert lengths[cut] - slack <= reached <= lengths[cut]
        recovered = decoded[:reached]
        plain.write_bytes(recovered)
        got, expected = _comparable(records, cut_path), _comparable(read_dump(plain), plain)
        assert got == expected
        kinds = [kind for kind, _, _ in got]
        assert len(kinds) - kinds.count("truncated_page") == recovered.count(b"</page>")
        assert kinds.count("truncated_page") == (
            recovered.rfind(b"<page>") > recovered.rfind(b"</page>")
        )
        pages_seen.add(recovered.count(b"</page>"))
    assert len(pages_seen) >= 3  # cuts with none, some and most pages complete


def _comparable(records, path):
    return [
        (getattr(r, "reason", "doc"), r.doc_id.replace(str(path), "F"), getattr(r, "text", ""))
        for r in records
    ]


def test_enormous_page_is_skipped_with_bounded_memory(tmp_path):
    pages = wiki_pages()[:1] + [{"title": "Huge", "ns": 0, "text": "word " * 60_000}]
    pages += wiki_pages()[4:5]
    path = write_dump(tmp_path / "huge.xml", pages)
    records = list(read_dump(path, max_doc_bytes=10_000))
    kinds = [k for k, _ in summary(records)]
    assert kinds.count("doc") == 2 and kinds.count("too_large") == 1
    assert "Huge" in next(r.detail for r in records if isinstance(r, Rejected))


@pytest.mark.shared_data
def test_real_enwiki_sample(shared_data):
    path = shared_data / "wikipedia_xml" / "enwiki-table-markup.xml.bz2"
    records = list(read_dump(path))
    docs = [r for r in records if isinstance(r, Document)]
    assert len(docs) == 5 and len(records) == 5
    titles = [d.text.split("\n", 1)[0] for d in docs]
    assert "Academy Award for Best Production Design" in titles
    for doc in docs:
        assert not any(m in doc.text for m in ("{{", "}}", "[[", "]]", "{|"))
        assert "<ref" not in doc.text and "'''" not in doc.text
        assert len(doc.text) > 500


def _parsed_pages(data: bytes) -> list[tuple[str, str]]:
    import re
    import xml.etree.ElementTree as ET

    pages = [ET.fromstring(m.group(0)) for m in re.finditer(rb"<page>.*?</page>", data, re.S)]
    return [(p.findtext("title"), p.find("revision").findtext("text") or "") for p in pages]


@pytest.mark.parametrize("source", ["fixture", "real"])
def test_dump_path_cleans_like_clean_wikitext(source, tmp_path, request):
    """Pages are cleaned partly before XML decoding (strip_escaped): same result as cleaning the
    decoded wikitext."""
    from data_pipeline.sources.wikitext import clean_wikitext

    if source == "real":
        path = request.getfixturevalue("shared_data") / "wikipedia_xml"
        path = path / "enwiki-table-markup.xml.bz2"
        data = bz2.decompress(path.read_bytes())
    else:
        pages = wiki_pages() + [
            {"title": "Escapes", "ns": 0, "text": 'A <ref name="a&b">x</ref>b &amp;lt; "q" '
             "{{lang|fr|l'été & co}} <!-- c --> [[x|y & z]] {| t |} end."},
        ]  # fmt: skip
        path = write_dump(tmp_path / "dump.xml", pages)
        data = path.read_bytes()
    docs = {d.text.split("\n", 1)[0]: d.text for d in read_dump(path) if isinstance(d, Document)}
    expected = {t: clean_wikitext(text, t) for t, text in _parsed_pages(data)}
    assert docs and docs == {t: c for t, c in expected.items() if t in docs}
    if source == "fixture":
        assert docs["Escapes"] == 'Escapes\n\nA b &lt; "q" l\'été & co y & z end.'


def test_character_references_in_the_dump(tmp_path):
    """Apostrophes or markup a dump writes as character references are cleaned all the same."""
    text = (
        "&#39;&#39;&#39;Ref&#39;&#39;&#39; has &#x5B;&#x5B;a link&#x5D;&#x5D;, a&lt;br/&gt;break"
        " &amp;ndash; and &amp;lt;b&amp;gt; shown."
    )
    data = (
        '<mediawiki>\n  <page>\n    <title>Ref</title>\n    <ns>0</ns>\n    <id>1</id>\n'
        f'    <revision>\n      <text xml:space="preserve">{text}</text>\n    </revision>\n'
        "  </page>\n</mediawiki>\n"
    )  # fmt: skip
    path = tmp_path / "refs.xml"
    path.write_text(data)
    (doc,) = list(read_dump(path))
    # Brackets written as references are not markup for the structural passes: kept as text.
    assert doc.text == "Ref\n\nRef has [[a link]], a\nbreak – and <b> shown."
