"""write_shards: MDS output read back, manifest, refusing to clobber, crash safety."""

import json
import multiprocessing
import os

import numpy as np
import pytest

from data_pipeline.shards.manifest import (
    check_manifest,
    is_complete,
    iter_samples,
    read_manifest,
    write_shards,
)
from data_pipeline.sources.records import Document, Rejected
from data_pipeline.tokenization.tokenizer import ByteTokenizer


def read_split(root, split):
    return list(iter_samples(root, split))


def leftovers(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_round_trip_and_manifest(numbered):
    root, expected, length = numbered.root, numbered.expected, numbered.sample_len
    for split in ("train", "val"):
        samples = read_split(root, split)
        # Byte ids of UTF-8 text are at most 0xF4 + 6 = 250: stored as uint8 (smallest that fits).
        assert all(s.dtype == np.uint8 and s.shape == (length,) for s in samples)
        assert all(s[-1] == ByteTokenizer.eos_id for s in samples)
        assert [numbered.number(s) for s in samples] == expected[split]
    index = json.loads((root / "train" / "index.json").read_text())
    assert index["shards"][0]["compression"] == "zstd"
    assert index["shards"][0]["column_encodings"] == ["ndarray:uint8"]
    assert len(index["shards"]) > 1  # size_limit=512 forces several shards

    manifest = read_manifest(root)
    assert manifest["tokenizer"]["name"] == "byte" and manifest["tokenizer"]["vocab_size"] == 262
    assert manifest["sample_len"] == length
    assert manifest["splits"]["train"]["samples"] == len(expected["train"]) == 64
    assert manifest["splits"]["val"]["samples"] == len(expected["val"])
    assert manifest["splits"]["train"]["shards"] == len(index["shards"])
    assert manifest["documents"]["read"] == manifest["documents"]["kept"]
    assert manifest["tokens"]["written"] == length * sum(map(len, expected.values()))
    assert manifest["tokens"]["dropped"] == 0
    assert manifest["bytes_in"] == (length - 1) * manifest["documents"]["kept"]
    assert manifest["columns"] == {"tokens": "ndarray:uint8"}
    assert manifest["wall_time_s"] >= 0 and manifest["tool_version"]
    assert is_complete(root) and not leftovers(root)
    assert len(list(iter_samples(root, "train", limit=5))) == 5


def test_iter_samples_reads_in_memory(tmp_path, numbered):
    out = tmp_path / "out"
    write_shards(
        numbered.documents(20), out, ByteTokenizer(), numbered.sample_len, 0.25, size_limit=256
    )
    samples = [numbered.number(s) for s in iter_samples(out, "train")]
    assert len(samples) == 20 and samples == sorted(samples)
    assert [numbered.number(s) for s in iter_samples(out, "train", limit=7)] == samples[:7]
    assert not list(out.glob("*/*.mds"))  # nothing decompressed onto disk


def test_rejections_are_counted_with_reasons(tmp_path):
    records = [
        Document("x" * 40, "mem", "1"),
        Document("   ", "mem", "2"),
        Rejected("f.jsonl", "f.jsonl:3", "invalid_json", "f.jsonl:3: invalid JSON"),
    ]
    manifest = write_shards(records, tmp_path / "out", ByteTokenizer(), 8, 0.0)
    docs = manifest["documents"]
    assert (docs["read"], docs["kept"], docs["rejected"]) == (3, 1, 2)
    assert docs["rejected_by_reason"] == {"empty": 1, "invalid_json": 1}
    assert "f.jsonl:3: invalid JSON" in docs["rejected_examples"]
    assert manifest["splits"]["val"]["samples"] == 0
    assert manifest["tokens"]["dropped"] == 41 - 40


def test_refuses_to_clobber(tmp_path):
    out = tmp_path / "out"
    docs = [Document("a" * 30, "mem", "a")]
    write_shards(docs, out, ByteTokenizer(), 8, 0.0)
    with pytest.raises(FileExistsError, match="already holds complete shards"):
        write_shards(docs, out, ByteTokenizer(), 8, 0.0)
    manifest = write_shards(
        [Document("b" * 50, "mem", "b")], out, ByteTokenizer(), 8, 0.0, overwrite=True
    )
    assert manifest["splits"]["train"]["samples"] == 6
    assert read_manifest(out)["splits"]["train"]["samples"] == 6
    assert not leftovers(out)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a shard directory"):
            write_shards(docs, foreign, ByteTokenizer(), 8, 0.0, overwrite=overwrite)
    assert (foreign / "precious.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_shards(docs, empty, ByteTokenizer(), 8, 0.0)
    assert is_complete(empty)


def failing_documents(documents, n_good):
    for i, doc in enumerate(documents):
        if i == n_good:
            raise RuntimeError("reader crashed")
        yield doc


def test_exception_leaves_nothing_and_keeps_old_build(tmp_path, numbered):
    out, length, docs = tmp_path / "out", numbered.sample_len, numbered.documents()
    with pytest.raises(RuntimeError, match="reader crashed"):
        write_shards(failing_documents(docs, 30), out, ByteTokenizer(), length, 0.25)
    assert not out.exists() and not leftovers(out)

    write_shards(numbered.documents(8), out, ByteTokenizer(), length, 0.25)
    before = (out / "manifest.json").read_text()
    samples_before = [numbered.number(s) for s in read_split(out, "train")]
    assert len(samples_before) == 8
    with pytest.raises(RuntimeError, match="reader crashed"):
        write_shards(
            failing_documents(docs, 30), out, ByteTokenizer(), length, 0.25, overwrite=True
        )
    assert (out / "manifest.json").read_text() == before
    assert [numbered.number(s) for s in read_split(out, "train")] == samples_before
    assert not leftovers(out)


def _killed_writer(out, docs, length):
    def documents():
        for i, doc in enumerate(docs):
            if i == 40:
                os._exit(3)  # a hard crash: no exception handling, no cleanup
            yield doc

    write_shards(documents(), out, ByteTokenizer(), length, 0.25, size_limit=256)


def test_hard_kill_never_publishes(tmp_path, caplog, numbered):
    out, length = tmp_path / "out", numbered.sample_len
    args = (out, numbered.documents(), length)
    proc = multiprocessing.get_context("fork").Process(target=_killed_writer, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    assert not out.exists()
    [tmp] = leftovers(out)
    assert not (tmp_path / tmp / "manifest.json").exists()
    with caplog.at_level("WARNING"):
        write_shards(numbered.documents(8), out, ByteTokenizer(), length, 0.25)
    assert tmp in caplog.text
    assert is_complete(out)


def test_no_complete_sample_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no complete training sample"):
        write_shards([Document("short", "mem", "1")], tmp_path / "out", ByteTokenizer(), 64, 0.0)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


def test_check_and_read_manifest_errors(numbered, tmp_path):
    root, length = numbered.root, numbered.sample_len
    assert check_manifest(root, seq_len=length, objective="mlm", vocab_size=262)
    assert check_manifest(root, seq_len=length - 1, objective="ar")
    with pytest.raises(ValueError, match="needs 17"):
        check_manifest(root, seq_len=length, objective="ar")
    with pytest.raises(ValueError, match="vocab_size=100"):
        check_manifest(root, seq_len=length, objective="mlm", vocab_size=100)
    with pytest.raises(FileNotFoundError, match="not a complete shard directory"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{\n  broken")
    with pytest.raises(ValueError, match="manifest.json:2"):
        read_manifest(tmp_path)
