"""Shards: packed samples -> MDS datasets `DIR/{train,val}/` + `DIR/manifest.json`.

Layout (the "Shards" contract of docs/design.md):

    DIR/manifest.json        what was built, from what, with which tokenizer; counts and sizes
    DIR/train/index.json     MDS index (MDSWriter, zstd), column "tokens": ndarray:uint16
    DIR/train/shard.*.mds.zstd
    DIR/val/...

Crash safety: everything is written into a hidden temporary sibling (`.DIR.tmp-XXXX`) and renamed
onto `DIR` only once both splits and the manifest are complete and flushed to disk. A crash leaves
either the previous `DIR` or no `DIR`, never a half-written one; `manifest.json` is the marker of
a complete build. An exception removes the temporary directory; a hard kill leaves it behind (it
is never mistaken for data, and the next build warns about it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.shards.mds import TokenShardWriter
from data_pipeline.shards.packing import SPLITS, DocumentPacker, PackStats, sample_len_for
from data_pipeline.shards.remote import check_location, fetch, is_url, join, manifest_bytes
from data_pipeline.sources.records import DEFAULT_MAX_DOC_BYTES, Record
from data_pipeline.tokenization.tokenizer import Tokenizer, shard_dtype

__all__ = [
    "COLUMNS",
    "MANIFEST_NAME",
    "check_manifest",
    "is_complete",
    "iter_samples",
    "prepare_corpus",
    "prepare_demo_corpus",
    "read_manifest",
    "write_shards",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
COLUMNS = {"tokens": "ndarray:uint16"}
COMPRESSION = "zstd"
FORMAT_VERSION = 1
DEFAULT_SIZE_LIMIT = "64mb"
PROGRESS_EVERY_S = 30.0


def _tool_version() -> str:
    try:
        return importlib_metadata.version("perceiver-pretrain")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown (not installed)"


def is_complete(data_dir: str | os.PathLike[str]) -> bool:
    """Whether the local `data_dir` holds a finished build (its manifest exists)."""
    return (Path(check_location(data_dir)) / MANIFEST_NAME).is_file()


def read_manifest(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads `data_dir/manifest.json`.

    Args:
        data_dir: A directory written by `write_shards`, or the URL of one (`s3://...`).

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: If there is no manifest (not a shard directory, or an unfinished one),
            or no such bucket.
        PermissionError, ConnectionError: For a URL without access (see `remote`).
        ValueError: If the manifest is not valid JSON or of an unknown format version.
    """
    data_dir = check_location(data_dir)
    path = join(data_dir, MANIFEST_NAME)
    if is_url(data_dir):
        text = manifest_bytes(data_dir).decode("utf-8")
    elif not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a complete shard directory "
            "(build one with `perceiver data prepare`)"
        )
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    return manifest


