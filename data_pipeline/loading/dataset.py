"""Batches for training: `StreamingDataset` + `StreamingDataLoader` over the MDS shards.

`build_dataloader` is the one function the trainer calls, once per split. What it relies on:

Ranks. mosaicml-streaming reads `WORLD_SIZE`, `RANK`, `LOCAL_WORLD_SIZE` and `LOCAL_RANK` from the
environment when the dataset is built, and gives each rank a disjoint slice of every epoch (the
epoch is padded with a few repeated samples when it does not divide evenly over ranks). The
ranks of a node coordinate through shared memory registered by local rank 0, so with more than
one rank `torch.distributed` should already be initialised (streaming uses its barriers; if it
is not, streaming initialises a process group itself from `MASTER_ADDR`/`MASTER_PORT`).
`ensure_distributed_env` fills in single-process defaults and cleans shared memory leaked by
killed runs (`clean_leaked_shared_memory`), once per process, before the first dataset is built.

Where shards are read. Without `cache_root`, `local` is the shard directory itself and there is
no `remote`. Streaming then decompresses each zstd shard it touches *into that directory*
(`shard.00000.mds` beside `shard.00000.mds.zstd`, via a `.tmp` file and a rename): the directory
must be writable, grows to compressed + raw size, and must not be shared by several nodes at
once (their local leaders would race on the same files). With `cache_root` (what the trainer
passes), the shard directory is the `remote` and stays untouched; shards are copied and
decompressed under `cache_root`, which must be node-local storage on multi-node runs for the same
reason. `shards.iter_samples` reads shards in memory without writing anything.

Epochs. The loader is re-iterable: every `iter(loader)` starts the dataset's next epoch, with a
new shuffle derived from `(seed, epoch)`. Drive it by steps, not by epochs::

    loader = build_dataloader(data_dir, "train", micro_batch_size, shuffle=True, seed=seed)
    if resuming:
        loader.load_state_dict(ckpt["train_loader"])  # before the first iter(loader)
    while step < max_steps:
        for batch in loader:  # one (possibly resumed) epoch
            ...  # train on batch["tokens"]; step += 1
            if should_checkpoint(step):
                ckpt["train_loader"] = loader.state_dict()  # same value on every rank
            if step >= max_steps:
                break

Resume. `loader.state_dict()` is `{"epoch", "sample_in_epoch", "num_canonical_nodes",
"shuffle_seed", "initial_physical_nodes"}`: how many samples of which epoch all ranks together
have consumed (batches prefetched by workers are not counted). A new loader given that state via
`load_state_dict` continues with exactly the remaining batches of that epoch, same content and
order, then carries on with the following epochs. A state taken after the last batch of an epoch
resumes into an *empty* pass over that epoch (zero batches) before the next one starts, which a
step-driven loop like the one above absorbs. Batches are reproduced exactly with the same
shards, seed, per-rank batch size and world size; with another world size streaming resumes at
the same global sample position (`num_canonical_nodes`, saved in the state, keeps the global
order) but regroups samples into batches differently.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streaming import Stream, StreamingDataLoader, StreamingDataset
from streaming.base.constant import SHM_TO_CLEAN
from streaming.base.util import clean_stale_shared_memory

from data_pipeline.loading.collators import stack_flow, stack_images, stack_tokens
from data_pipeline.shards.manifest import KINDS, read_manifest
from data_pipeline.shards.packing import SPLITS
from data_pipeline.shards.remote import absolute, is_url, join

__all__ = [
    "EmptySplitError",
    "build_dataloader",
    "build_dataset",
    "collate_for",
    "ensure_distributed_env",
]

logger = logging.getLogger(__name__)


class EmptySplitError(ValueError):
    """A split of a shard directory holds no sample (the trainer runs without validation)."""


# What torchrun, deepspeed and our launchers set on every rank (streaming reads the first four);
# a process that starts other jobs or ranks removes all of them from their environment.
DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE", "LOCAL_RANK")
LAUNCHER_VARS = (*DIST_VARS, "MASTER_ADDR", "MASTER_PORT")
_shm_checked = False
_SHM_DIR = Path("/dev/shm")
_SHM_NAME = re.compile(r"^(\d{6})_(?:" + "|".join(map(re.escape, SHM_TO_CLEAN)) + ")$")


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore the stop signals the trainer handles.

    Slurm signals every process of a job step (SIGUSR1/SIGUSR2 warnings, SIGTERM), a terminal's
    Ctrl-C every process of its foreground group (SIGINT); a worker killed by one would take the
    training process down before it can save its checkpoint.
    """
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)


