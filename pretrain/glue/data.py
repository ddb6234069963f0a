"""GLUE batches for the trainer: a resumable training loader and a padded evaluation loader.

GLUE splits are small (MNLI, the largest, is ~400k pairs), so an encoded split lives in memory as
one array of token ids plus offsets (:class:`pretrain.glue.tasks.EncodedSplit`) and the loaders
index it directly, in the training process, without DataLoader workers. This replaces the MDS
shards + streaming loader of pretraining (the trainer asks the objective for its loaders).

Batches: ``{"input_ids": long [B, L], "attention_mask": bool [B, L], "labels": long [B] (float
for regression), "weight": float [B], "row": long [B]}``. ``L`` is the longest example of the
batch rounded up to a multiple of 8 (Perceiver IO's cost is linear in ``L``); ``weight`` is 0 for
padding rows of the evaluation loader and ``row`` indexes the split.

Order and resumption (:class:`TrainLoader`): epoch ``e`` visits the examples in the permutation
drawn from ``(seed, e)``; global batch ``i`` of the epoch is positions ``[i * B * W, (i + 1) * B *
W)`` of it, and rank ``r`` takes its ``r``-th slice of ``B``. The last partial global batch is
dropped. ``state_dict()`` is ``{epoch, batch_in_epoch, ...}`` (batches handed out so far, the same
on every rank), and a loader given that state continues with exactly the batches an uninterrupted
run would have seen, as streaming's loader does for pretraining.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.glue.tasks import (
    EncodedSplit,
    TaskSpec,
    encode_examples,
    get_task,
    load_tokenizer,
    read_split,
)

PAD_MULTIPLE = 8


def make_batch(split: EncodedSplit, rows: np.ndarray, weight: np.ndarray | None = None):
    """The batch of examples ``rows`` of ``split`` (see the module docstring)."""
    lengths = split.lengths()[rows]
    width = int(-(-max(int(lengths.max()), 1) // PAD_MULTIPLE) * PAD_MULTIPLE)
    ids = np.full((len(rows), width), split.pad_id, dtype=np.int64)
    for j, (i, n) in enumerate(zip(rows, lengths)):
        ids[j, :n] = split.tokens[split.offsets[i] : split.offsets[i] + n]
    mask = np.arange(width)[None, :] < lengths[:, None]
    labels = torch.from_numpy(split.labels[rows].copy())
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": labels,
        "weight": torch.ones(len(rows)) if weight is None else torch.from_numpy(weight).float(),
        "row": torch.from_numpy(rows.astype(np.int64)),
    }


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TrainLoader:
    """Endless epochs of shuffled batches of one rank, resumable (see the module docstring).

    Args:
        split: The encoded training split.
        batch_size: Per-rank batch size.
        seed: Shuffle seed.
        shuffle: False visits the examples in file order every epoch.
        rank: This rank (default: from torch.distributed).
        world_size: Number of ranks (default: from torch.distributed).
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        default_rank, default_world = _rank_world()
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.epoch = 0
        self.batch_in_epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"{len(split)} training examples give no batch of {batch_size} per rank on "
                f"{self.world_size} rank(s); lower trainer.micro_batch_size"
            )

    def __len__(self) -> int:
        """Batches per epoch (on every rank)."""
        return len(self.split) // (self.batch_size * self.world_size)

    def order(self, epoch: int) -> np.ndarray:
        """The global order of the examples in ``epoch``."""
        if not self.shuffle:
            return np.arange(len(self.split))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.split), generator=gen).numpy()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The remaining batches of the current epoch; the next ``iter`` starts the next one."""
        order = self.order(self.epoch)
        global_batch = self.batch_size * self.world_size
        while self.batch_in_epoch < len(self):
            start = self.batch_in_epoch * global_batch + self.rank * self.batch_size
            self.batch_in_epoch += 1  # counted when handed out: the trainer consumes it at once
            yield make_batch(self.split, order[start : start + self.batch_size])
        self.epoch += 1
        self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """Position (epoch, batches handed out) and what it is only valid for."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_examples": len(self.split),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` was taken; the split, seed, batch and world must match."""
        for key in ("seed", "batch_size", "world_size", "num_examples"):
            mine = len(self.split) if key == "num_examples" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(
                    f"cannot resume the GLUE loader: {key} was {state[key]}, is now {mine} "
                    "(resume with the same data, seed, batch size and number of processes)"
                )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])


class EvalLoader:
    """Every example of a split exactly once, in file order, over all ranks.

    The split is padded (weight 0) to a multiple of ``batch_size * world_size`` so that every rank
    runs the same number of batches (ZeRO-3's forward gathers parameters collectively); rank ``r``
    takes batches ``r, r + W, ...``. Summed statistics weighted by ``weight`` are then exact.
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        default_rank, default_world = _rank_world()
        self.split = split
        self.batch_size = batch_size
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size

    def __len__(self) -> int:
        """Batches on each rank."""
        return -(-len(self.split) // (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.split)
        for i in range(len(self)):
            start = (i * self.world_size + self.rank) * self.batch_size
            positions = np.arange(start, start + self.batch_size)
            weight = (positions < n).astype(np.float32)
            rows = np.minimum(positions, n - 1)  # padding repeats the last example, weight 0
            yield make_batch(self.split, rows, weight)


def subsample_rows(n: int, limit: int, seed: int) -> np.ndarray | None:
    """A fixed random subset of ``limit`` of ``n`` rows (sorted), or None to keep all."""
    if not limit or limit >= n:
        return None
    gen = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(n, generator=gen)[:limit].numpy())


def load_split(
    cfg: Any, split: str, task_dir: str | Path | None = None, task: TaskSpec | None = None
) -> EncodedSplit:
    """``split`` of the run's GLUE task (or of ``task``: the diagnostic set of an MNLI run),
    encoded as the run's config says.

    Training splits are subsampled to ``glue.max_train_examples`` (a fixed random subset), dev
    splits cut to their first ``glue.max_eval_examples`` rows; test splits and the diagnostic set
    are always whole (a submission file must have every row).
    """
    submission = task is not None or split.startswith("test")
    task = task or get_task(cfg.glue.task)
    examples, _ = read_split(task_dir or cfg.data.dir, task, split)
    if split == cfg.data.train_split:
        rows = subsample_rows(len(examples), cfg.glue.max_train_examples, cfg.data.shuffle_seed)
        if rows is not None:
            examples = [examples[i] for i in rows]
    elif cfg.glue.max_eval_examples and not submission:
        examples = examples[: cfg.glue.max_eval_examples]
    max_length = cfg.glue.max_length or cfg.model.max_seq_len
    return encode_examples(examples, task, load_tokenizer(cfg.glue.tokenizer), max_length)
