"""Pretraining objectives: how a loader batch becomes a loss and metrics, kept out of the models.

An :class:`Objective` is everything the training loop needs to know about a task:

* ``transform(raw, key)``: the loader's CPU batch -> the model's batch. All randomness (MLM masks)
  comes from ``key``, unique per (micro-step, rank), so resumed runs see identical batches.
* ``step(model, batch)``: forward pass -> (mean loss, summed statistics). The sums are all-reduced
  across ranks and over the logging window, then turned into metrics by ``summarize``.
* ``num_tokens(batch)``: what ``perf/tokens_per_s`` counts.

Objectives here:

* ``mlm``: cross-entropy on masked positions only. Only those positions are decoded (the Perceiver
  IO decoder's queries are independent of each other, so this is exact), which removes ~85% of
  the decoder's work.
* ``ar``: next-token cross-entropy on the positions the latents predict (the last
  ``num_latents``); bits per byte = loss / ln 2 for the byte tokenizer.

New objectives register with :func:`register_objective` and name the model types they train.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

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


class Objective:
    """Base class: subclasses define ``transform``, ``step`` and ``stat_keys``."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    stat_keys: ClassVar[tuple[str, ...]] = ("loss_sum", "correct", "count")
    # What the shards it reads hold ("text", "video"); None: it reads no shards (build_loader).
    shard_kind: ClassVar[str | None] = None

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def build_loader(self, cfg: Any, split: str, shuffle: bool) -> Any:
        """This objective's own loader of ``split``, or None for the trainer's.

        Shard-backed objectives use the trainer's streaming loader over the MDS shards (None
        here); GLUE's classification objective overrides this to read its task files.
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
        """Forward + backward matmul FLOPs of one sample as this objective runs it (for MFU)."""
        return float(model_cfg.flops_per_sample())

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

    @classmethod
    def check_data(cls, cfg: Any) -> None:
        """Refuse shards that do not fit the model, before any process starts (ConfigError)."""
        from data_pipeline.shards.manifest import check_manifest
        from pretrain.config import ConfigError

        model_cfg = cfg.model_config()
        keys = [f"data.mixture[{i}].dir" for i in range(len(cfg.data.mixture))] or ["data.dir"]
        for key, (_, data_dir, _) in zip(keys, cfg.data.dataset_dirs()):
            try:
                check_manifest(
                    data_dir,
                    seq_len=model_cfg.max_seq_len,
                    objective=cls.name,
                    vocab_size=model_cfg.vocab_size,
                )
            except (OSError, ValueError) as e:  # OSError: a URL's bucket, credentials, network
                raise ConfigError(f"{key}: {e}") from None
        if cfg.data.mixture:
            from data_pipeline.loading.mixtures import check_datasets

            try:  # one tokenizer and one sample length across the mixture
                check_datasets([data_dir for _, data_dir, _ in cfg.data.dataset_dirs()])
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"data.mixture: {e}") from None


class MLMObjective(Objective):
    name = "mlm"
    model_types = ("perceiver_io_mlm",)
    shard_kind = "text"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        from data_pipeline.loading.collators import MLMMasker
        from data_pipeline.shards.manifest import read_manifest
        from data_pipeline.tokenization.tokenizer import tokenizer_from_manifest

        # every dataset of a mixture was checked to share one tokenizer (check_datasets)
        data_dir = cfg.data.dataset_dirs()[0][1]
        tokenizer = tokenizer_from_manifest(data_dir, read_manifest(data_dir))
        self.masker = MLMMasker(
            tokenizer, mask_prob=cfg.data.mask_prob, seed=cfg.trainer.seed, unit=cfg.data.mask_unit
        )

    def transform(self, raw, key):
        return self.masker(raw["tokens"], key)

    def flops_per_sample(self, model_cfg):
        # only the masked positions are decoded (see `step`)
        decoded = max(1, round(self.cfg.data.mask_prob * model_cfg.max_seq_len))
        return float(model_cfg.flops_per_sample(num_output_positions=decoded))

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


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


for _cls in (MLMObjective, ARObjective):
    register_objective(_cls)

# Objectives in their own modules register themselves on import.
from pretrain.glue import objective as _glue_objective  # noqa: E402, F401
from pretrain.objectives import multimodal as _multimodal_objective  # noqa: E402, F401


def objective_for_model(model_type: str) -> str:
    """The objective that trains ``model_type``."""
    for name, cls in OBJECTIVES.items():
        if model_type in cls.model_types:
            return name
    raise KeyError(f"no objective trains model type {model_type!r}")


def build_objective(cfg: Any) -> Objective:
    return OBJECTIVES[cfg.objective](cfg)


def check_data(cfg: Any) -> None:
    """Check ``cfg.data`` against the model (raises ConfigError naming the key)."""
    OBJECTIVES[cfg.objective].check_data(cfg)
