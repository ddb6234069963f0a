"""The ``classification`` objective: GLUE fine-tuning of ``perceiver_io_classifier`` models.

What the trainer sees (``pretrain.objectives.base.Objective``):

* ``build_loader(cfg, split, shuffle)``: the GLUE files of ``data.dir`` (``<glue_dir>/<TASK>``),
  encoded with ``glue.tokenizer`` (``pretrain.glue.data.load_split``), as a resumable
  :class:`~pretrain.glue.data.TrainLoader` for ``data.train_split`` and a padded
  :class:`~pretrain.glue.data.EvalLoader` otherwise. The trainer uses it instead of its
  streaming loader.
* ``transform``: the identity (nothing is random in a GLUE batch).
* ``step``: cross-entropy over the classes, or mean squared error for regression (STS-B), over
  the rows with weight 1; it returns sums from which ``summarize`` computes loss, accuracy, F1,
  Matthews correlation (binary confusion counts) and Pearson correlation (moment sums), exact
  over all ranks. Spearman's correlation needs every prediction and is computed by the final
  evaluation (``pretrain.glue.finetune.evaluate_run``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.glue import metrics as M
from pretrain.glue.data import EvalLoader, TrainLoader, load_split
from pretrain.glue.tasks import get_task
from pretrain.objectives.base import Objective


class ClassificationObjective(Objective):
    """Sentence (pair) classification and regression on a GLUE task (see the module docstring)."""

    name = "classification"
    model_types = ("perceiver_io_classifier",)
    shard_kind = None  # GLUE's TSV files, read into memory by build_loader
    stat_keys = ("loss_sum", "count", "correct", "tp", "fp", "fn", "tn")
    stat_keys += ("sum_p", "sum_y", "sum_pp", "sum_yy", "sum_py")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.task = get_task(cfg.glue.task)
        self.eval_batch_size = cfg.trainer.micro_batch_size

    def build_loader(self, cfg: Any, split: str, shuffle: bool) -> TrainLoader | EvalLoader:
        """The loader of ``split`` on this rank (the trainer calls this once per split), instead
        of the trainer's streaming loader."""
        data = load_split(cfg, split)
        if split == cfg.data.train_split:
            return TrainLoader(
                data, cfg.trainer.micro_batch_size, seed=cfg.data.shuffle_seed, shuffle=shuffle
            )
        return EvalLoader(data, self.eval_batch_size)

    def transform(self, raw: dict[str, Any], key: int) -> dict[str, torch.Tensor]:
        """The batch as the loader made it (nothing is random)."""
        return raw

    def step(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted loss of the batch and its summed statistics."""
        logits_bk = model(batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        weight = batch["weight"].float()
        count = weight.sum()
        zero = torch.zeros((), device=logits_bk.device)
        sums = {k: zero for k in self.stat_keys}
        if self.task.is_regression:  # MSE on scores mapped onto [-1, 1]
            out, y = logits_bk[:, 0], batch["labels"].float()
            loss_sum = ((out - self.task.model_target(y)) ** 2 * weight).sum()
            p, t = self.task.score(out.detach().double()), y.double()
            w = weight.double()
            sums.update(
                sum_p=(p * w).sum(),
                sum_y=(t * w).sum(),
                sum_pp=(p * p * w).sum(),
                sum_yy=(t * t * w).sum(),
                sum_py=(p * t * w).sum(),
            )
        else:
            y = batch["labels"].long()
            loss_sum = (F.cross_entropy(logits_bk, y.clamp(min=0), reduction="none") * weight).sum()
            pred = logits_bk.argmax(-1)
            sums["correct"] = ((pred == y).float() * weight).sum()
            if self.task.num_classes == 2:
                pos, true = pred == 1, y == 1
                sums.update(
                    tp=((pos & true).float() * weight).sum(),
                    fp=((pos & ~true).float() * weight).sum(),
                    fn=((~pos & true).float() * weight).sum(),
                    tn=((~pos & ~true).float() * weight).sum(),
                )
        loss = loss_sum / count.clamp(min=1)
        sums.update(loss_sum=loss_sum.detach(), count=count)
        return loss, sums

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Real (unpadded) input tokens of the batch."""
        return int(batch["attention_mask"].sum())

    def summarize(self, sums: dict[str, float], prefix: str) -> dict[str, float]:
        """Loss and the task's metrics that sums determine (fractions, not percent)."""
        n = max(sums["count"], 1.0)
        out = {f"{prefix}/loss": sums["loss_sum"] / n}
        if self.task.is_regression:
            out[f"{prefix}/pearson"] = M.pearson_from_sums(
                sums["count"],
                sums["sum_p"],
                sums["sum_y"],
                sums["sum_pp"],
                sums["sum_yy"],
                sums["sum_py"],
            )
            return out
        out[f"{prefix}/accuracy"] = sums["correct"] / n
        counts = [sums[k] for k in ("tp", "fp", "fn", "tn")]
        if "f1" in self.task.metrics:
            out[f"{prefix}/f1"] = M.f1_from_counts(*counts[:3])
        if "mcc" in self.task.metrics:
            out[f"{prefix}/mcc"] = M.mcc_from_counts(*counts)
        return out
