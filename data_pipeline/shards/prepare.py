"""`perceiver data prepare`: plan the parts, run them, merge the indexes, write the manifest.

    prepare("c4", ["c4/en/c4-train.*.json.gz"], "data/c4_bytes_2048", seq_len=2048, workers=16)

See `convert.py` for how the work is cut, run in parallel and resumed. This module holds the
orchestration around it: checking the output and an unfinished build, the progress bar (MB/s of
input, docs/s), the merge of the parts' sub-indexes into each split's `index.json`, and the
manifest that describes the build:

    inputs        every input with its size and sha256 (and its documents read and kept)
    documents     read / kept / rejected, by reason, with the first messages of each reason
    bytes_in, tokens, splits (samples = sequences), tokenizer (+ model file), sample_len, ...
    parts         per part: input, chunk, counts; wall_time_s, throughput, tool_version
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data_pipeline.files import atomic_write_json
from data_pipeline.shards.convert import (
    PLAN_NAME,
    ConvertSettings,
    build_dir_for,
    done_parts,
    execute,
    iter_tasks,
    read_plan,
    resolve_for,
)
from data_pipeline.shards.manifest import (
    DEFAULT_SIZE_LIMIT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    check_target,
    dir_bytes,
    fsync_tree,
    is_complete,
    publish_dir,
    tool_version,
    write_manifest,
)
from data_pipeline.shards.mds import merge_split_index
from data_pipeline.shards.packing import SPLITS, PackStats
from data_pipeline.shards.remote import check_location, is_url, publish, writable_check
from data_pipeline.sources.kinds import SourceOptions
from data_pipeline.sources.records import DEFAULT_MAX_DOC_BYTES
from data_pipeline.tokenization.tokenizer import SPM_MODEL_NAME, get_tokenizer, shard_dtype

__all__ = [
    "DEFAULT_COMPRESSION",
    "Progress",
    "prepare",
    "prepare_corpus",
    "prepare_demo_corpus",
]

logger = logging.getLogger(__name__)

DEFAULT_COMPRESSION = "zstd:1"
"""zstd level 1: on English text 7% larger shards than level 3 (2.9x vs 3.1x for byte ids) and
twice as fast to write, which keeps conversion within 2x of decompressing the input."""


class Progress:
    """Input MB/s and docs/s, as a tqdm bar (`enabled`) or a log line every 30 s."""

    def __init__(self, total_bytes: int, enabled: bool, label: str) -> None:
        self.started = time.monotonic()
        self.bytes = 0
        self.documents = 0
        self._last_log = self.started
        self._label = label
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_bytes or None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                dynamic_ncols=True,
            )

    def add(self, input_bytes: int, documents: int) -> None:
        """Counts raw input bytes and documents done."""
        self.bytes += input_bytes
        self.documents += documents
        if self._bar is not None and input_bytes:
            self._bar.update(input_bytes)

    def rates(self) -> tuple[float, float]:
        """(MB/s of input, documents/s) since the start."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return self.bytes / 1e6 / elapsed, self.documents / elapsed

    def refresh(self) -> None:
        """Updates the bar's docs/s (or logs every 30 s without a bar)."""
        mb_s, docs_s = self.rates()
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.documents:,} docs, {docs_s:,.0f} docs/s", False)
        elif time.monotonic() - self._last_log > 30:
            self._last_log = time.monotonic()
            logger.info(
                "%s: %.1f MB of input (%.1f MB/s), %d documents (%.0f docs/s)",
                self._label, self.bytes / 1e6, mb_s, self.documents, docs_s,
            )  # fmt: skip

    def close(self) -> None:
        """Closes the bar."""
        if self._bar is not None:
            self._bar.close()


def _open_build(out: Path, plan: dict[str, Any], overwrite: bool) -> Path:
    """Creates the build directory, or checks an unfinished one matches the plan."""
    build = build_dir_for(out)
    previous = read_plan(build)
    if build.exists() and previous != plan:
        if previous is not None and not overwrite:
            changed = sorted(k for k in plan if previous.get(k) != plan[k])
            raise FileExistsError(
                f"{build} holds an unfinished build with other settings ({', '.join(changed)}); "
                "re-run with the same ones to resume it, or pass --overwrite to discard it"
            )
        shutil.rmtree(build)
    if build.exists():
        logger.info("resuming the unfinished build in %s", build)
    shutil.rmtree(build / "tmp", ignore_errors=True)  # parts being written when it stopped
    (build / "parts").mkdir(parents=True, exist_ok=True)
    atomic_write_json(build / PLAN_NAME, plan)
    return build


