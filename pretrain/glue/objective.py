"""The ``classification`` objective: GLUE fine-tuning of ``perceiver_io_classifier`` models.

What the trainer sees (``pretrain.objectives.text.Objective``):

* ``build_loader(cfg, split, shuffle)``: the GLUE files of ``data.dir`` (``<glue_dir>/<TASK>``),
  encoded with ``glue.tokenizer``, as a resumable :class:`~pretrain.glue.data.TrainLoader` for
  ``data.train_split`` and a padded :class:`~pretrain.glue.data.EvalLoader` otherwise. The
  trainer uses it instead of its streaming loader.
* ``transform``: the identity (nothing is random in a GLUE batch).
* ``step``: cross-entropy over the classes, or mean squared error for regression (STS-B), over
  the rows with weight 1; it returns sums from which ``summarize`` computes loss, accuracy, F1,
  Matthews correlation (binary confusion counts) and Pearson correlation (moment sums), exact
  over all ranks. Spearman's correlation needs every prediction and is computed by the final
  evaluation (``pretrain.glue.finetune.evaluate_run``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.glue import metrics as M
from pretrain.glue.data import EvalLoader, TrainLoader
from pretrain.glue.tasks import (
    EncodedSplit,
    TaskSpec,
    encode_examples,
    get_task,
    load_tokenizer,
    read_split,
)
from pretrain.objectives.text import Objective, register_objective


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
    max_length = cfg.glue.max_length or cfg.model["max_seq_len"]
    return encode_examples(examples, task, load_tokenizer(cfg.glue.tokenizer), max_length)


@register_objective
class ClassificationObjective(Objective):
    """Sentence (pair) classification and regression on a GLUE task (see the module docstring)."""

    name = "classification"
    model_types = ("perceiver_io_classifier",)
    stat_keys = ("loss_sum", "count", "correct", "tp", "fp", "fn", "tn")
    stat_keys += ("sum_p", "sum_y", "sum_pp", "sum_yy", "sum_py")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.task = get_task(cfg.glue.task)
        self.eval_batch_size = cfg.trainer.micro_batch_size

    def build_loader(self, cfg: Any, split: str, shuffle: bool) -> TrainLoader | EvalLoader:
        """The loader of ``split`` on this rank (the trainer calls this once per split)."""
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

    @classmethod
    def check_data(cls, cfg: Any) -> None:
        """Refuses a task, task directory, tokenizer or model that do not fit together."""
        from pretrain.config import ConfigError

        if not cfg.glue.task:
            raise ConfigError("glue.task: required for a perceiver_io_classifier model")
        task = get_task(cfg.glue.task)
        model_cfg = cfg.model_config()
        if model_cfg.num_classes != task.num_classes:
            raise ConfigError(
                f"model.num_classes: {task.dir_name} needs {task.num_classes}, "
                f"got {model_cfg.num_classes}"
            )
        task_dir = Path(cfg.data.dir)
        splits = [cfg.data.train_split] + ([cfg.data.val_split] if cfg.trainer.val_every else [])
        for split in splits:
            if not (task_dir / f"{split}.tsv").is_file():
                raise ConfigError(
                    f"data.dir: {task_dir / f'{split}.tsv'} not found (data.dir must be the "
                    f"task's directory of the official GLUE layout: <glue_dir>/{task.dir_name})"
                )
        try:
            tokenizer = load_tokenizer(cfg.glue.tokenizer)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"glue.tokenizer: {e}") from None
        if tokenizer.vocab_size > model_cfg.vocab_size:
            raise ConfigError(
                f"glue.tokenizer: {cfg.glue.tokenizer} has {tokenizer.vocab_size} ids, more than "
                f"model.vocab_size={model_cfg.vocab_size}"
            )
        if cfg.glue.max_length > model_cfg.max_seq_len:
            raise ConfigError(
                f"glue.max_length: {cfg.glue.max_length} exceeds model.max_seq_len="
                f"{model_cfg.max_seq_len}"
            )
