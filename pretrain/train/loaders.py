"""The training loop's data: one loader per split, and endless iteration over the training one.

An objective that reads no shards (GLUE's classification, from its task files) builds its own
loaders (:meth:`pretrain.objectives.base.Objective.build_loader`); every other objective reads MDS
shards through :func:`build_shard_loader`: one dataset (``data.dir``) or a mixture
(``data.mixture``), streamed by mosaicml-streaming, whose ``state_dict`` makes resumption exact.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from pretrain.config import Config


def build_loader(cfg: Config, objective: Any, split: str, shuffle: bool) -> Any:
    """The loader of ``split`` on this rank: the objective's own, else the shards'.

    Text objectives' training shards are checked against the model first (vocabulary, sample
    length, objective), naming ``model.vocab_size`` when the tokenizer does not fit.
    """
    loader = objective.build_loader(cfg, split, shuffle)
    if loader is not None:  # `is None`, not `or`: an empty loader has len() 0 and is falsy
        return loader
    if split == cfg.data.train_split and objective.shard_kind == "text":
        from data_pipeline.shards.manifest import check_shards

        check_shards(
            [d for _, d, _ in cfg.data.dataset_dirs()],
            max_seq_len=cfg.model.max_seq_len,
            objective=cfg.objective.name,
            vocab_size=cfg.model.vocab_size,
        )
    return build_shard_loader(cfg, split, shuffle)


def build_shard_loader(cfg: Config, split: str, shuffle: bool) -> Any:
    """A StreamingDataLoader over ``split`` of ``data.dir`` or of every ``data.mixture`` entry.

    The training split of a mixture samples the datasets in proportion; any other split of a
    mixture interleaves each dataset's own split in proportion.
    """
    from data_pipeline.loading.dataset import build_dataloader
    from data_pipeline.loading.mixtures import (
        MixtureSource,
        build_mixture_dataloader,
        build_val_loader,
    )

    # One cache per node: streaming's local leaders must not share a `local` dir (run_dir may be
    # on a shared filesystem, and a test cluster runs several Slurm nodes on one host).
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    cache_root = Path(cfg.data.cache_dir or Path(cfg.trainer.run_dir) / ".streaming_cache" / node)
    common = {
        "num_workers": cfg.data.num_workers,
        "cache_root": str(cache_root),
        **cfg.data.stream_options(),
    }
    if not cfg.data.mixture:
        return build_dataloader(
            cfg.data.dir,
            split,
            cfg.trainer.micro_batch_size,
            shuffle=shuffle,
            seed=cfg.data.shuffle_seed,
            **common,
        )
    sources = [MixtureSource(name, d, p) for name, d, p in cfg.data.dataset_dirs()]
    if split == cfg.data.train_split:
        return build_mixture_dataloader(
            sources,
            split,
            cfg.trainer.micro_batch_size,
            shuffle=shuffle,
            seed=cfg.data.shuffle_seed,
            **common,
        )
    return build_val_loader(sources, cfg.trainer.micro_batch_size, split=split, **common)


def build_val_loader(cfg: Config, objective: Any, is_main: bool) -> tuple[Any, str]:
    """The validation loader, or None and why: an empty split is warned about once, not fatal."""
    from data_pipeline.loading.dataset import EmptySplitError

    if not cfg.trainer.val_every:
        return None, ""
    try:
        return build_loader(cfg, objective, cfg.data.val_split, False), ""
    except EmptySplitError as err:
        why = f"no validation (trainer.val_every={cfg.trainer.val_every} skipped): {err}"
        if is_main:
            logging.getLogger(__name__).warning(why)
        return None, why


class EpochLoader:
    """Endless iteration over a loader, counting epochs."""

    def __init__(self, loader: Any, epoch: int) -> None:
        self.loader = loader
        self.epoch = epoch
        self._it = None

    def next(self) -> dict[str, torch.Tensor]:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
        raise RuntimeError(
            "data.dir: the training split yields no batch in a whole epoch; it has fewer samples "
            "than one global batch (trainer.micro_batch_size x world size)"
        )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (other values as they are)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