def _held_shared_memory() -> set[str]:
    """Names of the /dev/shm files some process of this machine has open or mapped."""
    held = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:  # a process that ended, or another user's (whose segments we cannot unlink)
            paths = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            paths += [line.split(None, 5)[-1] for line in (proc / "maps").read_text().splitlines()]
        except OSError:
            continue
        held.update(
            Path(p.removesuffix(" (deleted)")).name for p in paths if p.startswith("/dev/shm/")
        )
    return held


def clean_leaked_shared_memory() -> list[str]:
    """Unlinks streaming's shared memory that no process holds any more; returns the names.

    Streaming names a dataset's segments `<prefix>_<kind>` in /dev/shm; a killed run leaves them
    behind. Streaming's `clean_stale_shared_memory()` walks prefixes from 0 and stops at the first
    one without segments, but streaming skips prefixes whose filelocks remain in the temp
    directory, so a killed run's segments usually lie beyond such a gap; and it unlinks the
    segments of runs that are still streaming. Here a prefix is leaked when no process has any
    of its segments open or mapped (/proc/<pid>/fd and maps; streaming keeps both while a dataset
    lives). Without /proc this falls back to streaming's function.
    """
    if not Path("/proc/self/maps").is_file() or not _SHM_DIR.is_dir():
        clean_stale_shared_memory()
        return []
    by_prefix: dict[str, list[str]] = {}
    for p in _SHM_DIR.iterdir():
        if m := _SHM_NAME.match(p.name):
            by_prefix.setdefault(m.group(1), []).append(p.name)
    if not by_prefix:
        return []
    held = _held_shared_memory()
    removed = []
    for names in by_prefix.values():
        if held.isdisjoint(names):
            for name in names:
                with contextlib.suppress(OSError):  # another user's, or just removed
                    (_SHM_DIR / name).unlink()
                    removed.append(name)
    if removed:
        logger.info("removed shared memory leaked by killed runs: %s", ", ".join(sorted(removed)))
    return removed


class ShardFetchError(RuntimeError):
    """A shard could not be downloaded after streaming's retries (the message names it)."""


class CheckedStreamingDataset(StreamingDataset):
    """`StreamingDataset` whose epoch fails loudly when a shard cannot be fetched.

    When its download thread fails (the retries spent), mosaicml-streaming 0.13 ends the epoch
    early and silently, and only the next epoch raises a bare "Background thread failed": a rank
    would train on part of its data and fall out of step with the others. Here the epoch raises
    `ShardFetchError` with the download error instead, which names the shard's URL.
    """

    _failure: BaseException | None = None

    def on_exception(self, future: Any) -> None:
        if future.exception() is not None:
            self._failure = future.exception()
        super().on_exception(future)

    def __iter__(self) -> Any:
        yield from super().__iter__()
        if self._failure is not None:
            raise ShardFetchError(
                f"a shard could not be read after streaming's retries (data.download_retry): "
                f"{type(self._failure).__name__}: {self._failure}"
            ) from self._failure


def ensure_distributed_env(*, clean_shared_memory: bool = True) -> dict[str, int]:
    """Sets the environment streaming needs, and cleans leaked shared memory once per process.

    Without any of `WORLD_SIZE`, `RANK`, `LOCAL_WORLD_SIZE`, `LOCAL_RANK` set, this is a single
    process and they are set to `1, 0, 1, 0`. With some set, all four must be (launchers such as
    torchrun and deepspeed set them; under Slurm, `pretrain.train.distributed` derives them).

    Only the first call in a process acts on `clean_shared_memory`: it runs
    `clean_leaked_shared_memory()`, which unlinks the streaming shared memory of this machine that
    no process holds (left by killed runs); runs streaming meanwhile keep theirs.

    Args:
        clean_shared_memory: Clean leaked shared memory on the first call.

    Returns:
        The four values.

    Raises:
        ValueError: If only some of the variables are set, or they are inconsistent.
    """
    global _shm_checked
    present = [name for name in DIST_VARS if name in os.environ]
    if not present:
        os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_WORLD_SIZE="1", LOCAL_RANK="0")
    elif len(present) < len(DIST_VARS):
        missing = [name for name in DIST_VARS if name not in os.environ]
        raise ValueError(
            f"environment sets {present} but not {missing}; mosaicml-streaming needs all of "
            f"{list(DIST_VARS)} (set by torchrun/deepspeed, "
            "or pretrain.train.distributed under Slurm)"
        )
    try:
        env = {name: int(os.environ[name]) for name in DIST_VARS}
    except ValueError as err:
        raise ValueError(f"non-integer distributed environment variable: {err}") from None
    world, rank, local_world, local_rank = (env[name] for name in DIST_VARS)
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world) or world % local_world:
        raise ValueError(f"inconsistent distributed environment: {env}")
    if not _shm_checked:
        _shm_checked = True
        if clean_shared_memory:
            clean_leaked_shared_memory()
    return env


