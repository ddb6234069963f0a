"""Source readers on tiny fixtures in their real formats; inputs (globs, URLs); truncation."""

import gzip
import json

import pytest
import zstandard

from data_pipeline.sources.inputs import CorpusError, InputFile, resolve_inputs
from data_pipeline.sources.kinds import SourceOptions, input_suffixes, iter_documents, read_input
from data_pipeline.sources.records import Document, Rejected
from tests.data_pipeline.corpora import (
    GZIP_HOLDS_BACK,
    c4_documents,
    compress_in_blocks,
    decoded_by_prefix,
    write_c4,
    write_wikiextractor,
)


def docs(records):
    return [r for r in records if isinstance(r, Document)]


def rejected(records):
    return [r for r in records if isinstance(r, Rejected)]


@pytest.mark.parametrize("key", ["timestamp", "date"])
def test_c4_layout(tmp_path, key):
    texts = c4_documents(9)
    paths = write_c4(tmp_path / "c4" / "en", texts, files=2, key=key)
    records = list(iter_documents("c4", [tmp_path / "c4"]))
    assert not rejected(records)
    assert [d.text for d in records] == texts[0::2] + texts[1::2]
    assert records[0].doc_id == f"{paths[0]}:1"


def test_wikiextractor_both_formats(tmp_path):
    articles = [("Alpha", "Alpha is a letter.\n\nIt comes first."), ("Beta", "Beta: second.")]
    json_file, doc_file = write_wikiextractor(tmp_path / "extracted", articles)
    expected = ["Alpha\n\nAlpha is a letter.\n\nIt comes first.", "Beta\n\nBeta: second."]
    for path in (json_file, doc_file):
        records = list(read_input("wikiextractor", path))
        assert [d.text for d in records] == expected
        assert [d.doc_id for d in records] == ["1", "2"]
    # Directories: WikiExtractor's files have no suffix, all are read, in sorted order.
    assert len(list(iter_documents("wikiextractor", [tmp_path / "extracted"]))) == 4


