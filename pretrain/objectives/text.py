"""The text objectives (``pretrain.objectives.base.Objective``) over packed token shards:

* ``mlm``: cross-entropy on masked positions only. Only those positions are decoded (the Perceiver
  IO decoder's queries are independent of each other, so this is exact), which removes ~85% of
  the decoder's work.
* ``ar``: next-token cross-entropy on the positions the latents predict (the last
  ``num_latents``); bits per byte = loss / ln 2 for the byte tokenizer.

Their settings are the ``objective`` section of the config (``pretrain.config.objectives``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from pretrain.objectives.base import Objective

IGNORE = -100


def gather_label_positions(labels_bn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions carrying a label, left-packed per row and padded to the row maximum.

    Returns ``positions_bk`` (long [B, K]) and their labels ``labels_bk`` ([B, K], IGNORE on
    padding), K = the largest number of labelled positions in any row (at least 1).
    """
    unlabeled_bn = (labels_bn == IGNORE).to(torch.int8)
    k = max(int((1 - unlabeled_bn).sum(dim=1).max().item()), 1)
    order_bn = torch.argsort(unlabeled_bn, dim=1, stable=True)  # labelled positions first
    positions_bk = order_bn[:, :k]
    return positions_bk, labels_bn.gather(1, positions_bk)


def _sum_ce(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    logits = logits.float().reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    valid = labels != IGNORE
    loss_sum = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & valid).sum()
    return {"loss_sum": loss_sum, "correct": correct, "count": valid.sum()}


class MLMObjective(Objective):
    name = "mlm"
    model_types = ("perceiver_io_mlm",)
    shard_kind = "text"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        from data_pipeline.loading.collators import MLMMasker
        from data_pipeline.shards.manifest import read_manifest
        from data_pipeline.tokenization.tokenizer import tokenizer_from_manifest

        # every dataset of a mixture was checked to share one tokenizer (check_shards)
        data_dir = cfg.data.dataset_dirs()[0][1]
        tokenizer = tokenizer_from_manifest(data_dir, read_manifest(data_dir))
        settings = cfg.objective
        self.masker = MLMMasker(
            tokenizer, mask_prob=settings.mask_prob, seed=cfg.trainer.seed, unit=settings.mask_unit
        )

    def transform(self, raw, key):
        return self.masker(raw["tokens"], key)

    def step(self, model, batch):
        positions_bk, labels_bk = gather_label_positions(batch["labels"])
        logits_bkv = model(
            batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            output_positions=positions_bk,
        )
        sums = _sum_ce(logits_bkv, labels_bk)
        loss = sums["loss_sum"] / sums["count"].clamp(min=1)
        sums["loss_sum"] = sums["loss_sum"].detach()
        return loss, sums

    def summarize(self, sums, prefix):
        out = super().summarize(sums, prefix)
        # Cross-entropy of the masked bytes in bits (the tokenizer is bytes).
        out[f"{prefix}/bits_per_byte"] = out[f"{prefix}/loss"] / math.log(2)
        return out


class ARObjective(Objective):
    name = "ar"
    model_types = ("perceiver_ar",)
    shard_kind = "text"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        from data_pipeline.loading.collators import ARTargets

        self.targets = ARTargets()

    def transform(self, raw, key):
        return self.targets(raw["tokens"], key)

    def step(self, model, batch):
        logits_blv = model(batch["input_ids"])
        labels_bl = batch["labels"][:, -logits_blv.shape[1] :]
        sums = _sum_ce(logits_blv, labels_bl)
        loss = sums["loss_sum"] / sums["count"].clamp(min=1)
        sums["loss_sum"] = sums["loss_sum"].detach()
        return loss, sums

    def summarize(self, sums, prefix):
        out = super().summarize(sums, prefix)
        out[f"{prefix}/bits_per_byte"] = out[f"{prefix}/loss"] / math.log(2)
        return out