def check_manifest(
    data_dir: str | os.PathLike[str],
    *,
    seq_len: int,
    objective: str,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """Reads the manifest and checks the shards fit a model; what the trainer calls at start-up.

    Args:
        data_dir: The shard directory.
        seq_len: The model's input length.
        objective: `"mlm"` or `"ar"` (AR samples hold `seq_len + 1` tokens).
        vocab_size: The model's vocabulary size, checked if given.

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: If the directory is not a complete shard directory.
        ValueError: If the sample length or vocabulary size do not match, naming both values.
    """
    manifest = read_manifest(data_dir)
    expected = sample_len_for(objective, seq_len)
    if manifest["sample_len"] != expected:
        raise ValueError(
            f"{data_dir}: samples hold {manifest['sample_len']} tokens but {objective} with "
            f"seq_len={seq_len} needs {expected}; re-run `perceiver data prepare --seq-len "
            f"{seq_len} --objective {objective}`"
        )
    shard_vocab = manifest["tokenizer"]["vocab_size"]
    if vocab_size is not None and shard_vocab > vocab_size:
        raise ValueError(
            f"{data_dir}: tokenizer {manifest['tokenizer']['name']!r} has {shard_vocab} ids, "
            f"more than the model's vocab_size={vocab_size}"
        )
    return manifest


def iter_stored_samples(
    data_dir: str | os.PathLike[str], split: str, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Reads the samples (all columns) of one split in storage order, in memory, without
    touching the files.

    (`StreamingDataset` reading a local directory writes decompressed shard copies next to the
    compressed ones; this reader does not, so it is safe on read-only or shared directories.)

    Args:
        data_dir: A shard directory (text or video), or its URL (the shards read are
            downloaded once into a temporary mirror, `remote.fetch`).
        split: `"train"` or `"val"`.
        limit: Stop after this many samples.

    Yields:
        Samples as stored, one dict of columns each.
    """
    from streaming.base.compression import decompress
    from streaming.base.format import reader_from_json

    index = json.loads(fetch(data_dir, f"{split}/index.json").read_text(encoding="utf-8"))
    count = 0
    for info in index["shards"]:
        if limit is not None and count >= limit:
            return
        reader = reader_from_json(os.fspath(data_dir), split, info)
        zip_info = info.get("zip_data")
        if zip_info:
            stored = fetch(data_dir, f"{split}/{zip_info['basename']}").read_bytes()
            raw = decompress(info["compression"], stored)
        else:
            raw = fetch(data_dir, f"{split}/{info['raw_data']['basename']}").read_bytes()
        # MDS layout: uint32 sample count, uint32 offsets[count + 1], then the samples.
        offsets = np.frombuffer(raw, np.uint32, count=info["samples"] + 1, offset=4)
        for begin, end in zip(offsets[:-1], offsets[1:]):
            if limit is not None and count >= limit:
                return
            yield reader.decode_sample(raw[begin:end])
            count += 1


def iter_samples(
    data_dir: str | os.PathLike[str], split: str, limit: int | None = None
) -> Iterator[np.ndarray]:
    """The token arrays of one split in storage order (see `iter_stored_samples`).

    Yields:
        Arrays of `sample_len` ids.
    """
    for sample in iter_stored_samples(data_dir, split, limit):
        yield sample["tokens"]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _fsync_tree(path: Path) -> None:
    """Flushes every file and directory under `path` to disk (so the rename publishes data)."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if is_complete(out):
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds complete shards ({MANIFEST_NAME}); pass overwrite=True "
                "(--overwrite) to replace them"
            )
    elif any(out.iterdir()):  # never delete what we did not write, even with overwrite
        raise FileExistsError(
            f"{out} exists, is not empty and is not a shard directory (no {MANIFEST_NAME}); "
            "refusing to replace it: choose another output or delete it yourself"
        )


def _publish(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` onto `out`; an old `out` is moved aside first, then deleted."""
    old: Path | None = None
    if out.exists():
        if any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        else:
            out.rmdir()
    os.rename(tmp, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_shards(
    documents: Iterable[Record],
    out_dir: str | os.PathLike[str],
    tokenizer: Tokenizer,
    sample_len: int,
    val_fraction: float = 0.01,
    *,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Packs documents into `out_dir/{train,val}` MDS shards and writes `out_dir/manifest.json`.

    Args:
        documents: Reader output (`Document` and `Rejected` records); consumed once.
        out_dir: Destination; created atomically (see the module docstring).
        tokenizer: Encodes the text; its name and ids go into the manifest.
        sample_len: Tokens per sample (`sample_len_for(objective, seq_len)`).
        val_fraction: Fraction of documents, by text hash, that go to `val`.
        size_limit: Shard size limit before compression (bytes or e.g. `"64mb"`).
        overwrite: Replace an existing complete `out_dir` (one with a manifest).
        metadata: Extra JSON-able facts stored under the manifest's `metadata` key (objective,
            seq_len, source, inputs, ...).

    Returns:
        The manifest that was written.

    Raises:
        FileExistsError: If `out_dir` holds a complete build and not `overwrite`, or holds
            anything else (never deleted, even with `overwrite`).
        ValueError: For bad arguments, or when no complete training sample could be packed.
        CorpusError: If an input cannot be read (from the reader).
    """
    if is_url(out_dir):
        raise ValueError(
            f"write_shards writes local directories, not {os.fspath(out_dir)}: use "
            "`prepare(..., out_dir=URL)` (perceiver data prepare --output URL)"
        )
    out = Path(check_location(out_dir)).absolute()
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out.parent.glob(f".{out.name}.tmp-*"))
    if stale:
        logger.warning("unfinished builds next to %s (from crashed runs?): %s", out, stale)
    started = time.monotonic()
    stats = PackStats()
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0700
    writers: dict[str, TokenShardWriter] = {}
    dtype = shard_dtype(tokenizer)
    try:
        for split in SPLITS:
            writers[split] = TokenShardWriter(
                tmp / split, sample_len, dtype, compression=COMPRESSION, size_limit=size_limit
            )
        last_report = time.monotonic()
        packer = DocumentPacker(tokenizer, sample_len, val_fraction, dtype, stats)
        for split, block in packer.pack(documents):
            writers[split].write(block)
            if time.monotonic() - last_report > PROGRESS_EVERY_S:
                last_report = time.monotonic()
                logger.info(
                    "%s: %d documents read, %d MB of text, %d train / %d val samples so far",
                    out.name,
                    stats.documents_read,
                    stats.bytes_in >> 20,
                    stats.samples["train"],
                    stats.samples["val"],
                )
        for split in SPLITS:
            writers.pop(split).finish()
        if stats.samples["train"] == 0:
            raise ValueError(
                f"no complete training sample of {sample_len} tokens: {stats.documents_kept} "
                f"documents kept ({stats.documents_rejected} rejected), "
                f"{stats.tokens_in['train']} training tokens; add text or lower the length"
            )
        if val_fraction > 0 and stats.samples["val"] == 0:
            logger.warning("%s: the val split got no complete sample (too little text)", out)
        manifest = _manifest(
            tmp,
            tokenizer,
            sample_len,
            val_fraction,
            size_limit,
            stats,
            metadata,
            time.monotonic() - started,
        )
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        _check_target(out, overwrite)  # again: someone may have finished the same dir meanwhile
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote %s: %d train / %d val samples of %d tokens from %d documents (%d rejected)",
        out,
        stats.samples["train"],
        stats.samples["val"],
        sample_len,
        stats.documents_kept,
        stats.documents_rejected,
    )
    return manifest


def _manifest(
    root: Path,
    tokenizer: Tokenizer,
    sample_len: int,
    val_fraction: float,
    size_limit: int | str,
    stats: PackStats,
    metadata: Mapping[str, Any] | None,
    wall_time_s: float,
) -> dict[str, Any]:
    summary = stats.to_dict(sample_len)
    for split, info in summary["splits"].items():  # type: ignore[union-attr]
        index = json.loads((root / split / "index.json").read_text(encoding="utf-8"))
        info["shards"] = len(index["shards"])
        info["bytes_on_disk"] = _dir_bytes(root / split)
    tokenizer_info = (
        tokenizer.config()
        if hasattr(tokenizer, "config")
        else {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size}
    )
    return {
        "format_version": FORMAT_VERSION,
        "tool": "perceiver-pretrain data_pipeline",
        "tool_version": _tool_version(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 3),
        "tokenizer": tokenizer_info,
        "sample_len": sample_len,
        "separator_id": tokenizer.eos_id,
        "columns": {"tokens": f"ndarray:{shard_dtype(tokenizer).name}"},
        "compression": COMPRESSION,
        "size_limit": size_limit,
        "val_fraction": val_fraction,
        "split_rule": "blake2b-64(document text) / 2**64 < val_fraction -> val",
        **summary,
        "metadata": dict(metadata or {}),
    }


def prepare_corpus(
    source: str,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    seq_len: int,
    objective: str,
    *,
    val_fraction: float = 0.01,
    max_bytes: int | None = None,
    text_field: str = "text",
    split_paragraphs: bool = False,
    tokenizer: str = "byte",
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    overwrite: bool = False,
    workers: int = 1,
    strict: bool = False,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    id_field: str | None = None,
    chunk_bytes: int | None = None,
    progress: bool = False,
    compression: str | None = None,
    staging_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Reads a corpus and writes tokenized shards; what `perceiver data prepare` runs.

    A thin wrapper of `prepare.prepare` (parallel, resumable; see `convert.py`).

    Args:
        source: One of `sources.SOURCES` (`wikipedia`, `wikiextractor`, `c4`, `jsonl`, `text`,
            `parquet`, `demo`).
        inputs: Files, globs, directories or URLs (none for `"demo"`).
        out_dir: Destination shard directory, or a URL (`s3://bucket/prefix`).
        seq_len: Model input length; samples hold `seq_len` (MLM) or `seq_len + 1` (AR) tokens.
        objective: `"mlm"` or `"ar"`.
        val_fraction: Fraction of documents sent to validation.
        max_bytes: Cap on the text bytes taken from each input.
        text_field: JSON field or Parquet column of the text.
        split_paragraphs: One document per paragraph (`"text"`).
        tokenizer: `byte` or `spm:PATH`.
        size_limit: Shard size limit.
        overwrite: Replace an existing complete `out_dir`.
        workers: Worker processes (the output does not depend on it).
        strict: Fail at the first rejected record.
        max_doc_bytes: Larger documents are rejected.
        id_field: JSON field of a document id (`"jsonl"`).
        chunk_bytes: XML bytes per parallel chunk of a Wikipedia dump.
        progress: Show a progress bar.
        compression: Shard compression (default `prepare.DEFAULT_COMPRESSION`, zstd level 1).
        staging_dir: Where a URL output is built before the upload.

    Returns:
        The manifest.
    """
    from data_pipeline.shards.prepare import prepare
    from data_pipeline.sources.kinds import SourceOptions

    options = SourceOptions(
        text_field=text_field,
        id_field=id_field,
        split_paragraphs=split_paragraphs,
        max_doc_bytes=max_doc_bytes,
        **({"chunk_bytes": chunk_bytes} if chunk_bytes else {}),
    )
    return prepare(
        source,
        inputs,
        out_dir,
        seq_len=seq_len,
        objective=objective,
        tokenizer=tokenizer,
        val_fraction=val_fraction,
        options=options,
        max_bytes=max_bytes,
        size_limit=size_limit,
        workers=workers,
        strict=strict,
        overwrite=overwrite,
        progress=progress,
        staging_dir=staging_dir,
        **({"compression": compression} if compression else {}),
    )


def prepare_demo_corpus(
    out_dir: str | os.PathLike[str],
    seq_len: int,
    objective: str = "mlm",
    *,
    max_bytes: int | None = None,
    val_fraction: float = 0.05,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Builds shards from the demo corpus (the standard library's docstrings, ~1.7 MB on 3.11).

    Needs no download: the text is on every machine with Python. Deterministic for a given
    Python installation.

    Args:
        out_dir: Destination shard directory.
        seq_len: Model input length.
        objective: `"mlm"` or `"ar"`.
        max_bytes: Cap on the text read (e.g. `200_000` for tests); `None` reads all of it.
        val_fraction: Fraction of modules sent to validation.
        overwrite: Replace an existing complete `out_dir`.

    Returns:
        The manifest.
    """
    return prepare_corpus(
        "demo",
        (),
        out_dir,
        seq_len,
        objective,
        val_fraction=val_fraction,
        max_bytes=max_bytes,
        overwrite=overwrite,
    )