def test_wikiextractor_broken_doc(tmp_path):
    path = tmp_path / "wiki_00"
    path.write_text('<doc id="1" title="A">\nA\n\ntext\n<doc id="2" title="B">\nB\n\nok\n</doc>\n')
    records = list(read_input("wikiextractor", path))
    assert [r.reason for r in rejected(records)] == ["invalid_doc_markup"]
    assert rejected(records)[0].detail.startswith(f"{path}:1:")
    assert [d.text for d in docs(records)] == ["B\n\nok"]
    (tmp_path / "other").write_text("neither format\n")
    with pytest.raises(CorpusError, match="other"):
        list(read_input("wikiextractor", tmp_path / "other"))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "part-0.parquet"
    table = pa.table({"content": ["first", None, "third é"], "n": [1, 2, 3]})
    pq.write_table(table, path, row_group_size=2)
    records = list(read_input("parquet", path, SourceOptions(text_field="content")))
    assert [d.text for d in docs(records)] == ["first", "third é"]
    assert [d.doc_id for d in docs(records)] == [f"{path}:0", f"{path}:2"]
    [null] = rejected(records)
    assert null.reason == "null_text" and null.doc_id == f"{path}:1"
    with pytest.raises(CorpusError, match="no column 'text'"):
        list(read_input("parquet", path))
    with pytest.raises(CorpusError, match="not a string column"):
        list(read_input("parquet", path, SourceOptions(text_field="n")))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match="bad.parquet"):
        list(read_input("parquet", tmp_path / "bad.parquet"))


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst"])
def test_truncated_jsonl_keeps_complete_lines(tmp_path, suffix):
    import bz2

    lines = "".join(json.dumps({"text": f"line {i} " + "x" * 200}) + "\n" for i in range(3000))
    raw = lines.encode()
    compress = {
        ".gz": gzip.compress,
        ".bz2": bz2.compress,
        ".zst": zstandard.ZstdCompressor().compress,
    }[suffix]
    data = compress(raw)
    path = tmp_path / f"cut.jsonl{suffix}"
    path.write_bytes(data[: len(data) // 2])
    records = list(read_input("jsonl", path))
    *kept, last = records
    assert last.reason == "truncated" and last.detail.startswith(f"{path}@")
    if suffix != ".bz2":  # bz2 only releases whole 900 kB blocks: nothing before the cut here
        assert len(kept) > 100
    assert [d.text for d in docs(kept)] == [json.loads(x)["text"] for x in lines.splitlines()][
        : len(kept)
    ]
    whole = tmp_path / f"whole.jsonl{suffix}"
    whole.write_bytes(data)
    assert len(docs(read_input("jsonl", whole))) == 3000


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("source", "name"), [("c4", "c4.json.gz"), ("jsonl", "c4.jsonl.zst"), ("text", "c4.txt.gz")]
)
def test_cut_file_keeps_every_document_its_decompressor_recovers(
    shared_data, tmp_path, source, name
):
    """Real C4 files cut at several offsets keep exactly the complete lines (paragraphs for
    text) of what the decompressor releases up to the cut, then report the cut once."""
    real = sorted((shared_data / "c4").glob("*.json.gz"))
    suffix = "." + name.rsplit(".", 1)[1]
    if source == "c4":  # the real compressed file itself
        data = real[1].read_bytes()
    else:
        lines = b"".join(gzip.decompress(p.read_bytes()) for p in real)
        if source == "text":  # one C4 document per paragraph
            texts = [json.loads(line)["text"] for line in lines.splitlines()]
            paragraphs = ["\n".join(x for x in t.splitlines() if x.strip()) for t in texts]
            lines = "\n\n".join(paragraphs).encode() + b"\n"
        data = compress_in_blocks(lines, suffix)
    decoded, lengths = decoded_by_prefix(data, suffix)
    path, plain = tmp_path / name, tmp_path / name.removesuffix(suffix)
    end = b"\n\n" if source == "text" else b"\n"
    kept_counts = set()
    for cut in [len(data) * k // 7 for k in range(1, 7)]:
        path.write_bytes(data[:cut])
        *records, last = read_input(source, path, SourceOptions(split_paragraphs=True))
        assert last.reason == "truncated" and last.doc_id.startswith(f"{path}@")
        reached = int(last.doc_id.rsplit("@", 1)[1])
        slack = GZIP_HOLDS_BACK if suffix == ".gz" else 0
        assert lengths[cut] - slack <= reached <= lengths[cut]
        recovered = decoded[:reached]
        plain.write_bytes(recovered[: recovered.rfind(end) + 1])  # complete documents only
        expected = read_input(source, plain, SourceOptions(split_paragraphs=True))
        assert not rejected(records)
        assert [(d.text, d.doc_id.replace(str(path), "F")) for d in records] == [
            (d.text, d.doc_id.replace(str(plain), "F")) for d in expected
        ]
        kept_counts.add(len(records))
    assert len(kept_counts) >= 3


def test_zstd_multiple_frames(tmp_path):
    compressor = zstandard.ZstdCompressor()
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(
        compressor.compress(b'{"text": "a"}\n') + compressor.compress(b'{"text": "b"}\n')
    )
    assert [d.text for d in read_input("jsonl", path)] == ["a", "b"]


def test_too_large_lines_are_skipped(tmp_path):
    path = tmp_path / "big.jsonl"
    big = json.dumps({"text": "y" * 5000})
    path.write_text("\n".join([json.dumps({"text": "small"}), big, json.dumps({"text": "end"})]))
    records = list(read_input("jsonl", path, SourceOptions(max_doc_bytes=500)))
    assert [d.text for d in docs(records)] == ["small", "end"]
    assert [(r.reason, r.doc_id) for r in rejected(records)] == [("too_large", f"{path}:2")]


def test_globs_and_suffixes(tmp_path):
    write_c4(tmp_path / "c4", c4_documents(4), files=2)
    (tmp_path / "c4" / "README.md").write_text("not data")
    found = resolve_inputs([str(tmp_path / "c4" / "c4-train.*.json.gz")])
    assert [f.name.rsplit("/", 1)[1] for f in found] == [
        "c4-train.00000-of-00002.json.gz",
        "c4-train.00001-of-00002.json.gz",
    ]
    assert all(f.size > 0 and f.mtime_ns > 0 for f in found)
    assert resolve_inputs([tmp_path / "c4"], input_suffixes("c4")) == found
    with pytest.raises(CorpusError, match="no file matches"):
        resolve_inputs([str(tmp_path / "*.parquet")])


def test_remote_inputs_use_streaming_storage(tmp_path, monkeypatch):
    from streaming.base import storage

    bucket = tmp_path / "bucket"
    write_c4(bucket / "c4", c4_documents(4), files=2)

    class FakeUploader:
        def list_objects(self, prefix):
            return sorted(str(p.relative_to(bucket)) for p in bucket.rglob("*") if p.is_file())

    real_get = storage.CloudUploader.get

    def fake_get(out, **kwargs):
        return FakeUploader() if out == "s3://bucket" else real_get(out, **kwargs)

    real_download = storage.CloudDownloader.direct_download

    def fake_download(url, dest, timeout):
        if not url.startswith("s3://"):
            return real_download(url, dest, timeout)
        src = bucket / url.removeprefix("s3://bucket/")
        with open(dest, "wb") as f:
            f.write(src.read_bytes())

    monkeypatch.setattr(storage.CloudUploader, "get", staticmethod(fake_get))
    monkeypatch.setattr(storage.CloudDownloader, "direct_download", staticmethod(fake_download))
    found = resolve_inputs(["s3://bucket/c4/c4-train.*.json.gz"])
    assert [f.name for f in found] == [
        "s3://bucket/c4/c4-train.00000-of-00002.json.gz",
        "s3://bucket/c4/c4-train.00001-of-00002.json.gz",
    ]
    assert found[0].remote and found[0] == InputFile(found[0].name)
    assert resolve_inputs(["s3://bucket/c4"], (".json.gz",)) == found
    with pytest.raises(CorpusError, match="no object matches"):
        resolve_inputs(["s3://bucket/nothing*"])

    from data_pipeline.shards.prepare import prepare

    manifest = prepare("c4", ["s3://bucket/c4/*.gz"], tmp_path / "out", seq_len=32, val_fraction=0)
    assert manifest["documents"]["kept"] == 4
    assert [i["name"] for i in manifest["inputs"]] == [f.name for f in found]
    assert all(i["size"] > 0 and len(i["sha256"]) == 64 for i in manifest["inputs"])
