"""The shard contract through its one writer (`prepare`, via `write_documents`): MDS output read
back, manifest, refusing to clobber, crash safety; the one validator (`check_shards`)."""

import json
import multiprocessing
import os

import numpy as np
import pytest

import data_pipeline.shards.convert as convert
from data_pipeline.shards.manifest import (
    check_shards,
    is_complete,
    iter_samples,
    read_manifest,
    write_manifest,
)
from data_pipeline.shards.prepare import prepare
from data_pipeline.sources.records import Document
from data_pipeline.tokenization.tokenizer import ByteTokenizer
from tests.data_pipeline.conftest import write_documents


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
    write_documents(numbered.documents(20), out, numbered.sample_len, 0.25, size_limit=256)
    samples = [numbered.number(s) for s in iter_samples(out, "train")]
    assert len(samples) == 20 and samples == sorted(samples)
    assert [numbered.number(s) for s in iter_samples(out, "train", limit=7)] == samples[:7]
    assert not list(out.glob("*/*.mds"))  # nothing decompressed onto disk


def test_rejections_are_counted_with_reasons(tmp_path):
    source = tmp_path / "f.jsonl"
    source.write_text(json.dumps({"text": "x" * 40}) + '\n{"text": "   "}\n{"text": broken\n')
    manifest = prepare("jsonl", [source], tmp_path / "out", seq_len=8, val_fraction=0.0)
    docs = manifest["documents"]
    assert (docs["read"], docs["kept"], docs["rejected"]) == (3, 1, 2)
    assert docs["rejected_by_reason"] == {"empty": 1, "invalid_json": 1}
    assert any(e.startswith(f"{source}:3: invalid JSON") for e in docs["rejected_examples"])
    assert manifest["splits"]["val"]["samples"] == 0
    assert manifest["tokens"]["dropped"] == 41 - 40


def test_refuses_to_clobber(tmp_path):
    out = tmp_path / "out"
    docs = [Document("a" * 30, "mem", "a")]
    write_documents(docs, out, 8)
    with pytest.raises(FileExistsError, match="already holds complete shards"):
        write_documents(docs, out, 8)
    manifest = write_documents([Document("b" * 50, "mem", "b")], out, 8, overwrite=True)
    assert manifest["splits"]["train"]["samples"] == 6
    assert read_manifest(out)["splits"]["train"]["samples"] == 6
    assert not leftovers(out)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a shard directory"):
            write_documents(docs, foreign, 8, overwrite=overwrite)
    assert (foreign / "precious.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    write_documents(docs, empty, 8)
    assert is_complete(empty)


def failing_reader(n_good, crash):
    """`read_input` that calls `crash()` when asked for document `n_good` (in-process parts)."""
    real = convert.read_input

    def read_input(*args, **kwargs):
        for i, record in enumerate(real(*args, **kwargs)):
            if i == n_good:
                crash()
            yield record

    return read_input


def reader_crashed():
    raise RuntimeError("reader crashed")


def test_exception_never_publishes_and_keeps_old_build(tmp_path, numbered, monkeypatch):
    out, length, docs = tmp_path / "out", numbered.sample_len, numbered.documents()
    build = tmp_path / ".out.build"  # kept for a resume, never published
    with monkeypatch.context() as patch:
        patch.setattr(convert, "read_input", failing_reader(30, reader_crashed))
        with pytest.raises(RuntimeError, match="reader crashed"):
            write_documents(docs, out, length, 0.25)
    assert not out.exists() and leftovers(out) == [build.name]
    assert not (build / "manifest.json").exists()

    write_documents(numbered.documents(8), out, length, 0.25)
    before = (out / "manifest.json").read_text()
    samples_before = [numbered.number(s) for s in read_split(out, "train")]
    assert len(samples_before) == 8 and not leftovers(out)
    with monkeypatch.context() as patch:
        patch.setattr(convert, "read_input", failing_reader(30, reader_crashed))
        with pytest.raises(RuntimeError, match="reader crashed"):
            write_documents(docs, out, length, 0.25, overwrite=True)
    assert (out / "manifest.json").read_text() == before
    assert [numbered.number(s) for s in read_split(out, "train")] == samples_before
    assert leftovers(out) == [build.name] and not (build / "manifest.json").exists()


def _killed_writer(out, docs, length):
    convert.read_input = failing_reader(40, lambda: os._exit(3))  # no exception, no cleanup
    write_documents(docs, out, length, 0.25, size_limit=256)


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
    with caplog.at_level("INFO"):  # same settings: the unfinished build is resumed
        write_documents(numbered.documents(8), out, length, 0.25, size_limit=256)
    assert tmp in caplog.text  # "resuming the unfinished build in .../.out.build"
    assert is_complete(out) and not leftovers(out)


def test_no_complete_sample_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no complete training sample"):
        write_documents([Document("short", "mem", "1")], tmp_path / "out", 64)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")


def test_check_and_read_manifest_errors(numbered, tmp_path):
    root, length = numbered.root, numbered.sample_len
    assert check_shards(root, seq_len=length, objective="mlm", vocab_size=262)
    assert check_shards(root, seq_len=length - 1, objective="ar")
    with pytest.raises(ValueError, match="needs 17"):
        check_shards(root, seq_len=length, objective="ar")
    with pytest.raises(ValueError, match="vocab_size=100"):
        check_shards(root, seq_len=length, objective="mlm", vocab_size=100)
    with pytest.raises(ValueError, match="not video shards .*'tokens'.*prepare-video"):
        check_shards(root, kind="video")
    with pytest.raises(FileNotFoundError, match="not a complete shard directory"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{\n  broken")
    with pytest.raises(ValueError, match="manifest.json:2"):
        read_manifest(tmp_path)


def test_write_manifest_is_atomic_and_read_back(numbered, tmp_path):
    manifest = read_manifest(numbered.root)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary left
