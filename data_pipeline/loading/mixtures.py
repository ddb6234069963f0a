"""Mixtures: several shard directories sampled in fixed proportions (70% C4 / 30% Wikipedia).

Training reads one `StreamingDataset` over one mosaicml-streaming `Stream` per dataset, each with
its `proportion`: every epoch takes `round(epoch_size * proportion)` samples of each dataset
(repeating a small one, subsampling a large one), shuffled together deterministically from
`(seed, epoch)`. The loader's `state_dict()` resumes mid-epoch exactly as for one dataset, and
`num_canonical_nodes` in that state keeps the global sample order when the world size changes
(a run checkpointed on 2 ranks continues on 1 or 4 ranks with the same global batches, as long as
the global batch is the same; tests show it).

Validation keeps the datasets apart: `build_val_loader` returns an `InterleavedLoader` over one
unshuffled loader per dataset's `val` split. It alternates their batches in the training
proportions (deterministic weighted round robin, identical on every rank), so the first N
batches evaluated are a fixed, representative set, and each batch comes from one dataset
(`loader.last_source` names it, for per-dataset metrics).

All datasets of a mixture must share a tokenizer and sample length (`manifest.check_shards`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from data_pipeline.loading.dataset import (
    EmptySplitError,
    build_dataloader,
    collate_for,
    ignore_stop_signals,
    streams_dataset,
)
from data_pipeline.shards.manifest import check_shards
from data_pipeline.shards.remote import absolute

__all__ = [
    "InterleavedLoader",
    "MixtureSource",
    "build_mixture_dataloader",
    "build_val_loader",
]


@dataclass(frozen=True)
class MixtureSource:
    """One dataset of a mixture.

    Attributes:
        name: A short name (`c4`, `wikipedia`), used in messages and metrics.
        data_dir: A shard directory written by `perceiver data prepare`.
        proportion: Its share of every training epoch (normalised over the mixture).
    """

    name: str
    data_dir: str
    proportion: float = 1.0

    def __post_init__(self) -> None:
        if not self.proportion > 0:
            raise ValueError(f"mixture source {self.name!r}: proportion must be > 0")


def _normalised(sources: Sequence[MixtureSource]) -> list[float]:
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"mixture source names must be unique, got {names}")
    total = sum(s.proportion for s in sources)
    return [s.proportion / total for s in sources]


def build_mixture_dataloader(
    sources: Sequence[MixtureSource],
    split: str,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    cache_root: str | os.PathLike[str] | None = None,
    epoch_size: int | None = None,
    predownload: int | None = None,
    num_canonical_nodes: int | None = None,
    shuffle_block_size: int | None = None,
    drop_last: bool = True,
    pin_memory: bool = False,
    cache_limit: int | str | None = None,
    download_retry: int = 2,
    download_timeout: float = 60.0,
) -> Any:
    """The training loader of a mixture: one `StreamingDataset` over weighted `Stream`s.

    Args:
        sources: The datasets and their proportions.
        split: Split read from every dataset (`train`).
        batch_size: Per-rank (micro-)batch size.
        shuffle: Shuffle (the order depends only on the seed and epoch).
        seed: Shuffle seed.
        num_workers: DataLoader workers.
        cache_root: Copy shards under this directory instead of reading them in place.
        epoch_size: Samples per epoch over all ranks (default: the datasets' total).
        predownload: Samples prepared ahead per worker (default `8 * batch_size`).
        num_canonical_nodes: Streaming's canonical node count (saved in the loader state).
        shuffle_block_size: Shuffle block size in samples.
        drop_last: Drop an incomplete last batch.
        pin_memory: Pin batches.
        cache_limit: Most bytes kept under `cache_root` (see `streaming.build_dataset`).
        download_retry: Attempts per shard download.
        download_timeout: Seconds per shard download.

    Returns:
        A `StreamingDataLoader` yielding `{"tokens": long[batch_size, L]}`, with
        `state_dict()` / `load_state_dict()`.

    Raises:
        ValueError: For an empty mixture, duplicate names, or datasets that do not fit together.
    """
    from streaming import StreamingDataLoader

    if not sources:
        raise ValueError("a mixture needs at least one source")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    proportions = _normalised(sources)
    roots = [absolute(s.data_dir) for s in sources]
    first = check_shards(roots)
    dataset = streams_dataset(
        list(zip(roots, proportions)),
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
    if drop_last and math.ceil(dataset.epoch_size / world) < batch_size:
        raise ValueError(
            f"mixture {[s.name for s in sources]}: {dataset.epoch_size} samples per epoch are "
            f"less than one batch of {batch_size} on each of {world} ranks"
        )
    extra: dict[str, Any] = (
        {"persistent_workers": False, "worker_init_fn": ignore_stop_signals} if num_workers else {}
    )
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_for(first),
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        **extra,
    )


class InterleavedLoader:
    """Alternates the batches of several loaders in fixed proportions (validation of mixtures).

    The pattern is a smooth weighted round robin over the proportions, the same on every rank
    and every pass; a loader that runs out drops out of the pattern. `len()` is the total.

    Args:
        loaders: `name -> loader`, in mixture order.
        proportions: `name -> weight`.
    """

    def __init__(self, loaders: dict[str, Any], proportions: dict[str, float]) -> None:
        if set(loaders) != set(proportions) or not loaders:
            raise ValueError("one proportion per loader is needed")
        self.loaders = loaders
        self.proportions = proportions
        self.last_source: str | None = None

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders.values())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iterators = {name: iter(loader) for name, loader in self.loaders.items()}
        credit = dict.fromkeys(iterators, 0.0)
        while iterators:
            total = sum(self.proportions[name] for name in iterators)
            for name in iterators:
                credit[name] += self.proportions[name] / total
            name = max(iterators, key=lambda n: (credit[n], -list(self.loaders).index(n)))
            credit[name] -= 1.0
            try:
                batch = next(iterators[name])
            except StopIteration:
                del iterators[name], credit[name]
                continue
            self.last_source = name
            yield batch


def build_val_loader(
    sources: Sequence[MixtureSource],
    batch_size: int,
    *,
    split: str = "val",
    num_workers: int = 0,
    cache_root: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
    predownload: int | None = None,
    download_retry: int = 2,
    download_timeout: float = 60.0,
) -> InterleavedLoader:
    """Validation of a mixture: every dataset's own `val` split, unshuffled, interleaved.

    Datasets whose split has no sample are left out (a warning names them); at least one must
    have samples. The streaming settings (`cache_limit`, ...) are those of `build_dataloader`.

    Raises:
        EmptySplitError: If no dataset has validation samples.
    """
    proportions = dict(zip((s.name for s in sources), _normalised(sources)))
    loaders: dict[str, Any] = {}
    missing = []
    for source in sources:
        try:
            loaders[source.name] = build_dataloader(
                source.data_dir,
                split,
                batch_size,
                shuffle=False,
                num_workers=num_workers,
                drop_last=False,
                cache_root=cache_root,
                cache_limit=cache_limit,
                predownload=predownload,
                download_retry=download_retry,
                download_timeout=download_timeout,
            )
        except ValueError as err:
            missing.append(f"{source.name}: {err}")
    if not loaders:
        raise EmptySplitError(
            "no dataset of the mixture has validation samples: " + "; ".join(missing)
        )
    if missing:
        import logging

        logging.getLogger(__name__).warning("validation without %s", "; ".join(missing))
    return InterleavedLoader(loaders, {name: proportions[name] for name in loaders})
