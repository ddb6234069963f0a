"""The vision objectives: image classification and optical flow (Perceiver IO, arXiv 2107.14795).

Both read shards through the trainer's streaming loader (kinds "image" and "flow", decoded in the
loader) and augment on the training device (:mod:`pretrain.objectives.augment`). ``transform``
only draws the batch's augmentation seed from ``(trainer.seed, key)``; ``step`` augments with a
generator of that seed when the model is in training mode and takes the deterministic evaluation
view (centre crop) otherwise, so validation and ``perceiver eval`` see the same pixels.

* ``image_classification``: cross-entropy with label smoothing; with MixUp/CutMix the soft target
  ``lam * y + (1 - lam) * y[perm]`` (the loss is the same mixture of the two cross-entropies).
  Metrics: loss (in evaluation plain cross-entropy, without smoothing), top-1 and top-5 accuracy
  against the images' own labels (integer counts summed over ranks in float64: exact).
* ``optical_flow``: the loss is the average end-point error (EPE, the L2 distance between
  predicted and true flow vectors) over valid pixels. The paper does not spell its training loss
  out in what we could consult (its appendix gives the optimiser, schedule and curriculum), so
  this is the metric optimised directly, as Sintel and KITTI report it. Metrics: ``epe`` and
  ``zero_flow_epe`` (the EPE of predicting no motion, the baseline a model must beat), and the
  fraction of valid pixels within 1 and 3 pixels. After an evaluation, ``images()`` holds frame 0
  of the first validation pair beside the predicted and the true flow in the Middlebury colour
  wheel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.objectives.augment.flow import FlowAugment, augment_flow_train, flow_eval_batch
from pretrain.objectives.augment.image import augment_train, eval_crops, mix_batch, normalize
from pretrain.objectives.base import Objective


def _training(model: nn.Module) -> bool:
    # DeepSpeed's engine.eval() switches only the wrapped module (engine.training stays True).
    return getattr(model, "module", model).training


def _param_dtype(model: nn.Module) -> torch.dtype:
    """The weights' dtype (bf16 under DeepSpeed's bf16 mode): what the inputs are cast to."""
    return next(model.parameters()).dtype


def _seed_of(seed: int, key: int, device: torch.device) -> torch.Tensor:
    from data_pipeline.loading.collators import mix_seed

    return torch.tensor(mix_seed(seed, key), dtype=torch.int64, device=device)


def _generator(batch: dict[str, torch.Tensor]) -> torch.Generator:
    return torch.Generator().manual_seed(int(batch["aug_seed"]))


class ImageClassificationObjective(Objective):
    """Cross-entropy of an image classifier (see the module docstring)."""

    name = "image_classification"
    model_types = ("perceiver_io_image_classifier",)
    shard_kind = "image"
    stat_keys = ("loss_sum", "samples", "correct", "correct5")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.model_cfg = cfg.model
        self.settings = cfg.objective
        self.seed = cfg.trainer.seed

    def transform(self, raw: dict[str, Any], key: int) -> dict[str, torch.Tensor]:
        """The loader's batch and the augmentation seed of this (micro-step, rank)."""
        return {
            "images": raw["images"],
            "sizes": raw["sizes"],
            "labels": raw["labels"],
            "aug_seed": _seed_of(self.seed, key, raw["labels"].device),
        }

    def model_inputs(
        self, batch: dict[str, torch.Tensor], training: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised images ``[b, 3, S, S]``, the mixing partner's labels and ``lam`` ``[b]``."""
        st, size = self.settings, self.model_cfg.image_size
        labels = batch["labels"]
        with torch.autocast(labels.device.type, enabled=False):
            if not training:
                x = normalize(eval_crops(batch["images"], batch["sizes"], size, st.eval_crop_ratio))
                return x, labels, torch.ones(labels.shape[0], device=labels.device)
            g = _generator(batch)
            x = augment_train(
                batch["images"],
                batch["sizes"],
                g,
                size,
                scale=tuple(st.crop_scale),
                ratio=tuple(st.crop_ratio),
                hflip=st.hflip,
                randaugment_ops=st.randaugment_ops,
                randaugment_magnitude=st.randaugment_magnitude,
            )
            mixed = mix_batch(
                x, labels, g, st.mixup_alpha, st.cutmix_alpha, st.mix_switch_prob, st.mix_prob
            )
        return mixed.images, mixed.labels_b, mixed.lam_b

    def step(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        images, partner, lam = self.model_inputs(batch, _training(model))
        logits = model(images.to(_param_dtype(model))).float()
        ls = self.settings.label_smoothing if _training(model) else 0.0
        ce = F.cross_entropy(logits, labels, label_smoothing=ls, reduction="none")
        if not torch.equal(partner, labels) or bool((lam < 1).any()):
            ce_partner = F.cross_entropy(logits, partner, label_smoothing=ls, reduction="none")
            ce = lam * ce + (1 - lam) * ce_partner
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        sums = {
            "loss_sum": ce.detach().sum(),
            "samples": torch.tensor(float(labels.shape[0]), device=logits.device),
            "correct": (top[:, 0] == labels).sum().float(),
            "correct5": (top == labels[:, None]).any(-1).sum().float(),
        }
        return ce.mean(), sums

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Pixels read by the model."""
        return batch["labels"].shape[0] * self.model_cfg.image_size**2

    def num_samples(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["labels"].shape[0]

    def summarize(self, sums: dict[str, float], prefix: str) -> dict[str, float]:
        n = max(sums["samples"], 1.0)
        return {
            f"{prefix}/loss": sums["loss_sum"] / n,
            f"{prefix}/top1": sums["correct"] / n,
            f"{prefix}/top5": sums["correct5"] / n,
        }


class OpticalFlowObjective(Objective):
    """Average end-point error of a flow model (see the module docstring)."""

    name = "optical_flow"
    model_types = ("perceiver_io_optical_flow",)
    shard_kind = "flow"
    stat_keys = ("epe_sum", "zero_epe_sum", "within1", "within3", "count", "samples")

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.model_cfg = cfg.model
        st = cfg.objective
        self.augment = FlowAugment(
            min_log2_scale=st.min_log2_scale,
            max_log2_scale=st.max_log2_scale,
            hflip=st.hflip,
            brightness=st.brightness,
            contrast=st.contrast,
            saturation=st.saturation,
            jitter_per_frame_prob=st.jitter_per_frame_prob,
        )
        self.seed = cfg.trainer.seed
        self._images: dict[str, torch.Tensor] = {}

    @property
    def train_hw(self) -> tuple[int, int]:
        return (self.model_cfg.image_height, self.model_cfg.image_width)

    def transform(self, raw: dict[str, Any], key: int) -> dict[str, torch.Tensor]:
        """The loader's batch and the augmentation seed of this (micro-step, rank)."""
        out = {k: raw[k] for k in ("frames", "flow", "valid", "sizes")}
        out["aug_seed"] = _seed_of(self.seed, key, raw["frames"].device)
        return out

    def model_inputs(self, batch: dict[str, torch.Tensor], training: bool) -> dict:
        """``frames`` ``[b, 2, 3, H, W]`` in ``[-1, 1]``, ``flow`` and ``valid`` of the crops."""
        with torch.autocast(batch["frames"].device.type, enabled=False):
            if training:
                return augment_flow_train(batch, _generator(batch), self.train_hw, self.augment)
            return flow_eval_batch(batch, self.train_hw)

    def step(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        training = _training(model)
        inputs = self.model_inputs(batch, training)
        pred = model(inputs["frames"].to(_param_dtype(model))).float()
        target, valid = inputs["flow"], inputs["valid"].float()
        epe = (pred - target).square().sum(-1).add(1e-12).sqrt()  # finite gradient at 0
        count = valid.sum()
        loss = (epe * valid).sum() / count.clamp(min=1.0)
        with torch.no_grad():
            sums = {
                "epe_sum": (epe * valid).sum(),
                "zero_epe_sum": (target.norm(dim=-1) * valid).sum(),
                "within1": ((epe < 1).float() * valid).sum(),
                "within3": ((epe < 3).float() * valid).sum(),
                "count": count,
                "samples": torch.tensor(float(pred.shape[0]), device=pred.device),
            }
        if not training and not self._images:
            self._images = {"val/flow": _flow_panel(inputs, pred)}
        return loss, sums

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Pixels of the pairs the model reads."""
        h, w = self.train_hw
        return batch["frames"].shape[0] * h * w

    def num_samples(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["frames"].shape[0]

    def summarize(self, sums: dict[str, float], prefix: str) -> dict[str, float]:
        n = max(sums["count"], 1.0)
        return {
            f"{prefix}/loss": sums["epe_sum"] / n,
            f"{prefix}/epe": sums["epe_sum"] / n,
            f"{prefix}/zero_flow_epe": sums["zero_epe_sum"] / n,
            f"{prefix}/within_1px": sums["within1"] / n,
            f"{prefix}/within_3px": sums["within3"] / n,
        }

    def images(self) -> dict[str, torch.Tensor]:
        """Frame 0 of the first pair of the last evaluation, predicted and true flow (once)."""
        images, self._images = self._images, {}
        return images


def _flow_panel(inputs: dict[str, torch.Tensor], pred_bhw2: torch.Tensor) -> torch.Tensor:
    """uint8 ``[1, H, 3W, 3]``: frame 0, the predicted flow and the true flow (colour wheel, one
    scale: the largest true motion), unknown true flow black."""
    from data_pipeline.flow.formats import flow_to_color

    frame = ((inputs["frames"][0, 0].float() + 1) * 127.5).round().clamp(0, 255)
    frame = frame.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    true = inputs["flow"][0].detach().float().cpu().numpy()
    valid = inputs["valid"][0].cpu().numpy()
    pred = pred_bhw2[0].detach().float().cpu().numpy()
    top = float(np.linalg.norm(true, axis=-1)[valid].max()) if valid.any() else 0.0
    scale = top if top > 0 else None
    true_rgb = flow_to_color(true, max_flow=scale)
    true_rgb[~valid] = 0
    panel = np.concatenate([frame, flow_to_color(pred, max_flow=scale), true_rgb], axis=1)
    return torch.from_numpy(np.ascontiguousarray(panel))[None]
