"""The ``objective`` section: each objective's own settings, typed and validated here.

    objective: {name: mlm, mask_prob: 0.15, mask_unit: word}

``name`` picks the section's dataclass; left out, it is the objective that trains ``model.type``
(``mlm`` for perceiver_io_mlm, ``ar``, ``multimodal_ae``, ``classification``,
``image_classification``, ``optical_flow``). The training code
of each objective is in ``pretrain.objectives``; what it reads from the run's config is here, with
the pre-flight check (``check_data``) that the run's data fit the model, so ``--dry-run``, the
trainer and GLUE refuse the same inputs before any process starts. This module imports nothing
from ``pretrain.objectives``: the config is the layer below the code it configures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pretrain.config.errors import ConfigError


def _data_keys(cfg: Any) -> list[tuple[str, str]]:
    """``(config key, shard directory)`` of every dataset of the run."""
    keys = [f"data.mixture[{i}].dir" for i in range(len(cfg.data.mixture))] or ["data.dir"]
    return [(key, data_dir) for key, (_, data_dir, _) in zip(keys, cfg.data.dataset_dirs())]


def _check_mixture(cfg: Any) -> None:
    """One tokenizer and one sample length across a mixture's datasets."""
    if cfg.data.mixture:
        from data_pipeline.shards.manifest import check_shards

        try:
            check_shards([data_dir for _, data_dir in _data_keys(cfg)])
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.mixture: {e}") from None


@dataclass
class _TextObjectiveConfig:
    """Objectives that read packed token shards (``perceiver data prepare``)."""

    def validate(self, model: Any) -> None:
        pass

    def flops_per_sample(self, model: Any) -> int:
        """Forward + backward matmul FLOPs of a training sample (MFU, ``--dry-run``)."""
        return model.flops_per_sample()

    def check_data(self, cfg: Any) -> None:
        """Refuse shards that do not fit the model (sample length, vocabulary, objective)."""
        from data_pipeline.shards.manifest import check_shards

        for key, data_dir in _data_keys(cfg):
            try:
                check_shards(
                    data_dir,
                    seq_len=cfg.model.max_seq_len,
                    objective=self.name,
                    vocab_size=cfg.model.vocab_size,
                )
            except (OSError, ValueError) as e:  # OSError: a URL's bucket, credentials, network
                raise ConfigError(f"{key}: {e}") from None
        _check_mixture(cfg)


@dataclass
class MLMObjectiveConfig(_TextObjectiveConfig):
    """``mlm``: cross-entropy on masked tokens.

    Attributes:
        mask_prob: Fraction of whitespace-delimited words (or word tokens) that are masked.
        mask_unit: What is masked as a whole: ``word`` (whole-word masking, the paper's) or
            ``token`` (each byte/piece of a word on its own; mask_prob is then the fraction of
            word tokens).
    """

    model_types: ClassVar[tuple[str, ...]] = ("perceiver_io_mlm",)
    name: Literal["mlm"] = "mlm"
    mask_prob: float = 0.15
    mask_unit: str = "word"

    def flops_per_sample(self, model: Any) -> int:
        """Only the masked positions are decoded (``pretrain.objectives.text.MLMObjective``)."""
        decoded = max(1, round(self.mask_prob * model.max_seq_len))
        return model.flops_per_sample(num_output_positions=decoded)

    def validate(self, model: Any) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"objective.mask_prob: must be in (0, 1), got {self.mask_prob}")
        if self.mask_unit not in ("word", "token"):
            raise ConfigError(
                f"objective.mask_unit: must be 'word' or 'token', got {self.mask_unit!r}"
            )


@dataclass
class ARObjectiveConfig(_TextObjectiveConfig):
    """``ar``: next-token cross-entropy on the positions the latents predict (no settings)."""

    model_types: ClassVar[tuple[str, ...]] = ("perceiver_ar",)
    name: Literal["ar"] = "ar"


