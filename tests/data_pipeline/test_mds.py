"""TokenShardWriter writes what MDSWriter writes; merged sub-indexes read back through streaming."""

import json

import numpy as np
import pytest
from streaming import MDSWriter
from streaming.base.compression import decompress

from data_pipeline.shards.mds import TokenShardWriter, merge_split_index, token_dtype


@pytest.mark.parametrize("dtype, length", [(np.uint8, 16), (np.uint16, 300), (np.uint32, 5)])
def test_identical_to_mdswriter(tmp_path, dtype, length):
    rng = np.random.default_rng(0)
    samples = rng.integers(0, np.iinfo(dtype).max, (203, length)).astype(dtype)
    with MDSWriter(
        out=str(tmp_path / "ref"),
        columns={"tokens": f"ndarray:{np.dtype(dtype).name}"},
        compression=None,
        size_limit=1 << 11,
    ) as writer:
        for sample in samples:
            writer.write({"tokens": sample})
    ours = TokenShardWriter(tmp_path / "ours", length, dtype, compression=None, size_limit=1 << 11)
    for block in np.array_split(samples, [1, 50, 51, 180]):  # uneven batches
        ours.write(block)
    index = ours.finish()
    ref_files = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert ref_files == sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert len(ref_files) >= 3  # several shards
    for name in ref_files:
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "ours" / name).read_bytes()
    assert index["shards"] == json.loads((tmp_path / "ref" / "index.json").read_text())["shards"]


def test_zstd_levels_decompress_with_streaming(tmp_path):
    samples = np.tile(np.arange(64, dtype=np.uint8), (100, 1))
    for compression in ("zstd", "zstd:1", "zstd:7"):
        writer = TokenShardWriter(tmp_path / compression, 64, np.uint8, compression=compression)
        writer.write(samples)
        [shard] = writer.finish()["shards"]
        assert shard["compression"] == compression and shard["zip_data"]["bytes"] < 6400
        raw = decompress(
            compression, (tmp_path / compression / shard["zip_data"]["basename"]).read_bytes()
        )
        assert len(raw) == shard["raw_data"]["bytes"]


def test_merge_and_read_back(tmp_path):
    from data_pipeline.shards.manifest import iter_samples

    split = tmp_path / "data" / "train"
    parts = ["00000", "00001", "00002"]
    expected = []
    for i, part in enumerate(parts):
        writer = TokenShardWriter(split / part, 8, np.uint8, size_limit=200)
        block = (np.arange(8 * 10 * (i != 1), dtype=np.uint8).reshape(-1, 8) + i) % 250
        writer.write(block)
        writer.finish()
        expected += list(block)
    counts = [len(json.loads((split / p / "index.json").read_text())["shards"]) for p in parts]
    assert counts[1] == 0 and counts[0] > 1  # part 00001 is empty and skipped
    assert merge_split_index(split, parts) == sum(counts)
    index = json.loads((split / "index.json").read_text())
    assert index["shards"][0]["zip_data"]["basename"] == "00000/shard.00000.mds.zstd"
    got = list(iter_samples(tmp_path / "data", "train"))
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def test_token_dtype():
    assert token_dtype(256) == np.uint8 and token_dtype(257) == np.uint16
    assert token_dtype(1 << 16) == np.uint16 and token_dtype((1 << 16) + 1) == np.uint32
