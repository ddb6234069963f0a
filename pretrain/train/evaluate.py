"""Validation: the objective's metrics over a split, summed on every rank and all-reduced.

The trainer's periodic validation and ``perceiver eval`` (:mod:`pretrain.inference.evaluation`)
both call :func:`evaluate`, so on the same samples they report the same numbers. Validation's
random draws (MLM masks) use keys from ``VAL_KEY_OFFSET`` on, disjoint from training's, so a
validation never shifts what training draws next.
"""

from __future__ import annotations

from typing import Any

import torch

from pretrain.train.distributed import all_reduce_sum
from pretrain.train.loaders import to_device

VAL_KEY_OFFSET = 1 << 40  # validation masks use keys disjoint from training's


def accumulate(sums: dict[str, float], stats: dict[str, Any]) -> None:
    """Adds a step's statistics (tensors or floats) to ``sums``."""
    for k, v in stats.items():
        sums[k] = sums.get(k, 0.0) + float(v)


def reduce_sums(sums: dict[str, float], keys: tuple[str, ...], device) -> dict[str, float]:
    """Sum statistics over ranks (keys in a fixed order, so every rank reduces the same tensor)."""
    return dict(zip(keys, all_reduce_sum([sums.get(k, 0.0) for k in keys], device)))


@torch.no_grad()
def evaluate(
    engine, loader, objective: Any, max_batches: int, device, world_size: int
) -> dict[str, float]:
    """The objective's metrics on up to ``max_batches`` batches of every rank (collective)."""
    engine.eval()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    sums: dict[str, float] = {}
    n = min(max_batches, len(loader))
    for i, raw in enumerate(loader):
        if i >= n:
            break
        batch = objective.transform(to_device(raw, device), VAL_KEY_OFFSET + i * world_size + rank)
        _, stats = objective.step(engine, batch)
        accumulate(sums, stats)
    engine.train()
    return objective.summarize(reduce_sums(sums, objective.stat_keys, device), "val")