def _split_info(data_dir: str, split: str) -> dict[str, Any]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    manifest = read_manifest(data_dir)
    info = manifest["splits"][split]
    kind = manifest.get("kind")
    if info["samples"] == 0 and kind in ("image", "flow"):
        fraction = "larger" if split == "val" else "smaller"
        raise EmptySplitError(
            f"{join(data_dir, split)} has no {'images' if kind == 'image' else 'pairs'} "
            f"(manifest: {manifest['rejected_count']} inputs rejected); use more inputs or a "
            f"{fraction} --val-fraction ({KINDS[kind]})"
        )
    if info["samples"] == 0 and kind == "video":
        fraction = "larger" if split == "val" else "smaller"
        raise EmptySplitError(
            f"{join(data_dir, split)} has no clips (manifest: "
            f"{manifest['clips']['kept']} clips kept in all); use more videos or a {fraction} "
            "--val-fraction in `perceiver data prepare-video`"
        )
    if info["samples"] == 0:
        raise EmptySplitError(
            f"{join(data_dir, split)} has no samples (manifest: {info['documents']} documents, "
            f"{info['tokens_dropped']} tokens dropped as a partial sample); use more text, a "
            "larger val_fraction or a shorter seq_len"
        )
    return info


def _cache_dir(cache_root: str | os.PathLike[str], data_dir: str, split: str) -> str:
    # Deterministic (every rank of a node must pass the same `local`) and distinct per dataset.
    digest = hashlib.blake2b(data_dir.encode(), digest_size=6).hexdigest()
    name = data_dir.rstrip("/").rsplit("/", 1)[-1]
    return str(Path(cache_root) / f"{name}-{digest}" / split)


def build_dataset(
    data_dir: str | os.PathLike[str],
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    cache_root: str | os.PathLike[str] | None = None,
    epoch_size: int | None = None,
    predownload: int | None = None,
    num_canonical_nodes: int | None = None,
    shuffle_block_size: int | None = None,
    cache_limit: int | str | None = None,
    download_retry: int = 2,
    download_timeout: float = 60.0,
) -> StreamingDataset:
    """Builds the `StreamingDataset` of one split (what `build_dataloader` wraps).

    Args:
        data_dir: A shard directory (`perceiver data prepare`, with `manifest.json`), or its URL
            (`s3://bucket/prefix`, read through `cache_root`).
        split: `"train"` or `"val"`.
        batch_size: Per-rank batch size; streaming uses it to partition samples so that resume
            and elastic re-partitioning are deterministic. Must equal the loader's batch size.
        shuffle: Shuffle (`py1e`, streaming's default algorithm) with a new order every epoch.
        seed: Shuffle seed (`shuffle_seed`).
        cache_root: If given, shards are read from `data_dir/split` as a remote and copied under
            this directory (e.g. node-local SSD for data on a network filesystem); otherwise they
            are read in place. Required for a URL.
        epoch_size: Samples per epoch over all ranks (default: the split size); larger values
            repeat samples, smaller ones subsample.
        predownload: Samples to prepare ahead per worker (default `8 * batch_size`).
        num_canonical_nodes: Streaming's canonical node count (default: the number of physical
            nodes); fix it to keep the sample order when the node count changes.
        shuffle_block_size: Shuffle block size in samples (streaming's default when None).
        cache_limit: Most bytes kept under `cache_root` (e.g. `"20gb"`): streaming evicts the
            least recently used shards, so a corpus larger than the disk streams through it.
        download_retry: Attempts per shard download before the error names the shard.
        download_timeout: Seconds allowed per shard download.

    Returns:
        The dataset; samples are `{"tokens": uint16 array [sample_len]}`.

    Raises:
        FileNotFoundError: If `data_dir` is not a complete shard directory.
        ValueError: For an unknown split or a bad batch size; `EmptySplitError` for an empty one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return streams_dataset(
        [(os.fspath(data_dir), None)],
        split,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        cache_root=cache_root,
        epoch_size=epoch_size,
        predownload=predownload,
        num_canonical_nodes=num_canonical_nodes,
        shuffle_block_size=shuffle_block_size,
        cache_limit=cache_limit,
        download_retry=download_retry,
        download_timeout=download_timeout,
    )


def streams_dataset(
    datasets: list[tuple[str, float | None]],
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    cache_root: str | os.PathLike[str] | None,
    epoch_size: int | None,
    predownload: int | None,
    num_canonical_nodes: int | None,
    shuffle_block_size: int | None,
    cache_limit: int | str | None = None,
    download_retry: int = 2,
    download_timeout: float = 60.0,
) -> StreamingDataset:
    """One `StreamingDataset` over the `split` of shard directories, one `Stream` each.

    `datasets` pairs each directory with its proportion (None: its own size); the other
    arguments are those of `build_dataset`. One dataset is the same as streaming's
    `remote`/`local` arguments (streaming builds that single `Stream` itself).
    """
    ensure_distributed_env()
    streams = []
    for data_dir, proportion in datasets:
        root = absolute(data_dir)
        _split_info(root, split)
        if cache_root is None:
            if is_url(root):
                raise ValueError(
                    f"{root}: reading shards from object storage needs a node-local cache "
                    "directory (cache_root; data.cache_dir in a training config)"
                )
            remote, local = None, join(root, split)
        else:
            remote, local = join(root, split), _cache_dir(cache_root, root, split)
        streams.append(Stream(remote=remote, local=local, proportion=proportion))
    return CheckedStreamingDataset(
        streams=streams,
        shuffle=shuffle,
        shuffle_seed=seed,
        batch_size=batch_size,
        epoch_size=epoch_size,
        predownload=predownload if predownload is not None else 8 * batch_size,
        num_canonical_nodes=num_canonical_nodes,
        shuffle_block_size=shuffle_block_size,
        cache_limit=cache_limit,
        download_retry=download_retry,
        download_timeout=download_timeout,
    )


def collate_for(manifest: dict[str, Any]) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The `collate_fn` for the samples of a shard directory, by its manifest's `kind`."""
    kind = manifest.get("kind")
    if kind == "video":
        from data_pipeline.video.shards import stack_video

        return stack_video
    if kind == "image":
        return stack_images
    if kind == "flow":
        return stack_flow
    return stack_tokens


