"""The objective interface: how a loader batch becomes a loss and metrics, kept out of the models.

An :class:`Objective` is everything the training loop needs to know about a task:

* ``transform(raw, key)``: the loader's CPU batch -> the model's batch. All randomness (MLM masks)
  comes from ``key``, unique per (micro-step, rank), so resumed runs see identical batches.
* ``step(model, batch)``: forward pass -> (mean loss, summed statistics). The sums are all-reduced
  across ranks and over the logging window, then turned into metrics by ``summarize``.
* ``num_tokens(batch)``: what ``perf/tokens_per_s`` counts.
* ``build_loader(cfg, split, shuffle)`` and ``shard_kind``: where its batches come from.

The objectives are in ``text`` (mlm, ar), ``multimodal`` (multimodal_ae) and ``classification``
(GLUE); ``registry`` names them all.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Objective:
    """Base class: subclasses define ``transform``, ``step`` and ``stat_keys``.

    ``cfg`` is the run's ``pretrain.config.Config``; the objective's own settings are
    ``cfg.objective`` (its section of the config tree, ``pretrain.config.objectives``), which
    also holds the pre-flight check of the run's data (``check_data``).
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    stat_keys: ClassVar[tuple[str, ...]] = ("loss_sum", "correct", "count")
    # What the trainer's streaming loader reads for this objective: "text" (packed token
    # shards), "video" (clip shards), or None (the objective builds its own loader).
    shard_kind: ClassVar[str | None] = None

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def build_loader(self, cfg: Any, split: str, shuffle: bool) -> Any | None:
        """This rank's loader of ``split``, or None (the default) for the trainer's own.

        Shard-backed objectives (``shard_kind`` "text" or "video") return None and use the
        trainer's streaming loader; the classification objective overrides this with its
        in-memory GLUE loaders.
        """
        return None

    def transform(self, raw: dict[str, Any], key: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        raise NotImplementedError

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def num_samples(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].shape[0]

    def flops_per_sample(self, model_cfg: Any) -> float:
        """Forward + backward matmul FLOPs of one sample as this objective runs it (for MFU);
        the objective's config section knows what it decodes."""
        return float(self.cfg.objective.flops_per_sample(model_cfg))

    def summarize(self, sums: dict[str, float], prefix: str) -> dict[str, float]:
        """Summed statistics -> the metrics users read (loss and accuracy of the counted items)."""
        count = max(sums["count"], 1.0)
        return {
            f"{prefix}/loss": sums["loss_sum"] / count,
            f"{prefix}/accuracy": sums["correct"] / count,
        }

    def images(self) -> dict[str, torch.Tensor]:
        """Images to log after an evaluation (tag -> uint8 [N, H, W, 3]); none by default."""
        return {}
