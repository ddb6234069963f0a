"""Document readers: text, JSON lines, the stdlib-docstring demo corpus; errors name file:line."""

import gzip
import json

import pytest

from data_pipeline.sources.demo import iter_stdlib_docstrings, module_docstrings
from data_pipeline.sources.kinds import iter_documents
from data_pipeline.sources.records import CorpusError, Document, Rejected, expand_paths, take_bytes
from data_pipeline.sources.text import iter_jsonl, iter_text_files


def docs(records):
    return [r for r in records if isinstance(r, Document)]


def rejected(records):
    return [r for r in records if isinstance(r, Rejected)]


def test_text_files_one_document_per_file(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n", encoding="utf-8")
    (tmp_path / "a.txt").write_bytes("\ufefffirst file".encode())  # BOM is dropped
    (tmp_path / "skip.md").write_text("not a .txt file")
    (tmp_path / ".hidden.txt").write_text("hidden")
    sub = tmp_path / "sub"
    sub.mkdir()
    with gzip.open(sub / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("compressed")
    records = list(iter_text_files([tmp_path]))
    assert [d.text for d in records] == ["first file", "second file\n", "compressed"]
    assert records[0].doc_id == str(tmp_path / "a.txt") == records[0].source


def test_text_paragraphs_have_line_ids(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\ntwo\n\n  \nthree\n\n\nfour", encoding="utf-8")
    records = list(iter_text_files([path], split_paragraphs=True))
    assert [d.text for d in records] == ["one\ntwo", "three", "four"]
    assert [d.doc_id for d in records] == [f"{path}:1", f"{path}:5", f"{path}:8"]


def test_text_invalid_utf8_is_rejected_not_raised(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bad")
    (tmp_path / "good.txt").write_text("fine")
    records = list(iter_text_files([tmp_path]))
    [bad] = rejected(records)
    assert bad.reason == "invalid_utf8" and "bad.txt" in bad.detail and "byte 3" in bad.detail
    assert [d.text for d in docs(records)] == ["fine"]


def test_missing_and_corrupt_inputs_raise_naming_the_file(tmp_path):
    with pytest.raises(CorpusError, match="nope.txt"):
        list(iter_text_files([tmp_path / "nope.txt"]))
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(b"this is not gzip")
    with pytest.raises(CorpusError, match="corrupt.jsonl.gz"):
        list(iter_jsonl([corrupt]))
    # A cut archive is bad input, not an unreadable file: reported as a record, not raised.
    truncated = tmp_path / "truncated.txt.gz"
    truncated.write_bytes(gzip.compress(b"x" * 10_000)[:40])
    [record] = list(iter_text_files([truncated]))
    assert record.reason == "truncated" and record.detail.startswith(f"{truncated}@")


def test_jsonl_good_and_broken_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"text": "alpha", "id": 7}),
        "",
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 3}),
        json.dumps({"text": "omega"}),
    ]
    path.write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "\xff"}\n')
    records = list(iter_jsonl([path], id_field="id"))
    assert [(d.text, d.doc_id) for d in docs(records)] == [("alpha", "7"), ("omega", f"{path}:7")]
    reasons = {r.doc_id: r.reason for r in rejected(records)}
    assert reasons == {
        f"{path}:3": "invalid_json",
        f"{path}:4": "not_an_object",
        f"{path}:5": "missing_field",
        f"{path}:6": "field_not_string",
        f"{path}:8": "invalid_utf8",
    }
    assert all(r.detail.startswith(f"{path}:") for r in rejected(records))