def prepare(
    source: str,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    seq_len: int,
    objective: str = "mlm",
    tokenizer: str = "byte",
    val_fraction: float = 0.01,
    options: SourceOptions | None = None,
    max_bytes: int | None = None,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    compression: str = DEFAULT_COMPRESSION,
    workers: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    metadata: Mapping[str, Any] | None = None,
    staging_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Converts a corpus into `out_dir/{train,val}` shards and `out_dir/manifest.json`.

    With a URL `out_dir` (`s3://bucket/prefix`, any scheme streaming can upload to), the shards
    are built in a local staging directory (resumed like a local build), then uploaded with the
    manifest last (`remote.publish`) and the staging copy deleted.

    Args:
        source: One of `sources.SOURCES`.
        inputs: Files, globs, directories, URLs (none for `demo`).
        out_dir: The shard directory to create.
        seq_len: Model input length (MLM samples hold `seq_len` tokens, AR `seq_len + 1`).
        objective: `mlm` or `ar`.
        tokenizer: `byte` or `spm:PATH` (the model is copied beside the shards).
        val_fraction: Fraction of documents, by text hash, in `val`.
        options: Reader settings (text field, max document size, dump chunk size, ...).
        max_bytes: Take at most about this many text bytes from each input.
        size_limit: Shard size limit before compression.
        compression: Shard compression (`zstd:LEVEL`, any streaming compression).
        workers: Worker processes (the output does not depend on it).
        strict: Fail at the first rejected record (filtering such as redirects excepted).
        overwrite: Replace a complete `out_dir`, or discard an unfinished build of other settings.
        progress: Show a progress bar.
        metadata: Extra facts stored in the manifest's `metadata`.
        staging_dir: Where a URL output is built first (default `$TMPDIR/perceiver-staging`).

    Returns:
        The manifest.

    Raises:
        FileExistsError: If `out_dir` is complete (without `overwrite`; a URL never is replaced),
            or not a shard directory.
        ValueError: For an unsupported URL.
        FileNotFoundError, PermissionError, ConnectionError: For a missing bucket, missing
            credentials or an unreachable endpoint (see `remote`).
        CorpusError: If an input cannot be read at all.
        StrictError: In strict mode, naming the first rejected record or a directory that
            cannot be listed (without strict, such a directory is counted as
            `unreadable_directory`).
        ValueError: For bad arguments, or when no complete training sample could be made.
    """
    started = time.monotonic()
    settings = ConvertSettings(
        source, tokenizer, seq_len, objective, val_fraction, options or SourceOptions(),
        max_bytes, size_limit, compression, strict,
    )  # fmt: skip
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    sample_len = settings.sample_len
    tok = get_tokenizer(tokenizer)
    url = check_location(out_dir, write=True, key="output") if is_url(out_dir) else None
    if url:
        writable_check(url, overwrite=overwrite)  # before any work: bucket, credentials, target
    unreadable: list[tuple[str, str]] = []
    found = resolve_for(settings, inputs, unreadable)
    skipped = PackStats(strict=strict)  # raises StrictError for the first one before any work
    for _, detail in unreadable:
        logger.warning("%s", detail)
        skipped.reject("unreadable_directory", detail)
    plan = {"settings": settings.to_dict(), "inputs": [item.name for item in found]}
    if url:
        out = _staging_for(url, plan, staging_dir)
        if is_complete(out):  # converted before an interrupted upload
            logger.info("uploading the finished conversion in %s to %s", out, url)
            return _upload(out, url)
    else:
        out = Path(check_location(out_dir, key="output")).absolute()
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = _open_build(out, plan, overwrite)
    done = done_parts(build, found)
    total = sum(max(item.size, 0) for item in found)
    bar = Progress(total, progress, f"prepare {out.name}")
    checksums: dict[int, str] = {}
    try:
        if settings.source != "wikipedia":
            sizes = {f"{i:05d}": max(item.size, 0) for i, item in enumerate(found)}
            bar.add(sum(sizes.get(part, 0) for part in done), 0)
        on_bytes = (lambda n: bar.add(n, 0)) if settings.source == "wikipedia" else None
        tasks = iter_tasks(settings, found, build, on_bytes, checksums)
        order, records = execute(tasks, done, workers, bar)
    finally:
        bar.close()
    stats = PackStats()
    stats.merge(skipped)
    for part in order:
        stats.merge(PackStats.from_state(records[part]["stats"]))
    if stats.samples["train"] == 0:
        shutil.rmtree(build, ignore_errors=True)
        raise ValueError(
            f"no complete training sample of {sample_len} tokens: {stats.documents_kept} "
            f"documents kept ({stats.documents_rejected} rejected), "
            f"{stats.tokens_in['train']} training tokens; add text or lower the length"
        )
    if val_fraction > 0 and stats.samples["val"] == 0:
        logger.warning("%s: the val split got no complete sample (too little text)", out)
    shards = {split: merge_split_index(build / split, order) for split in SPLITS}
    if tokenizer.startswith("spm:"):
        shutil.copyfile(tokenizer[4:], build / SPM_MODEL_NAME)
    for name in ("parts", "tmp", PLAN_NAME):
        path = build / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    metadata = {"inputs": [os.fspath(i) for i in inputs], **(metadata or {})}
    manifest = _manifest(
        build, settings, tok, stats, found, order, records, checksums, shards, workers,
        time.monotonic() - started, metadata,
    )  # fmt: skip
    write_manifest(build, manifest)
    fsync_tree(build)
    check_target(out, overwrite)
    publish_dir(build, out)
    logger.info(
        "wrote %s: %d train / %d val samples of %d tokens from %d documents (%d rejected)",
        out, stats.samples["train"], stats.samples["val"], sample_len,
        stats.documents_kept, stats.documents_rejected,
    )  # fmt: skip
    return _upload(out, url) if url else manifest


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

    `prepare` (the one writer of text shards) with the reader options as keywords.

    Args:
        source, inputs, out_dir, seq_len, objective, val_fraction, max_bytes, tokenizer,
            size_limit, overwrite, workers, strict, progress, compression, staging_dir: As for
            `prepare` (`compression=None`: `DEFAULT_COMPRESSION`).
        text_field, split_paragraphs, max_doc_bytes, id_field, chunk_bytes: The reader options
            (`SourceOptions`; `chunk_bytes=None`: the default dump chunk size).

    Returns:
        The manifest.
    """
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


def _staging_for(url: str, plan: dict[str, Any], staging: str | os.PathLike[str] | None) -> Path:
    """The local directory a conversion for `url` is built in: one per URL and plan, so an
    interrupted run resumes it and other settings never mix with it."""
    root = Path(staging or Path(tempfile.gettempdir()) / "perceiver-staging").absolute()
    digest = hashlib.blake2b(
        json.dumps([url, plan], sort_keys=True).encode(), digest_size=8
    ).hexdigest()
    return root / f"{url.rstrip('/').rsplit('/', 1)[-1]}-{digest}"


def _upload(local: Path, url: str) -> dict[str, Any]:
    """Publishes the finished `local` conversion to `url` (manifest last), then deletes it."""
    manifest = json.loads((local / MANIFEST_NAME).read_text(encoding="utf-8"))
    publish(local, url)
    shutil.rmtree(local)
    logger.info("uploaded %s to %s", local.name, url)
    return manifest


def _inputs_summary(
    found: Sequence[Any],
    order: Sequence[str],
    records: Mapping[str, dict[str, Any]],
    checksums: Mapping[int, str],
) -> list[dict[str, Any]]:
    summary = [
        {"name": item.name, "size": item.size, "sha256": checksums.get(i), "parts": 0,
         "documents_read": 0, "documents_kept": 0}
        for i, item in enumerate(found)
    ]  # fmt: skip
    for part in order:
        record = records[part]
        entry = summary[record["input_index"]]
        entry["parts"] += 1
        entry["documents_read"] += record["stats"]["documents_read"]
        entry["documents_kept"] += record["stats"]["documents_kept"]
        if record["input_sha256"]:
            entry["sha256"] = record["input_sha256"]
        if entry["size"] < 0:
            entry["size"] = record["input_size"]
    return summary


def _manifest(
    root: Path,
    settings: ConvertSettings,
    tokenizer: Any,
    stats: PackStats,
    found: Sequence[Any],
    order: Sequence[str],
    records: Mapping[str, dict[str, Any]],
    checksums: Mapping[int, str],
    shards: Mapping[str, int],
    workers: int,
    wall_time_s: float,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    sample_len = settings.sample_len
    summary = stats.to_dict(sample_len)
    for split, info in summary["splits"].items():  # type: ignore[union-attr]
        info["shards"] = shards[split]
        info["bytes_on_disk"] = dir_bytes(root / split)
        info["sequences"] = info["samples"]
    inputs = _inputs_summary(found, order, records, checksums)
    input_bytes = sum(max(entry["size"], 0) for entry in inputs)
    dtype = shard_dtype(tokenizer)
    meta = {
        "objective": settings.objective,
        "seq_len": settings.seq_len,
        "source": settings.source,
        "inputs": [entry["name"] for entry in inputs],
        "max_bytes": settings.max_bytes,
    }
    meta.update(metadata or {})
    return {
        "format_version": FORMAT_VERSION,
        "tool": "perceiver-pretrain data_pipeline",
        "tool_version": tool_version(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 3),
        "workers": workers,
        "throughput": {
            "input_bytes": input_bytes,
            "input_mb_per_s": round(input_bytes / 1e6 / max(wall_time_s, 1e-9), 2),
            "documents_per_s": round(stats.documents_read / max(wall_time_s, 1e-9), 1),
        },
        "tokenizer": tokenizer.config(),
        "sample_len": sample_len,
        "separator_id": tokenizer.eos_id,
        "columns": {"tokens": f"ndarray:{dtype.name}"},
        "compression": settings.compression,
        "size_limit": settings.size_limit,
        "val_fraction": settings.val_fraction,
        "split_rule": "blake2b-64(document text) / 2**64 < val_fraction -> val",
        "strict": settings.strict,
        "reader_options": settings.options.to_dict(),
        **summary,
        "inputs": inputs,
        "parts": [
            {k: records[p][k] for k in ("part", "input_index", "chunk", "shards", "wall_time_s")}
            | {"samples": records[p]["stats"]["samples"]}
            for p in order
        ],
        "python": sys.version.split()[0],
        "metadata": meta,
    }
