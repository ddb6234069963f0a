"""A vectorised MDS writer for fixed-length token samples, and index merging.

`TokenShardWriter` writes the files `streaming.MDSWriter(columns={"tokens": "ndarray:<dtype>"},
compression=..., size_limit=...)` writes for the same samples (same shard cuts, same
uncompressed bytes, same `index.json`; a test compares them), but encodes a whole batch of
samples with a few NumPy operations instead of a Python call per sample (MDSWriter spends ~40 us
per sample, more than compressing it), and compresses zstd with `zstandard`, 2x faster than the
binding streaming uses at level 1 (any zstd decoder reads the result).

MDS layout of one shard (what `encode_joint_shard` produces): uint32 sample count, uint32
offsets[count + 1] (from the file start), the JSON config, then the samples. A sample of one
dynamically shaped `ndarray:<dtype>` column is: uint32 size of the column data, one byte
`ndim << 2 | shape dtype code`, the shape, then the values.

`merge_split_index` joins the per-part sub-indexes of a split into its `index.json` with
streaming's `merge_index` (shard paths become `part/shard...`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

try:
    import zstandard
except ImportError:  # pragma: no cover - zstandard is a dependency
    zstandard = None

__all__ = ["TokenShardWriter", "merge_split_index", "parse_size", "token_dtype"]

_SHAPE_CODES = ((1 << 8, np.uint8, 0), (1 << 16, np.uint16, 1), (1 << 32, np.uint32, 2))
_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def parse_size(size: int | str) -> int:
    """Bytes of a size limit such as `64mb` (binary units, as mosaicml-streaming reads them).

    Importing streaming costs seconds (it imports torch), which conversion workers avoid.

    Example:
        >>> parse_size("64mb"), parse_size(1000), parse_size("2kb")
        (67108864, 1000, 2048)
    """
    if isinstance(size, int):
        return size
    text = size.strip().lower()
    for unit in ("tb", "gb", "mb", "kb", "b"):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * _UNITS[unit])
    return int(text)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids `0 .. vocab_size - 1`.

    Example:
        >>> token_dtype(262), token_dtype(256), token_dtype(100_000)
        (dtype('uint16'), dtype('uint8'), dtype('uint32'))
    """
    for limit, dtype, _ in _SHAPE_CODES:
        if vocab_size <= limit:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


