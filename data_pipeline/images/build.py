"""Parallel, resumable builds of image-like shards (kinds "image" and "flow").

The writer behind `perceiver data prepare-images`, `prepare-flow` and `generate-flow`. The caller
gives, per split, a list of *tasks* (small picklable values: a file path and label, a pair of
frame paths, a generator seed) and a top-level function turning one task into one MDS sample or
a `Rejection`. The tasks of a split are cut into *parts* of `part_size` consecutive tasks, which
depend only on the task list, never on the worker count, so the output is the same bytes for 1
or 64 workers. Each part is decoded and written by one worker process as an MDS sub-dataset in
the build directory beside the output, then recorded:

    .DIR.build/plan.json                  kind, columns and settings
    .DIR.build/parts/<split>-<part>.json  a finished part: digest of its tasks, samples,
                                          counters, rejections
    .DIR.build/<split>/<part>/            its shards and sub-index
    .DIR.build/tmp/                       parts being written (cleared on resume)

Re-running the same command after a crash skips the recorded parts whose tasks are unchanged (a
task may carry a file's size and mtime, so a changed input redoes its part); other settings are
refused (or discarded with `overwrite`). Only when every part is done are the split
indexes merged, `manifest.json` written, everything flushed and `.DIR.build` renamed to `DIR`:
`DIR` appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data_pipeline.files import atomic_write_json
from data_pipeline.shards.manifest import (
    COMPRESSION,
    DEFAULT_SIZE_LIMIT,
    FORMAT_VERSION,
    check_target,
    dir_bytes,
    fsync_tree,
    publish_dir,
    tool_version,
    write_manifest,
)
from data_pipeline.shards.mds import merge_split_index
from data_pipeline.shards.remote import check_local_output, check_location

__all__ = [
    "MAX_LISTED_REJECTIONS",
    "PART_SIZE",
    "Rejection",
    "TaskResult",
    "build_shards",
    "check_local_output",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
PART_SIZE = 512
"""Tasks per part (the unit of parallel work and of resume)."""
MAX_LISTED_REJECTIONS = 1000
"""Rejections listed one by one in the manifest (all are counted by reason)."""
PLAN_NAME = "plan.json"


@dataclass(frozen=True)
class Rejection:
    """A file (or pair) that was skipped: its path, a reason key and what went wrong."""

    path: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}: {self.detail}"


@dataclass
class TaskResult:
    """What a task function returns: a sample (or a rejection) and counter keys to add."""

    sample: dict[str, Any] | None = None
    rejection: Rejection | None = None
    counts: list[str] = field(default_factory=list)


TaskFn = Callable[[Any], TaskResult]


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _run_part(job: tuple[Path, str, str, list[Any], dict[str, str], Any, TaskFn]) -> dict:
    # job: (build dir, split, part name, tasks, MDS columns, size limit, task function)
    """Writes one part (in a worker process) and returns its record."""
    from streaming import MDSWriter

    build, split, name, tasks, columns, size_limit, fn = job
    tmp = build / "tmp" / f"{split}-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    counts: Counter[str] = Counter()
    rejections = []
    samples = 0
    writer = MDSWriter(out=str(tmp), columns=columns, compression=COMPRESSION,
                       size_limit=size_limit)  # fmt: skip
    try:
        for task in tasks:
            result = fn(task)
            counts.update(result.counts)
            if result.rejection is not None:
                rejections.append(asdict(result.rejection))
            elif result.sample is not None:
                writer.write(result.sample)
                samples += 1
        writer.finish()
    except BaseException:
        writer.cancel_future_jobs()
        raise
    dest = build / split / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, dest)
    return {
        "split": split,
        "part": name,
        "digest": _digest(tasks),
        "tasks": len(tasks),
        "samples": samples,
        "counts": dict(sorted(counts.items())),
        "rejections": rejections,
    }


def _results(jobs: list[tuple], workers: int) -> Iterator[dict]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_run_part, jobs)
        return
    # spawn: workers start clean (no inherited decoder or thread state).
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_run_part, jobs, chunksize=1)


def _open_build(out: Path, plan: dict[str, Any], overwrite: bool) -> Path:
    """Creates the build directory, or checks that an unfinished one has the same plan."""
    build = out.parent / f".{out.name}.build"
    plan_path = build / PLAN_NAME
    previous = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    if build.exists() and previous != plan:
        if previous is not None and not overwrite:
            changed = sorted(k for k in plan if previous.get(k) != plan[k])
            raise FileExistsError(
                f"{build} holds an unfinished build with other settings or inputs "
                f"({', '.join(changed)}); re-run with the same ones to resume it, or pass "
                "--overwrite to discard it"
            )
        shutil.rmtree(build)
    if build.exists():
        logger.info("resuming the unfinished build in %s", build)
    shutil.rmtree(build / "tmp", ignore_errors=True)  # parts being written when it stopped
    (build / "parts").mkdir(parents=True, exist_ok=True)
    (build / "tmp").mkdir(exist_ok=True)
    atomic_write_json(plan_path, plan)
    return build


def _done_parts(build: Path) -> dict[tuple[str, str], dict]:
    done = {}
    for path in sorted((build / "parts").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if (build / record["split"] / record["part"] / "index.json").is_file():
            done[record["split"], record["part"]] = record
    return done


def build_shards(
    out_dir: str | os.PathLike[str],
    *,
    kind: str,
    command: str,
    columns: dict[str, str],
    tasks: Mapping[str, Sequence[Any]],
    fn: TaskFn,
    settings: Mapping[str, Any],
    describe: Callable[[dict[str, Counter[str]], list[dict[str, str]]], dict[str, Any]],
    workers: int = 1,
    part_size: int = PART_SIZE,
    size_limit: int | str = DEFAULT_SIZE_LIMIT,
    overwrite: bool = False,
    progress: bool = True,
    pre_rejections: Sequence[Rejection] = (),
) -> dict[str, Any]:
    """Builds (or resumes) a shard directory of `kind` from per-split tasks.

    Args:
        out_dir: The local output directory.
        kind: The manifest's kind ("image" or "flow").
        command: The command that builds it, for messages (``prepare-images``).
        columns: The MDS columns.
        tasks: Per split ("train", "val"), the tasks in output order.
        fn: A top-level function (workers are spawned) of one task.
        settings: Everything else that decides the output (part of the plan).
        describe: Builds the kind's manifest fields from the per-split counters and the
            rejections.
        workers: Worker processes; the output does not depend on it.
        part_size: Tasks per part.
        size_limit: Shard size limit before compression.
        overwrite: Replace complete shards at `out_dir`, or discard an unfinished build with
            other settings.
        progress: Show a progress bar (parts) on stderr.
        pre_rejections: Rejections found before any task ran (listing the inputs).

    Returns:
        The manifest.

    Raises:
        ValueError: For a URL output, bad arguments, or when no training sample was written.
        FileExistsError: If `out_dir` holds something else, or complete shards without
            `overwrite`.
    """
    from tqdm import tqdm

    check_local_output(out_dir, command)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    started = time.monotonic()
    out = Path(check_location(out_dir, key="output")).absolute()
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = {
        "kind": kind,
        "columns": columns,
        "settings": dict(settings),
        "size_limit": size_limit,
        "part_size": part_size,
    }
    build = _open_build(out, plan, overwrite)
    parts: dict[str, list[str]] = {split: [] for split in SPLITS}
    jobs = []
    done = _done_parts(build)
    for split in SPLITS:
        items = list(tasks.get(split, ()))
        for begin in range(0, len(items), part_size):
            name = f"{begin // part_size:05d}"
            parts[split].append(name)
            chunk = items[begin : begin + part_size]
            record = done.get((split, name))
            if record is None or record["digest"] != _digest(chunk):
                done.pop((split, name), None)
                jobs.append((build, split, name, chunk, columns, size_limit, fn))
    if done:
        kept = sum(len(names) for names in parts.values()) - len(jobs)
        logger.info("%s: %d parts already done, %d to write", out, kept, len(jobs))
    bar = tqdm(total=len(jobs), unit="part", desc=f"{command} {out.name}", disable=not progress)
    try:
        for record in _results(jobs, workers):
            atomic_write_json(build / "parts" / f"{record['split']}-{record['part']}.json", record)
            done[record["split"], record["part"]] = record
            bar.update(1)
    finally:
        bar.close()
    counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    rejections = [asdict(r) for r in pre_rejections]
    samples = {split: 0 for split in SPLITS}
    for split in SPLITS:
        for name in parts[split]:
            record = done[split, name]
            counts[split].update(record["counts"])
            rejections.extend(record["rejections"])
            samples[split] += record["samples"]
    if samples["train"] == 0:
        examples = [f"{r['path']}: {r['reason']}" for r in rejections[:3]]
        raise ValueError(
            f"{out}: no training sample could be written ({len(tasks.get('train', ()))} "
            f"training inputs, {len(rejections)} rejected, e.g. {examples})"
        )
    if samples["val"] == 0:
        logger.warning("%s: the val split got no sample", out)
    splits = {}
    for split in SPLITS:
        (build / split).mkdir(exist_ok=True)
        for stale in (build / split).iterdir():  # parts of an earlier, longer task list
            if stale.is_dir() and stale.name not in parts[split]:
                shutil.rmtree(stale)
        shards = merge_split_index(build / split, parts[split])
        splits[split] = {
            "samples": samples[split],
            "shards": shards,
            "bytes_on_disk": dir_bytes(build / split),
        }
    by_reason = Counter(r["reason"] for r in rejections)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "tool": f"perceiver-pretrain perceiver data {command}",
        "tool_version": tool_version(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.monotonic() - started, 3),
        "columns": columns,
        "compression": COMPRESSION,
        "size_limit": size_limit,
        **describe(counts, rejections),
        "rejected_count": len(rejections),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "rejected": rejections[:MAX_LISTED_REJECTIONS],
        "splits": splits,
        "settings": dict(settings),
        "workers": workers,
        "parts": {split: len(parts[split]) for split in SPLITS},
    }
    for name in ("parts", "tmp", PLAN_NAME):
        path = build / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_manifest(build, manifest)
    fsync_tree(build)
    check_target(out, overwrite)
    publish_dir(build, out)
    logger.info(
        "wrote %s: %d train / %d val samples, %d rejected",
        out, samples["train"], samples["val"], len(rejections),
    )  # fmt: skip
    return manifest
