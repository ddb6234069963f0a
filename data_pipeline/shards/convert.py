"""Parallel, resumable conversion: corpus inputs -> tokenized MDS shards + `manifest.json`.

What `perceiver data prepare` runs. The work is cut into *parts* that depend only on the inputs,
never on the worker count, so the output is the same for 1 or 64 workers:

- one part per input file (C4's 1024 files, JSON lines, text, Parquet, WikiExtractor files);
- for MediaWiki dumps, one part per ~32 MB chunk of whole pages: the main process only
  decompresses and cuts the dump (`wikipedia.iter_dump_chunks`), workers parse, clean and
  tokenize, so a single 20 GB `.xml.bz2` still uses every worker.

Each part is packed on its own (its last partial sample per split is dropped and counted) and
written by a worker process as an MDS sub-dataset (`TokenShardWriter`, zstd) in a temporary
directory, renamed to `train/<part>/` and `val/<part>/` when complete, and then recorded in
`parts/<part>.json`. The build happens in `.DIR.build/` beside the output:

    .DIR.build/plan.json             settings + input list; a re-run must match it
    .DIR.build/parts/<part>.json     a finished part: counts, input fingerprint, checksum
    .DIR.build/{train,val}/<part>/   its shards and sub-index
    .DIR.build/tmp/                  parts being written (ignored and cleared on resume)

Re-running after an interruption skips the parts already recorded (for a dump, their chunks are
still decompressed but not parsed again) and redoes a part whose input changed (size or mtime).
Only when every part is done are the split indexes merged (streaming's `merge_index`), the
manifest written and `.DIR.build` renamed to `DIR`: no index ever lists a partial shard and `DIR`
appears complete or not at all.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import queue as queue_lib
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.files import atomic_write_json
from data_pipeline.shards.mds import TokenShardWriter
from data_pipeline.shards.packing import SPLITS, DocumentPacker, PackStats, sample_len_for
from data_pipeline.sources.inputs import (
    CorpusError,
    InputFile,
    ReadMeter,
    download_input,
    open_input,
    resolve_inputs,
)
from data_pipeline.sources.kinds import SOURCES, SourceOptions, input_suffixes, read_input
from data_pipeline.sources.records import Record, take_bytes
from data_pipeline.sources.wikipedia import DumpChunk, iter_dump_chunks, read_chunk
from data_pipeline.tokenization.tokenizer import Tokenizer, get_tokenizer, shard_dtype

__all__ = [
    "ConvertSettings",
    "PartTask",
    "build_dir_for",
    "done_parts",
    "execute",
    "iter_tasks",
    "read_plan",
    "resolve_for",
    "run_part",
]

logger = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class ConvertSettings:
    """Everything that determines the output (a resumed build must use the same).

    Attributes:
        source: One of `SOURCES`.
        tokenizer: Tokenizer name (`byte`, `spm:PATH`).
        seq_len: Model input length.
        objective: `mlm` (samples of `seq_len`) or `ar` (`seq_len + 1`).
        val_fraction: Fraction of documents, by text hash, in `val`.
        options: Reader settings.
        max_bytes: Cap on the text bytes taken from each input (None: all).
        size_limit: Shard size limit before compression.
        compression: Shard compression (streaming name, e.g. `zstd`).
        strict: Fail on the first rejected record (filtering reasons excepted).
    """

    source: str
    tokenizer: str
    seq_len: int
    objective: str
    val_fraction: float
    options: SourceOptions = SourceOptions()
    max_bytes: int | None = None
    size_limit: int | str = "64mb"
    compression: str = "zstd"
    strict: bool = False

    @property
    def sample_len(self) -> int:
        """Tokens per stored sample."""
        return sample_len_for(self.objective, self.seq_len)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (the plan)."""
        tokenizer = self.tokenizer
        if tokenizer.startswith("spm:"):
            tokenizer = f"spm:{Path(tokenizer[4:]).resolve()}"
        return {
            "source": self.source,
            "tokenizer": tokenizer,
            "seq_len": self.seq_len,
            "objective": self.objective,
            "val_fraction": self.val_fraction,
            "options": self.options.to_dict(),
            "max_bytes": self.max_bytes,
            "size_limit": self.size_limit,
            "compression": self.compression,
            "strict": self.strict,
        }


@dataclass
class PartTask:
    """One unit of work: a whole input file, or one chunk of a dump.

    Attributes:
        part: Part id, `IIIII` for a file or `IIIII-CCCCC` for chunk C of input I.
        index: Position of the input.
        input: The input file.
        build: The build directory.
        settings: The conversion settings.
        chunk: The dump chunk (wikipedia), else None.
    """

    part: str
    index: int
    input: InputFile
    build: str
    settings: ConvertSettings
    chunk: DumpChunk | None = None


def build_dir_for(out: Path) -> Path:
    """The hidden build directory of output `out` (`.NAME.build` beside it)."""
    return out.parent / f".{out.name}.build"