@dataclass
class MultimodalObjectiveConfig:
    """``multimodal_ae``: video + audio + label autoencoding (the paper's Kinetics-700 recipe).

    Attributes:
        train_video_queries: Pixels decoded per clip in training (a random subset).
        train_audio_queries: Audio patches decoded per clip in training.
        label_mask_prob: Probability that a training clip's label input is masked.
        video_loss_weight: Weight of the video L1 loss.
        audio_loss_weight: Weight of the audio L1 loss.
        label_loss_weight: Weight of the label cross-entropy.
    """

    model_types: ClassVar[tuple[str, ...]] = ("perceiver_io_multimodal",)
    name: Literal["multimodal_ae"] = "multimodal_ae"
    train_video_queries: int = 512
    train_audio_queries: int = 512
    label_mask_prob: float = 0.5
    video_loss_weight: float = 0.03
    audio_loss_weight: float = 1.0
    label_loss_weight: float = 1e-4

    def validate(self, model: Any) -> None:
        for key, limit, what in (
            ("train_video_queries", model.num_pixels, "pixels"),
            ("train_audio_queries", model.num_audio_patches, "audio patches"),
        ):
            value = getattr(self, key)
            if not 0 < value <= limit:
                raise ConfigError(
                    f"objective.{key}: must be in [1, {limit}] (the model's {what} per clip), "
                    f"got {value}"
                )
        if not 0.0 <= self.label_mask_prob <= 1.0:
            raise ConfigError(
                f"objective.label_mask_prob: must be in [0, 1], got {self.label_mask_prob}"
            )
        for m in ("video", "audio", "label"):
            if getattr(self, f"{m}_loss_weight") < 0:
                raise ConfigError(f"objective.{m}_loss_weight: must be >= 0")

    def flops_per_sample(self, model: Any) -> int:
        """A training clip decodes the query subsample, not every pixel and audio patch."""
        return model.flops_per_sample(self.train_video_queries, self.train_audio_queries)

    def check_data(self, cfg: Any) -> None:
        """Refuses video shards whose clip geometry or classes do not fit the model, or whose
        train split is empty (an empty val split only skips validation:
        `pretrain.train.trainer`)."""
        from data_pipeline.video.shards import check_video_manifest

        mc = cfg.model
        for key, data_dir in _data_keys(cfg):
            try:
                check_video_manifest(
                    data_dir,
                    num_frames=mc.num_frames,
                    height=mc.frame_height,
                    width=mc.frame_width,
                    samples_per_frame=mc.audio_samples_per_frame,
                    num_classes=mc.num_classes,
                    splits=[cfg.data.train_split],
                )
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise ConfigError(f"{key}: {e}") from None
        _check_mixture(cfg)


@dataclass
class ClassificationObjectiveConfig:
    """``classification``: GLUE fine-tuning; the task and its inputs are the ``glue`` section."""

    model_types: ClassVar[tuple[str, ...]] = ("perceiver_io_classifier",)
    name: Literal["classification"] = "classification"

    def validate(self, model: Any) -> None:
        pass

    def flops_per_sample(self, model: Any) -> int:
        return model.flops_per_sample()

    def check_data(self, cfg: Any) -> None:
        """Refuses a task, task directory, tokenizer or model that do not fit together."""
        from pretrain.glue.tasks import get_task, load_tokenizer

        if not cfg.glue.task:
            raise ConfigError("glue.task: required for a perceiver_io_classifier model")
        task = get_task(cfg.glue.task)
        mc = cfg.model
        if mc.num_classes != task.num_classes:
            raise ConfigError(
                f"model.num_classes: {task.dir_name} needs {task.num_classes}, got {mc.num_classes}"
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
        if tokenizer.vocab_size > mc.vocab_size:
            raise ConfigError(
                f"glue.tokenizer: {cfg.glue.tokenizer} has {tokenizer.vocab_size} ids, more than "
                f"model.vocab_size={mc.vocab_size}"
            )
        if cfg.glue.max_length > mc.max_seq_len:
            raise ConfigError(
                f"glue.max_length: {cfg.glue.max_length} exceeds model.max_seq_len={mc.max_seq_len}"
            )


def _check_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"objective.{key}: must be in [{lo}, {hi}], got {value}")


def _check_pair(key: str, pair: list[float], lo: float) -> None:
    if len(pair) != 2 or not lo < pair[0] <= pair[1]:
        raise ConfigError(f"objective.{key}: two numbers {lo} < low <= high, got {pair}")


@dataclass
class ImageClassificationObjectiveConfig:
    """``image_classification``: cross-entropy of an image classifier (the paper's ImageNet).

    Attributes:
        label_smoothing: Label smoothing of the cross-entropy (paper: 0.1).
        crop_scale: Area fraction range of the random resized crop (torchvision: 0.08 to 1).
        crop_ratio: Aspect ratio range of the random resized crop (3/4 to 4/3).
        hflip: Mirror half of the training crops.
        eval_crop_ratio: Evaluation's centre crop: the shorter side is resized to
            ``image_size / eval_crop_ratio`` and the central square kept (0.875).
        randaugment_ops: RandAugment operations per image (0: off; paper: 4).
        randaugment_magnitude: RandAugment magnitude, 0-10 (paper: 5).
        mixup_alpha: MixUp's Beta(alpha, alpha) (0: off).
        cutmix_alpha: CutMix's Beta(alpha, alpha) (0: off).
        mix_switch_prob: With both on, the probability that a batch uses CutMix.
        mix_prob: The probability that a batch is mixed at all.
    """

    model_types: ClassVar[tuple[str, ...]] = ("perceiver_io_image_classifier",)
    name: Literal["image_classification"] = "image_classification"
    label_smoothing: float = 0.1
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    eval_crop_ratio: float = 0.875
    randaugment_ops: int = 0
    randaugment_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_switch_prob: float = 0.5
    mix_prob: float = 1.0

    def validate(self, model: Any) -> None:
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.99)
        _check_pair("crop_scale", self.crop_scale, 0.0)
        if self.crop_scale[1] > 1.0:
            raise ConfigError(f"objective.crop_scale: at most 1, got {self.crop_scale}")
        _check_pair("crop_ratio", self.crop_ratio, 0.0)
        _check_range("eval_crop_ratio", self.eval_crop_ratio, 0.05, 1.0)
        _check_range("randaugment_ops", self.randaugment_ops, 0, 16)
        _check_range("randaugment_magnitude", self.randaugment_magnitude, 0.0, 10.0)
        _check_range("mixup_alpha", self.mixup_alpha, 0.0, 100.0)
        _check_range("cutmix_alpha", self.cutmix_alpha, 0.0, 100.0)
        _check_range("mix_switch_prob", self.mix_switch_prob, 0.0, 1.0)
        _check_range("mix_prob", self.mix_prob, 0.0, 1.0)

    def flops_per_sample(self, model: Any) -> int:
        return model.flops_per_sample()

    def check_data(self, cfg: Any) -> None:
        """Refuses shards that are not image shards, have another number of classes than
        ``model.num_classes``, or lack the training split."""
        from data_pipeline.shards.manifest import check_image_manifest

        for key, data_dir in _data_keys(cfg):
            try:
                check_image_manifest(
                    data_dir, num_classes=cfg.model.num_classes, splits=[cfg.data.train_split]
                )
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise ConfigError(f"{key}: {e}") from None


