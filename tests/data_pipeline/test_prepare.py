"""`prepare`: byte-exact round trip, same output for 1 and 2 workers, resume, bad input."""

import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data_pipeline.shards.convert as convert
from data_pipeline.shards.manifest import iter_samples, read_manifest
from data_pipeline.shards.packing import StrictError, assign_split
from data_pipeline.shards.prepare import prepare
from data_pipeline.sources.inputs import CorpusError
from data_pipeline.sources.kinds import read_input
from data_pipeline.sources.records import Document
from data_pipeline.tokenization.tokenizer import ByteTokenizer
from tests.conftest import REPO, clean_env, skip_unless_ci
from tests.data_pipeline.corpora import c4_documents, write_c4, write_dump

TOK = ByteTokenizer()
REAL_RUN_PART = convert.run_part
VOLATILE = {"created_utc", "wall_time_s", "workers", "throughput", "parts", "tool_version"}


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` but the manifest."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def stable(manifest: dict) -> dict:
    out = {k: v for k, v in manifest.items() if k not in VOLATILE}
    out["parts"] = [{k: v for k, v in p.items() if k != "wall_time_s"} for p in manifest["parts"]]
    return out


def expected_streams(source, inputs, val_fraction, sample_len, options=None):
    """What the shards must hold: per part, the cleaned documents + EOS, cut to whole samples."""
    streams = {"train": [], "val": []}
    for path in inputs:
        per_split = {"train": [], "val": []}
        for record in read_input(source, path, *([options] if options else [])):
            if isinstance(record, Document) and record.text.strip():
                split = assign_split(record.text, val_fraction)
                per_split[split].append(TOK.encode(record.text, add_eos=True))
        for split, parts in per_split.items():
            ids = np.concatenate(parts) if parts else np.empty(0, np.uint16)
            streams[split].append(ids[: ids.size // sample_len * sample_len])
    return {k: np.concatenate(v) for k, v in streams.items()}


@pytest.fixture(scope="module")
def c4_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("c4") / "en"
    write_c4(root, c4_documents(300), files=3)
    return root


def test_c4_round_trip_is_byte_exact(c4_dir, tmp_path):
    inputs = sorted(c4_dir.glob("*.json.gz"))
    manifest = prepare("c4", [c4_dir], tmp_path / "out", seq_len=64, val_fraction=0.2)
    expected = expected_streams("c4", inputs, 0.2, 64)
    for split in ("train", "val"):
        samples = list(iter_samples(tmp_path / "out", split))
        assert all(s.dtype == np.uint8 and s.shape == (64,) for s in samples)
        np.testing.assert_array_equal(np.concatenate(samples), expected[split])
        assert manifest["splits"][split]["samples"] == len(samples) > 10
    # Decoded shard text equals the source text, document by document.
    text = TOK.decode(
        np.concatenate(list(iter_samples(tmp_path / "out", "train"))), skip_special_tokens=False
    )
    assert text.split("[EOS]")[0] == next(
        d for d in c4_documents(300)[0::3] if assign_split(d, 0.2) == "train"
    )
    assert [i["name"] for i in manifest["inputs"]] == [str(p) for p in inputs]
    for entry, path in zip(manifest["inputs"], inputs):
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["documents"]["read"] == manifest["documents"]["kept"] == 300
    assert manifest["splits"]["train"]["sequences"] == manifest["splits"]["train"]["samples"]
    assert manifest["tokens"]["written"] == 64 * sum(
        s["samples"] for s in manifest["splits"].values()
    )
    assert len(manifest["parts"]) == 3 and manifest["columns"] == {"tokens": "ndarray:uint8"}
    assert not list(tmp_path.glob(".out.*"))  # the build directory became the output


def test_same_output_for_one_and_two_workers(c4_dir, tmp_path):
    dump = write_dump(tmp_path / "wiki" / "dump.xml.bz2")
    one = prepare("wikipedia", [dump], tmp_path / "w1", seq_len=32, workers=1,
                  val_fraction=0.3, options=_chunks(300))  # fmt: skip
    two = prepare("wikipedia", [dump], tmp_path / "w2", seq_len=32, workers=2,
                  val_fraction=0.3, options=_chunks(300))  # fmt: skip
    assert len(one["parts"]) > 2  # the dump was cut into several chunks
    assert tree(tmp_path / "w1") == tree(tmp_path / "w2")
    assert stable(one) == stable(two)
    c1 = prepare("c4", [c4_dir], tmp_path / "c1", seq_len=48, workers=1)
    c2 = prepare("c4", [c4_dir], tmp_path / "c2", seq_len=48, workers=2)
    assert tree(tmp_path / "c1") == tree(tmp_path / "c2") and stable(c1) == stable(c2)


def _chunks(n):
    from data_pipeline.sources.kinds import SourceOptions

    return SourceOptions(chunk_bytes=n)


def test_wikipedia_round_trip(tmp_path):
    dump = write_dump(tmp_path / "dump.xml")
    manifest = prepare("wikipedia", [dump], tmp_path / "out", seq_len=16, val_fraction=0.0,
                       options=_chunks(1))  # fmt: skip
    docs = [r.text for r in read_input("wikipedia", dump) if isinstance(r, Document)]
    streams = [TOK.encode(d, add_eos=True) for d in docs]  # one page per chunk: one part each
    expected = np.concatenate([s[: s.size // 16 * 16] for s in streams])
    got = np.concatenate(list(iter_samples(tmp_path / "out", "train")))
    np.testing.assert_array_equal(got, expected)
    assert manifest["documents"]["rejected_by_reason"] == {
        "no_prose": 1,
        "non_article": 2,
        "redirect": 1,
    }
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()


def _crash_after(n, calls):
    def run_part(task):
        calls.append(task.part)
        if len(calls) > n:
            raise RuntimeError("worker crashed")
        return REAL_RUN_PART(task)

    return run_part


def test_interrupted_build_resumes_and_skips_finished_parts(c4_dir, tmp_path, monkeypatch):
    reference = prepare("c4", [c4_dir], tmp_path / "ref", seq_len=40, val_fraction=0.1)
    out = tmp_path / "out"
    calls = []
    monkeypatch.setattr(convert, "run_part", _crash_after(2, calls))
    with pytest.raises(RuntimeError, match="worker crashed"):
        prepare("c4", [c4_dir], out, seq_len=40, val_fraction=0.1)
    build = tmp_path / ".out.build"
    assert not out.exists() and sorted(p.name for p in (build / "parts").iterdir()) == [
        "00000.json",
        "00001.json",
    ]
    assert not (build / "train" / "index.json").exists()  # no index before every part is done
    # A part that was being moved into place when the process died: redone, not trusted.
    (build / "train" / "00002").mkdir()
    (build / "train" / "00002" / "shard.00000.mds.zstd").write_bytes(b"partial")
    calls.clear()
    monkeypatch.setattr(convert, "run_part", _crash_after(99, calls))
    with pytest.raises(FileExistsError, match="other settings"):
        prepare("c4", [c4_dir], out, seq_len=41, val_fraction=0.1)
    resumed = prepare("c4", [c4_dir], out, seq_len=40, val_fraction=0.1)
    assert calls == ["00002"]  # finished inputs were skipped
    assert tree(out) == tree(tmp_path / "ref") and stable(resumed) == stable(reference)
    assert not build.exists()


def _hard_kill(c4_dir, out):
    real = convert.run_part

    def run_part(task):
        if task.part == "00001":
            os._exit(3)  # no cleanup at all
        return real(task)

    convert.run_part = run_part
    prepare("c4", [c4_dir], out, seq_len=40)


def test_hard_kill_then_resume(c4_dir, tmp_path):
    out = tmp_path / "out"
    proc = multiprocessing.get_context("fork").Process(target=_hard_kill, args=(c4_dir, out))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 3 and not out.exists()
    assert [p.name for p in (tmp_path / ".out.build" / "parts").iterdir()] == ["00000.json"]
    prepare("c4", [c4_dir], out, seq_len=40)
    prepare("c4", [c4_dir], tmp_path / "ref", seq_len=40)
    assert tree(out) == tree(tmp_path / "ref")


def bad_corpus(root: Path) -> Path:
    root.mkdir()
    good = [json.dumps({"text": f"good document {i} " * 5}) for i in range(6)]
    lines = [
        good[0],
        '{"text": "broken',  # line 2: malformed JSON
        "   ",  # blank line: skipped, not a document
        json.dumps({"text": "   \n\t"}),  # line 4: whitespace-only document
        json.dumps({"text": "z" * 3000}),  # line 5: enormous document
        json.dumps({"body": "no text"}),  # line 6
        good[1],
    ]
    (root / "a.jsonl").write_bytes("\n".join(lines).encode() + b'\n{"text": "\xff\xfe"}\n')
    lines_b = [json.dumps({"text": t}) for t in c4_documents(200, seed=5)]
    data = gzip.compress(("\n".join(lines_b) + "\n").encode())
    (root / "b.jsonl.gz").write_bytes(data[: len(data) // 2])  # truncated archive
    return root


def test_bad_input_is_counted_and_the_rest_converted(tmp_path):
    root = bad_corpus(tmp_path / "bad")
    manifest = prepare("jsonl", [root], tmp_path / "out", seq_len=16, val_fraction=0,
                       options=_max_doc(2500))  # fmt: skip
    docs = manifest["documents"]
    assert docs["rejected_by_reason"] == {
        "empty": 1,
        "invalid_json": 1,
        "invalid_utf8": 1,
        "missing_field": 1,
        "too_large": 1,
        "truncated": 1,
    }
    a, b = root / "a.jsonl", root / "b.jsonl.gz"
    examples = docs["examples_by_reason"]
    assert examples["invalid_json"][0].startswith(f"{a}:2: invalid JSON")
    assert examples["empty"][0].startswith(f"{a}:4:")
    assert examples["too_large"][0].startswith(f"{a}:5:")
    assert examples["missing_field"][0].startswith(f"{a}:6:")
    assert examples["invalid_utf8"][0].startswith(f"{a}:8:")
    assert examples["truncated"][0].startswith(f"{b}@")
    assert 2 + 50 < docs["kept"] < 2 + 200  # the rest was converted, b up to its cut


def _max_doc(n):
    from data_pipeline.sources.kinds import SourceOptions

    return SourceOptions(max_doc_bytes=n)


def test_strict_fails_naming_file_and_line(tmp_path):
    root = bad_corpus(tmp_path / "bad")
    with pytest.raises(StrictError, match=rf"{root / 'a.jsonl'}:2: invalid JSON"):
        prepare("jsonl", [root / "a.jsonl"], tmp_path / "out", seq_len=16, strict=True)
    with pytest.raises(StrictError, match="truncated"):
        prepare("jsonl", [root / "b.jsonl.gz"], tmp_path / "out2", seq_len=16, strict=True)
    # Redirects and non-article pages are filtering, not damage: strict still converts dumps.
    dump = write_dump(tmp_path / "dump.xml")
    manifest = prepare("wikipedia", [dump], tmp_path / "wiki", seq_len=16, strict=True)
    assert manifest["documents"]["rejected"] == 4 and manifest["strict"]


def test_unreadable_input_is_an_error_naming_it(tmp_path):
    (tmp_path / "fake.jsonl.gz").write_bytes(b"this is not gzip data")
    with pytest.raises(CorpusError, match="fake.jsonl.gz"):
        prepare("jsonl", [tmp_path / "fake.jsonl.gz"], tmp_path / "out", seq_len=16)
    with pytest.raises(CorpusError, match="input not found: .*missing.jsonl"):
        prepare("jsonl", [tmp_path / "missing.jsonl"], tmp_path / "out", seq_len=16)
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data
def test_cut_dump_keeps_every_complete_article(shared_data, tmp_path):
    """`prepare` of a dump cut inside its last bz2 block keeps every article the decompressor
    released before the cut and counts one truncated page and one cut (workers, chunks)."""
    import bz2

    from data_pipeline.sources.kinds import SourceOptions
    from tests.data_pipeline.corpora import compress_in_blocks, decoded_by_prefix

    xml = bz2.decompress(
        (shared_data / "wikipedia_xml" / "enwiki-table-markup.xml.bz2").read_bytes()
    )
    data = compress_in_blocks(xml, ".bz2")
    cut = len(data) - 2000
    decoded, lengths = decoded_by_prefix(data, ".bz2")
    complete = decoded[: lengths[cut]].count(b"</page>")
    assert 0 < complete < xml.count(b"</page>")
    dump = tmp_path / "enwiki-cut.xml.bz2"
    dump.write_bytes(data[:cut])
    options = SourceOptions(chunk_bytes=30_000)
    manifest = prepare(
        "wikipedia", [dump], tmp_path / "out", seq_len=16, options=options, workers=2
    )
    docs = manifest["documents"]
    assert docs["rejected_by_reason"] == {"truncated": 1, "truncated_page": 1}
    assert docs["kept"] == complete  # every page of the real sample is an article


def _prepare_unprivileged(args: list[str]) -> subprocess.CompletedProcess:
    """`perceiver data prepare ARGS` in a process that file permissions apply to (root loses its
    capabilities to bypass them), so that a directory of mode 000 really cannot be listed."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            skip_unless_ci("running as root without setpriv: permissions cannot be tested")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    command = [*prefix, sys.executable, "-m", "perceiver_cli", "data", "prepare", *args]
    return subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True)


@pytest.mark.shared_data
def test_unreadable_directory_and_empty_gzip_are_counted_and_fail_strict(shared_data, tmp_path):
    root = tmp_path / "c4"
    (root / "en").mkdir(parents=True)
    shutil.copy(shared_data / "c4" / "c4-sample.01.json.gz", root / "en")
    empty = root / "en" / "c4-sample.02.json.gz"
    empty.write_bytes(b"")  # an interrupted download
    locked = root / "locked"
    locked.mkdir()
    shutil.copy(shared_data / "c4" / "c4-sample.03.json.gz", locked)
    locked.chmod(0)
    try:
        args = ["--source", "c4", "--input", str(root), "--seq-len", "16"]
        proc = _prepare_unprivileged([*args, "--output", str(tmp_path / "out")])
        assert proc.returncode == 0, proc.stderr
        docs = read_manifest(tmp_path / "out")["documents"]
        assert docs["rejected_by_reason"] == {"truncated": 1, "unreadable_directory": 1}
        [cut] = docs["examples_by_reason"]["truncated"]
        assert cut.startswith(f"{empty}@0:") and "empty file" in cut
        [skipped] = docs["examples_by_reason"]["unreadable_directory"]
        assert skipped.startswith(f"{locked}: cannot list directory: Permission denied")
        assert f"{locked}: cannot list directory" in proc.stderr  # warned while running
        assert docs["kept"] == len(
            gzip.decompress((root / "en" / "c4-sample.01.json.gz").read_bytes()).splitlines()
        )

        proc = _prepare_unprivileged([*args, "--output", str(tmp_path / "strict"), "--strict"])
        assert proc.returncode != 0 and not (tmp_path / "strict").exists()
        assert f"{locked}: cannot list directory" in proc.stderr and "--strict" in proc.stderr
    finally:
        locked.chmod(0o755)
    proc = _prepare_unprivileged([*args, "--output", str(tmp_path / "strict"), "--strict"])
    assert proc.returncode != 0 and not (tmp_path / "strict").exists()
    assert f"{empty}@0: input truncated" in proc.stderr and "--strict" in proc.stderr


@pytest.mark.shared_data
def test_real_samples(shared_data, tmp_path):
    c4 = prepare("c4", [shared_data / "c4"], tmp_path / "c4", seq_len=128, val_fraction=0.1)
    assert c4["documents"]["kept"] == 30 and c4["documents"]["rejected"] == 0
    wiki = prepare("wikipedia", [shared_data / "wikipedia_xml"], tmp_path / "wiki", seq_len=128,
                   val_fraction=0.1)  # fmt: skip
    assert wiki["documents"]["kept"] == 5 and wiki["splits"]["train"]["samples"] > 100
    assert read_manifest(tmp_path / "wiki")["inputs"][0]["size"] == 64107
