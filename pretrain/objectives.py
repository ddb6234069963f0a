"""Losses and metrics of the pretraining objectives, kept out of the model files.

* MLM: cross-entropy on masked positions only. Only those positions are decoded (the Perceiver IO
  decoder's queries are independent of each other, so this is exact), which removes ~85% of the
  decoder's work.
* AR: next-token cross-entropy on the positions the latents predict (the last ``num_latents``);
  bits per byte = loss / ln 2 for the byte tokenizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def gather_label_positions(labels_bn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions carrying a label, left-packed per row and padded to the row maximum.

    Returns ``positions_bk`` (long [B, K]) and their labels ``labels_bk`` ([B, K], IGNORE on
    padding), K = the largest number of labelled positions in any row (at least 1).
    """
    unlabeled_bn = (labels_bn == IGNORE).to(torch.int8)
    k = max(int((1 - unlabeled_bn).sum(dim=1).max().item()), 1)
    order_bn = torch.argsort(unlabeled_bn, dim=1, stable=True)  # labelled positions first, in order
    positions_bk = order_bn[:, :k]
    return positions_bk, labels_bn.gather(1, positions_bk)


def _sum_ce(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = logits.float().reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    valid = labels != IGNORE
    loss_sum = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & valid).sum()
    return loss_sum, correct, valid.sum()


def mlm_step(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss over masked positions, and sums for metrics (loss_sum, correct, count)."""
    positions_bk, labels_bk = gather_label_positions(batch["labels"])
    logits_bkv = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        output_positions=positions_bk,
    )
    loss_sum, correct, count = _sum_ce(logits_bkv, labels_bk)
    loss = loss_sum / count.clamp(min=1)
    return loss, {"loss_sum": loss_sum.detach(), "correct": correct, "count": count}


def ar_step(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token loss over the latent positions, and sums for metrics."""
    logits_blv = model(batch["input_ids"])
    labels_bl = batch["labels"][:, -logits_blv.shape[1] :]
    loss_sum, correct, count = _sum_ce(logits_blv, labels_bl)
    loss = loss_sum / count.clamp(min=1)
    return loss, {"loss_sum": loss_sum.detach(), "correct": correct, "count": count}


STEP_FNS = {"mlm": mlm_step, "ar": ar_step}


def summarize(
    objective: str, loss_sum: float, correct: float, count: float, prefix: str
) -> dict[str, float]:
    """Turn summed statistics into the metrics users read."""
    count = max(count, 1.0)
    loss = loss_sum / count
    out = {f"{prefix}/loss": loss, f"{prefix}/accuracy": correct / count}
    if objective == "ar":
        out[f"{prefix}/bits_per_byte"] = loss / math.log(2)
    return out