def plan_parts(settings: ConvertSettings, inputs: Sequence[InputFile]) -> bool:
    """Whether `settings.source` is cut into dump chunks (True) or one part per file."""
    del inputs
    return settings.source == "wikipedia"


# ----------------------------------------------------------------------------------------------
# Worker side

_tokenizers: dict[str, Tokenizer] = {}
_progress: Any = None  # a multiprocessing queue in pool workers, a callable in-process


def init_worker(progress_queue: Any) -> None:
    """Pool initializer: where workers report progress."""
    global _progress
    _progress = progress_queue
    logging.basicConfig(level=logging.WARNING)


def _report(input_bytes: int, documents: int) -> None:
    if _progress is None or (not input_bytes and not documents):
        return
    if callable(_progress):
        _progress(input_bytes, documents)
    else:
        _progress.put((input_bytes, documents))


def _tokenizer(name: str) -> Tokenizer:
    if name not in _tokenizers:
        _tokenizers[name] = get_tokenizer(name)
    return _tokenizers[name]


def _records(task: PartTask, local: str, meters: list[ReadMeter]) -> Iterator[Record]:
    settings = task.settings
    if task.chunk is not None:
        return read_chunk(task.chunk, task.input.name, settings.options.max_doc_bytes)
    if settings.source == "demo":
        return take_bytes(read_input("demo", local), settings.max_bytes)
    records = read_input(settings.source, local, settings.options, meters)
    return take_bytes(records, settings.max_bytes)


def run_part(task: PartTask) -> dict[str, Any]:
    """Converts one part and records it; what a worker process runs.

    Args:
        task: The part.

    Returns:
        The part record written to `parts/<part>.json`.

    Raises:
        CorpusError: If the input cannot be read at all.
        StrictError: In strict mode, at the first rejected record.
    """
    started = time.monotonic()
    settings = task.settings
    build = Path(task.build)
    tmp = build / "tmp" / f"{task.part}-{uuid.uuid4().hex[:8]}"
    local = task.input.name
    downloaded = None
    if task.input.remote and task.chunk is None:
        downloaded = download_input(task.input.name, tmp / "download")
        local = str(downloaded)
    tokenizer = _tokenizer(settings.tokenizer)
    dtype = shard_dtype(tokenizer)
    stats = PackStats(strict=settings.strict)
    packer = DocumentPacker(
        tokenizer,
        settings.sample_len,
        settings.val_fraction,
        dtype,
        stats,
        settings.options.max_doc_bytes,
    )
    writers = {
        split: TokenShardWriter(
            tmp / split,
            settings.sample_len,
            dtype,
            compression=settings.compression,
            size_limit=settings.size_limit,
        )
        for split in SPLITS
    }
    meters: list[ReadMeter] = []
    reported_bytes = reported_docs = 0
    last = time.monotonic()
    try:
        for split, block in packer.pack(_records(task, local, meters)):
            writers[split].write(block)
            if time.monotonic() - last > PROGRESS_EVERY_S:
                last = time.monotonic()
                read = sum(m.bytes_read for m in meters)
                _report(read - reported_bytes, stats.documents_read - reported_docs)
                reported_bytes, reported_docs = read, stats.documents_read
        for writer in writers.values():
            writer.finish()
        sha256, size = None, 0
        if task.chunk is None:
            sha256 = meters[0].sha256() if meters else None
            size = max(task.input.size, sum(m.bytes_read for m in meters))
            if downloaded is not None:
                size = downloaded.stat().st_size
    finally:
        for meter in meters:
            meter.close()
    _report(max(size - reported_bytes, 0), stats.documents_read - reported_docs)
    for split in SPLITS:
        target = build / split / task.part
        if target.exists():  # a crashed attempt moved it but did not record the part
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp / split, target)
    record = {
        "part": task.part,
        "input": task.input.name,
        "input_index": task.index,
        "fingerprint": task.input.fingerprint(),
        "input_size": size,
        "input_sha256": sha256,
        "chunk": None
        if task.chunk is None
        else {
            "index": task.chunk.index,
            "offset": task.chunk.offset,
            "bytes": len(task.chunk.data),
        },
        "stats": stats.state(),
        "shards": {split: len(writers[split].shards) for split in SPLITS},
        "wall_time_s": round(time.monotonic() - started, 3),
    }
    parts = build / "parts"
    parts.mkdir(exist_ok=True)
    atomic_write_json(parts / f"{task.part}.json", record, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)
    return record


# ----------------------------------------------------------------------------------------------
# Main side: plan, dispatch, resume