def test_jsonl_custom_field_and_directory(tmp_path):
    with gzip.open(tmp_path / "part-0.json.gz", "wt") as f:
        f.write(json.dumps({"content": "zipped"}) + "\n")
    (tmp_path / "part-1.jsonl").write_text(json.dumps({"content": "plain"}) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    records = list(iter_jsonl([tmp_path], text_field="content"))
    assert [d.text for d in records] == ["zipped", "plain"]


def test_expand_paths_dedups_and_keeps_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a")
    b.write_text("b")
    assert expand_paths([b, tmp_path, a], (".txt",)) == [b, a]


def test_module_docstrings_in_source_order():
    source = '''
"""Module doc."""
class A:
    """Class   doc.

    Second line.
        Indented third line.
    """
    def f(self):
        """Method doc."""
try:
    def g():
        """In a try block."""
except ImportError:
    pass
async def h():
    """Async doc."""
def no_doc():
    return 1
'''
    assert module_docstrings(source) == [
        "Module doc.",
        "Class   doc.\n\nSecond line.\n    Indented third line.",
        "Method doc.",
        "In a try block.",
        "Async doc.",
    ]
    with pytest.raises(SyntaxError):
        module_docstrings("def (:")


def test_stdlib_demo_is_deterministic_and_skips_tests():
    first = list(iter_stdlib_docstrings(max_bytes=60_000))
    second = list(iter_stdlib_docstrings(max_bytes=60_000))
    assert first == second
    documents = docs(first)
    assert len(documents) >= 3
    ids = [d.doc_id for d in documents]
    assert len(set(ids)) == len(ids) and all(i.startswith("stdlib:") for i in ids)
    total = sum(len(d.text.encode()) for d in documents)
    last = len(documents[-1].text.encode())
    assert total >= 60_000 and total - last < 60_000
    assert all(d.text.strip() for d in documents)


def test_stdlib_demo_content():
    by_id = {d.doc_id: d for d in docs(iter_stdlib_docstrings())}
    assert len(by_id) > 300
    assert by_id["stdlib:json.decoder"].text.startswith("Implementation of JSONDecoder")
    assert "stdlib:json" in by_id  # a package's __init__.py
    assert not any(
        part in {"test", "tests", "idlelib", "site-packages"}
        for doc_id in by_id
        for part in doc_id.split(".")
    )


def test_stdlib_walk_rejects_unparsable_files(tmp_path):
    (tmp_path / "good.py").write_text('"""Good module."""\n')
    (tmp_path / "bad.py").write_text('"""Doc."""\ndef broken(:\n')
    (tmp_path / "nodoc.py").write_text("x = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text('"""Skipped."""\n')
    records = list(iter_stdlib_docstrings(root=tmp_path))
    [bad] = rejected(records)
    assert bad.reason == "syntax_error" and bad.detail.startswith(f"{tmp_path / 'bad.py'}:2")
    assert [(d.doc_id, d.text) for d in docs(records)] == [("stdlib:good", "Good module.")]
    with pytest.raises(CorpusError, match="not found"):
        list(iter_stdlib_docstrings(root=tmp_path / "missing"))


def test_take_bytes_passes_rejected_records():
    records = [Rejected("s", "r", "x", "d"), Document("abc", "s", "1"), Document("de", "s", "2")]
    assert list(take_bytes(records, 3)) == records[:2]
    assert list(take_bytes(records, None)) == records
    with pytest.raises(ValueError):
        list(take_bytes(records, 0))


def test_iter_documents_validates_eagerly(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        iter_documents("wiki", [tmp_path])
    with pytest.raises(ValueError, match="no inputs"):
        iter_documents("demo", [tmp_path])
    with pytest.raises(ValueError, match="at least one input"):
        iter_documents("jsonl", [])
    (tmp_path / "x.txt").write_text("x" * 10)
    assert len(list(iter_documents("text", [tmp_path], max_bytes=5))) == 1


@pytest.mark.shared_data
def test_real_c4_sample(shared_data):
    records = list(iter_jsonl([shared_data / "c4"]))
    assert not rejected(records)
    assert len(records) == 30
    assert all(len(d.text) > 50 for d in records)
    assert records[0].doc_id.endswith("c4-sample.01.json.gz:1")