class TokenShardWriter:
    """Writes `[n, sample_len]` token batches as MDS shards of one column `tokens`.

    Args:
        out_dir: Directory for the shards and `index.json` (created; must be empty).
        sample_len: Tokens per sample.
        dtype: Token dtype (see `token_dtype`).
        compression: Streaming compression name (e.g. `"zstd"`, `"zstd:7"`) or None.
        size_limit: Shard size limit before compression (bytes or e.g. `"64mb"`).

    Example::

        writer = TokenShardWriter(tmp / "train", 2048, np.uint16)
        writer.write(samples)  # uint16 [n, 2048]
        index = writer.finish()  # writes index.json
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        sample_len: int,
        dtype: np.dtype | type,
        *,
        compression: str | None = "zstd",
        size_limit: int | str = "64mb",
    ) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if any(self.out.iterdir()):
            raise FileExistsError(f"{self.out} is not empty")
        self.sample_len = sample_len
        self.dtype = np.dtype(dtype)
        self.compression = compression or None
        self.size_limit = parse_size(size_limit) if size_limit else None
        self.column = f"ndarray:{self.dtype.name}"
        config = {
            "column_encodings": [self.column],
            "column_names": ["tokens"],
            "column_sizes": [None],
            "compression": self.compression,
            "format": "mds",
            "hashes": [],
            "size_limit": self.size_limit,
            "version": 2,
        }
        self._config = config
        self._config_data = json.dumps(config, sort_keys=True).encode("utf-8")
        limit, shape_dtype, code = next(c for c in _SHAPE_CODES if sample_len < c[0])
        del limit
        values = sample_len * self.dtype.itemsize
        column_size = 1 + np.dtype(shape_dtype).itemsize + values
        self._sample_head = (
            np.array([column_size], np.uint32).tobytes()
            + bytes([(1 << 2) | code])
            + np.array([sample_len], shape_dtype).tobytes()
        )
        self.sample_bytes = len(self._sample_head) + values
        shard_overhead = 4 + 4 + len(self._config_data)
        per_sample = self.sample_bytes + 4
        if self.size_limit:
            self._per_shard = max(1, (self.size_limit - shard_overhead) // per_sample)
            if shard_overhead + per_sample > self.size_limit:
                self._per_shard = 1
        else:
            self._per_shard = 1 << 62
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self.shards: list[dict[str, Any]] = []
        self.samples = 0
        self._zstd = None

    def write(self, samples: np.ndarray) -> None:
        """Buffers samples and writes every shard that is full.

        Args:
            samples: `[n, sample_len]` array of this writer's dtype (or one sample `[sample_len]`).

        Raises:
            ValueError: For a wrong shape or dtype.
        """
        samples = np.atleast_2d(samples)
        if samples.shape[1:] != (self.sample_len,) or samples.dtype != self.dtype:
            raise ValueError(
                f"expected {self.dtype.name} samples of {self.sample_len} tokens, got "
                f"{samples.dtype.name} {samples.shape}"
            )
        if not samples.shape[0]:
            return
        self._pending.append(samples)
        self._pending_rows += samples.shape[0]
        self.samples += samples.shape[0]
        while self._pending_rows > self._per_shard:
            self._flush(self._per_shard)

    def _take(self, rows: int) -> np.ndarray:
        batch = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        head, rest = batch[:rows], batch[rows:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_rows = rest.shape[0]
        return head

    def _flush(self, rows: int) -> None:
        samples = self._take(rows)
        n = samples.shape[0]
        head_len = len(self._sample_head)
        body = np.empty((n, self.sample_bytes), np.uint8)
        body[:, :head_len] = np.frombuffer(self._sample_head, np.uint8)
        body[:, head_len:] = (
            samples.astype(self.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(n, -1)
        )
        start = 4 + 4 * (n + 1) + len(self._config_data)
        offsets = start + self.sample_bytes * np.arange(n + 1, dtype=np.int64)
        raw = b"".join(
            (
                np.uint32(n).tobytes(),
                offsets.astype(np.uint32).tobytes(),
                self._config_data,
                body.tobytes(),
            )
        )
        index = len(self.shards)
        raw_name = f"shard.{index:05}.mds"
        raw_info = {"basename": raw_name, "bytes": len(raw), "hashes": {}}
        zip_info = None
        data = raw
        if self.compression:
            data = self._compress(raw)
            ext = self.compression.partition(":")[0]  # streaming's extension: the family name
            zip_info = {"basename": f"{raw_name}.{ext}", "bytes": len(data), "hashes": {}}
        (self.out / (zip_info or raw_info)["basename"]).write_bytes(data)
        self.shards.append(
            {"samples": n, "raw_data": raw_info, "zip_data": zip_info, **self._config}
        )

    def _compress(self, raw: bytes) -> bytes:
        """Streaming's compression; zstd through `zstandard` (2x faster than streaming's `zstd`
        binding at level 1, same format: streaming decompresses it)."""
        family, _, level = self.compression.partition(":")
        if family == "zstd" and zstandard is not None:
            if self._zstd is None:
                self._zstd = zstandard.ZstdCompressor(level=int(level or 3))
            return self._zstd.compress(raw)
        from streaming.base.compression import compress

        return compress(self.compression, raw)

    def finish(self) -> dict[str, Any]:
        """Writes the last shard and `index.json`; returns the index."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        index = {"version": 2, "shards": self.shards}
        with open(self.out / "index.json", "w") as f:
            json.dump(index, f, sort_keys=True)
        return index


def merge_split_index(split_dir: str | os.PathLike[str], parts: list[str]) -> int:
    """Writes `split_dir/index.json` joining the sub-indexes `split_dir/<part>/index.json`.

    Args:
        split_dir: A split directory (`DIR/train`).
        parts: Part directory names in order; parts without an index or samples are skipped.

    Returns:
        The number of shards in the merged index.
    """
    from streaming.base.util import merge_index

    root = Path(split_dir)
    indexes = []
    for part in parts:
        path = root / part / "index.json"
        if path.is_file() and json.loads(path.read_text())["shards"]:
            indexes.append(str(path))
    if not indexes:
        with open(root / "index.json", "w") as f:
            json.dump({"version": 2, "shards": []}, f)
        return 0
    quiet = logging.getLogger()  # merge_index announces its temporary folder as a warning
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        merge_index(indexes, str(root), keep_local=True)
    finally:
        quiet.setLevel(level)
    return len(json.loads((root / "index.json").read_text())["shards"])