def read_plan(build: Path) -> dict[str, Any] | None:
    """The plan of an unfinished build, or None."""
    path = build / PLAN_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def done_parts(build: Path, inputs: Sequence[InputFile]) -> dict[str, dict[str, Any]]:
    """Recorded parts whose input is unchanged (others are redone)."""
    fingerprints = {i: item.fingerprint() for i, item in enumerate(inputs)}
    done: dict[str, dict[str, Any]] = {}
    for path in sorted((build / "parts").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        unchanged = fingerprints.get(record["input_index"]) == record["fingerprint"]
        if unchanged or inputs[record["input_index"]].remote:
            done[record["part"]] = record
        else:
            logger.info(
                "%s changed since part %s was written: redoing it", record["input"], path.stem
            )
            path.unlink()
    return done


def iter_tasks(
    settings: ConvertSettings,
    inputs: Sequence[InputFile],
    build: Path,
    on_bytes: Any = None,
    input_checksums: dict[int, str] | None = None,
) -> Iterator[PartTask]:
    """Every part of the build in order (done or not), producing dump chunks on the way.

    Args:
        settings: Conversion settings.
        inputs: The resolved inputs.
        build: The build directory.
        on_bytes: Called with raw bytes read while cutting dumps (progress).
        input_checksums: Filled with the sha256 of dumps read here.

    Yields:
        `PartTask`s in output order.
    """
    for index, item in enumerate(inputs):
        if not plan_parts(settings, inputs):
            yield PartTask(f"{index:05d}", index, item, str(build), settings)
            continue
        local = item.name
        if item.remote:
            local = str(download_input(item.name, build / "tmp" / f"download-{index:05d}"))
        stream, meter = open_input(local)
        seen = 0
        with stream:
            chunks = iter_dump_chunks(
                stream, item.name, settings.options.chunk_bytes, settings.options.max_doc_bytes
            )
            for chunk in chunks:
                if on_bytes is not None:
                    on_bytes(meter.bytes_read - seen)
                    seen = meter.bytes_read
                yield PartTask(
                    f"{index:05d}-{chunk.index:05d}", index, item, str(build), settings, chunk
                )
            if input_checksums is not None:
                input_checksums[index] = meter.sha256()
        if on_bytes is not None:
            on_bytes(meter.bytes_read - seen)
        meter.close()
        if item.remote:
            shutil.rmtree(Path(local).parent, ignore_errors=True)


def execute(
    tasks: Iterator[PartTask],
    done: dict[str, dict[str, Any]],
    workers: int,
    progress: Any,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Runs the tasks not yet done, `workers` at a time; returns all part ids and records.

    With `workers <= 1` the parts run in this process. Otherwise in a spawned process pool with at
    most `2 * workers` parts in flight (dump chunks are held in memory until a worker takes
    them). The first failing part cancels the rest and its exception is raised here; the parts
    already recorded are kept for the next attempt.
    """
    global _progress
    order: list[str] = []
    records = dict(done)
    if workers <= 1:
        _progress = progress.add
        for task in tasks:
            order.append(task.part)
            if task.part not in records:
                records[task.part] = run_part(task)
            progress.refresh()
        return order, records
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    pool = cf.ProcessPoolExecutor(workers, context, initializer=init_worker, initargs=(messages,))
    running: dict[cf.Future, str] = {}

    def drain(block: bool) -> None:
        finished, _ = cf.wait(running, timeout=0.2 if block else 0, return_when=cf.FIRST_COMPLETED)
        while True:
            try:
                progress.add(*messages.get_nowait())
            except queue_lib.Empty:
                break
        for future in finished:
            records[running.pop(future)] = future.result()
        progress.refresh()

    try:
        for task in tasks:
            order.append(task.part)
            if task.part in records:
                continue
            while len(running) >= 2 * workers:
                drain(block=True)
            running[pool.submit(run_part, task)] = task.part
            drain(block=False)
        while running:
            drain(block=True)
    except BaseException:
        for future in running:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return order, records


def python_fingerprint() -> str:
    """What the demo corpus (the stdlib) depends on."""
    return f"python {platform.python_version()} {sys.prefix}"


def resolve_for(
    settings: ConvertSettings,
    inputs: Sequence[str | os.PathLike[str]],
    unreadable: list[tuple[str, str]] | None = None,
) -> list[InputFile]:
    """The input files of a conversion (a pseudo-input for the demo corpus); directories that
    cannot be listed are skipped and named in `unreadable` (see `inputs.resolve_inputs`)."""
    if settings.source not in SOURCES:
        raise ValueError(f"unknown source {settings.source!r}; expected one of {SOURCES}")
    if settings.source == "demo":
        if inputs:
            raise ValueError("source 'demo' reads the Python standard library and takes no inputs")
        digest = hashlib.blake2b(python_fingerprint().encode(), digest_size=6).digest()
        return [InputFile("stdlib", 0, int.from_bytes(digest, "big"))]
    if not inputs:
        raise ValueError(f"source {settings.source!r} needs at least one input")
    skipped: list[tuple[str, str]] = []
    found = resolve_inputs(inputs, input_suffixes(settings.source), skipped)
    if not found:
        where = [os.fspath(i) for i in inputs]
        raise CorpusError(
            f"no input files found in {where}" + "".join(f"; {d}" for _, d in skipped)
        )
    if unreadable is not None:
        unreadable.extend(skipped)
    return found