@dataclass
class OpticalFlowObjectiveConfig:
    """``optical_flow``: flow regression of Perceiver IO (AutoFlow pretraining, fine-tuning).

    The loss is the average end-point error over valid pixels (also the reported metric, beside
    the zero-flow baseline's). Augmentation (``pretrain.objectives.augment.flow``) crops the
    model's ``image_height x image_width`` from pairs at least that large.

    Attributes:
        min_log2_scale: Lower end of the random scale, as log2 (scale 2 ** U(min, max)).
        max_log2_scale: Upper end (0 and 0: no scaling; a pair is still scaled up to cover
            the model's size when it is smaller after scaling).
        hflip: Mirror half of the training pairs (the flow's x negated).
        brightness: Brightness jitter: factors in ``1 +- brightness`` (0: off).
        contrast: Contrast jitter amount.
        saturation: Saturation jitter amount.
        jitter_per_frame_prob: Probability that the two frames get different jitter.
    """

    model_types: ClassVar[tuple[str, ...]] = ("perceiver_io_optical_flow",)
    name: Literal["optical_flow"] = "optical_flow"
    min_log2_scale: float = -0.2
    max_log2_scale: float = 0.6
    hflip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    jitter_per_frame_prob: float = 0.2

    def validate(self, model: Any) -> None:
        _check_range("min_log2_scale", self.min_log2_scale, -3.0, 3.0)
        _check_range("max_log2_scale", self.max_log2_scale, self.min_log2_scale, 3.0)
        for key in ("brightness", "contrast", "saturation", "jitter_per_frame_prob"):
            _check_range(key, getattr(self, key), 0.0, 1.0)

    def flops_per_sample(self, model: Any) -> int:
        return model.flops_per_sample()

    def check_data(self, cfg: Any) -> None:
        """Refuses shards that are not flow shards, lack the training split, or whose fixed
        frame size is smaller than the model's ``image_height x image_width``."""
        from data_pipeline.shards.manifest import check_flow_manifest

        mc = cfg.model
        for key, data_dir in _data_keys(cfg):
            try:
                manifest = check_flow_manifest(data_dir, splits=[cfg.data.train_split])
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise ConfigError(f"{key}: {e}") from None
            h, w = manifest.get("height"), manifest.get("width")
            if h and w and (h < mc.image_height or w < mc.image_width):
                raise ConfigError(
                    f"{key}: {data_dir} holds {h} x {w} frames, smaller than the model's "
                    f"training size model.image_height x model.image_width = "
                    f"{mc.image_height} x {mc.image_width}"
                )


ObjectiveConfig = (
    MLMObjectiveConfig
    | ARObjectiveConfig
    | MultimodalObjectiveConfig
    | ClassificationObjectiveConfig
    | ImageClassificationObjectiveConfig
    | OpticalFlowObjectiveConfig
)

OBJECTIVE_CONFIGS: dict[str, type] = {
    cls.name: cls
    for cls in (
        MLMObjectiveConfig,
        ARObjectiveConfig,
        MultimodalObjectiveConfig,
        ClassificationObjectiveConfig,
        ImageClassificationObjectiveConfig,
        OpticalFlowObjectiveConfig,
    )
}


def default_objective(model_type: str) -> str:
    """The name of the objective that trains ``model_type``."""
    for name, cls in OBJECTIVE_CONFIGS.items():
        if model_type in cls.model_types:
            return name
    raise ConfigError(f"model.type: no objective trains {model_type!r}")


# Keys that moved into this section: the old spelling is refused naming the new key.
MOVED_KEYS = {
    "data.mask_prob": "objective.mask_prob",
    "data.mask_unit": "objective.mask_unit",
    **{
        f"model.{k}": f"objective.{k}"
        for k in (
            "train_video_queries",
            "train_audio_queries",
            "label_mask_prob",
            "video_loss_weight",
            "audio_loss_weight",
            "label_loss_weight",
        )
    },
}