def build_dataloader(
    data_dir: str | os.PathLike[str],
    split: str,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = True,
    cache_root: str | os.PathLike[str] | None = None,
    epoch_size: int | None = None,
    predownload: int | None = None,
    num_canonical_nodes: int | None = None,
    shuffle_block_size: int | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
    collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    cache_limit: int | str | None = None,
    download_retry: int = 2,
    download_timeout: float = 60.0,
) -> StreamingDataLoader:
    """Builds the resumable loader of one split, yielding `{"tokens": long[batch_size, L]}`.

    Call `ensure_distributed_env()` (or initialise `torch.distributed`) first in multi-rank runs;
    see the module docstring for how to loop over epochs and resume.

    Args:
        data_dir: A shard directory written by `perceiver data prepare`, or its URL.
        split: `"train"` or `"val"`.
        batch_size: Per-rank (micro-)batch size.
        shuffle: Shuffle samples (use False for evaluation).
        seed: Shuffle seed.
        num_workers: DataLoader worker processes (0 reads in the training process).
        drop_last: Drop a last incomplete batch (keep True for training: resume counts samples).
        cache_root: Copy shards under this directory instead of reading them in place.
        epoch_size: Samples per epoch over all ranks (default: the split size).
        predownload: Samples to prepare ahead per worker (default `8 * batch_size`).
        num_canonical_nodes: See `build_dataset`.
        shuffle_block_size: See `build_dataset`.
        pin_memory: Pin batches for faster host-to-GPU copies.
        persistent_workers: Keep workers alive between epochs (needs `num_workers > 0`).
        prefetch_factor: Batches prefetched per worker (needs `num_workers > 0`).
        collate_fn: Turns a list of samples into a batch; default: the one the manifest's
            `kind` calls for (`collate_for`): `stack_tokens`, `stack_video` for video shards,
            `stack_images` for image shards, `stack_flow` for flow shards.
        cache_limit: See `build_dataset`.
        download_retry: See `build_dataset`.
        download_timeout: See `build_dataset`.

    Returns:
        A `StreamingDataLoader` with `state_dict()` / `load_state_dict()`.

    Raises:
        FileNotFoundError: If `data_dir` is not a complete shard directory.
        ValueError: For an unknown split, or one too small for one batch per rank;
            `EmptySplitError` for an empty one.
    """
    dataset = build_dataset(
        data_dir,
        split,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        cache_root=cache_root,
        epoch_size=epoch_size,
        predownload=predownload,
        num_canonical_nodes=num_canonical_nodes,
        shuffle_block_size=shuffle_block_size,
        cache_limit=cache_limit,
        download_retry=download_retry,
        download_timeout=download_timeout,
    )
    world = int(os.environ["WORLD_SIZE"])
    per_rank = math.ceil(dataset.epoch_size / world)
    if drop_last and per_rank < batch_size:
        raise ValueError(
            f"{join(data_dir, split)}: {dataset.epoch_size} samples per epoch give {per_rank} per "
            f"rank over {world} ranks, less than one batch of {batch_size} (drop_last=True)"
        )
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    if num_workers:
        extra["worker_init_fn"] = ignore_stop_signals
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_fn or collate_for(read_manifest(data_dir)),
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        **extra,
    )
