"""The sections of the typed configuration tree and the :class:`Config` that holds them.

``model`` is the model's own config dataclass (``pretrain.models.ModelConfig``, chosen by
``model.type``), ``objective`` the objective's section (``pretrain.config.objectives``, chosen
by ``objective.name``, by default the objective that trains ``model.type``); the other sections
are below. Each section validates itself and names the key it refuses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from data_pipeline.shards.remote import check_location, is_url, under
from pretrain.config.errors import ConfigError
from pretrain.config.objectives import ObjectiveConfig

if TYPE_CHECKING:  # pretrain.models imports torch; the config tree must load without it
    from pretrain.models import ModelConfig


@dataclass
class DataSourceConfig:
    """One dataset of a training mixture (see data_pipeline.loading.mixtures)."""

    name: str = ""  # e.g. c4, wikipedia (unique; used in messages and metrics)
    dir: str = ""  # a shard directory or URL; a relative path is taken under data.dir
    proportion: float = 1.0  # share of every training epoch (normalised over the mixture)


@dataclass
class DataConfig:
    """Where the shards are and how batches are made from them."""

    dir: str = ""  # an MDS dataset directory with train/ and val/, or its s3:// (gs://...) URL
    # Several datasets sampled in proportions (e.g. 70% C4 / 30% Wikipedia); when given, `dir`
    # is only the root their relative `dir`s are under.
    mixture: list[DataSourceConfig] = field(default_factory=list)
    train_split: str = "train"
    val_split: str = "val"
    shuffle: bool = True
    shuffle_seed: int = 1234
    num_workers: int = 0
    cache_dir: str | None = None  # streaming's local cache; default: <run_dir>/.streaming_cache
    # Node-local cache size limit (e.g. "20gb"): least recently used shards are evicted, so a
    # remote corpus larger than the disk streams through. None keeps every shard read.
    cache_limit: str | None = None
    predownload: int | None = None  # samples prepared ahead per worker; None: 8 x micro batch
    download_retry: int = 2  # attempts per shard download before failing with the shard's URL
    download_timeout: float = 60.0  # seconds per shard download

    def validate(self) -> None:
        if not self.dir and not self.mixture:
            raise ConfigError(
                "data.dir: required (a directory written by `perceiver data prepare`)"
            )
        names = [m.name for m in self.mixture]
        for i, source in enumerate(self.mixture):
            key = f"data.mixture[{i}]"
            if not source.name or names.count(source.name) > 1:
                raise ConfigError(f"{key}.name: a unique non-empty name is required, got {names}")
            if not source.dir:
                raise ConfigError(f"{key}.dir: required (a shard directory)")
            try:
                check_location(source.dir)
            except ValueError as e:
                raise ConfigError(f"{key}.dir: {e}") from None
            if not Path(source.dir).is_absolute() and not is_url(source.dir) and not self.dir:
                raise ConfigError(f"{key}.dir: {source.dir!r} is relative but data.dir is empty")
            if not source.proportion > 0:
                raise ConfigError(f"{key}.proportion: must be > 0, got {source.proportion}")
        for key, value in (("data.dir", self.dir), ("data.cache_dir", self.cache_dir or "")):
            try:
                check_location(value)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
        if self.cache_dir and is_url(self.cache_dir):
            raise ConfigError("data.cache_dir: must be a local (node-local) directory, not a URL")
        if self.download_retry < 0 or self.download_timeout <= 0:
            raise ConfigError("data.download_retry must be >= 0 and data.download_timeout > 0")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")

    def dataset_dirs(self) -> list[tuple[str, str, float]]:
        """`(name, shard directory, proportion)` of each dataset (one, named `data`, without a
        mixture)."""
        if not self.mixture:
            return [("data", self.dir, 1.0)]
        return [(m.name, under(self.dir, m.dir), m.proportion) for m in self.mixture]

    def stream_options(self) -> dict[str, Any]:
        """The streaming settings every loader builder takes (cache size, prefetch, retries)."""
        return {
            "cache_limit": self.cache_limit,
            "predownload": self.predownload,
            "download_retry": self.download_retry,
            "download_timeout": self.download_timeout,
        }


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule (warmup then decay)."""

    name: Literal["lamb", "adamw"] = "lamb"
    lr: float = 1.25e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-6
    warmup_steps: int = 1000
    # steps at the peak lr after the warmup, before the decay (the Perceiver IO ImageNet recipe:
    # flat for half of training, then cosine to 0); 0: the decay starts after the warmup
    hold_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1  # the schedule decays to lr * min_lr_ratio at trainer.max_steps
    grad_clip: float = 1.0  # 0 disables clipping

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr: must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optimizer.betas: two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optimizer.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.hold_steps < 0:
            raise ConfigError(f"optimizer.hold_steps: must be >= 0, got {self.hold_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optimizer.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ConfigError(f"optimizer.grad_clip: must be >= 0, got {self.grad_clip}")


@dataclass
class TrainerConfig:
    """The loop: steps, batch, precision, parallelism, evaluation cadence."""

    run_dir: str = "runs/default"
    max_steps: int = 1000
    micro_batch_size: int = 8  # per rank
    grad_accum_steps: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    zero_stage: int = 2
    activation_checkpointing: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (CPU resume tests use it)
    log_every: int = 10
    val_every: int = 200  # 0 disables validation
    val_batches: int = 20
    peak_flops: float | None = None  # per device, for MFU; default: detected GPU's bf16 peak
    fp16_initial_scale_power: int = 16
    max_requeues: int = 100  # Slurm: refuse to requeue more often than this
    # steps with a non-finite loss skip their optimizer step; one more in a row stops the run
    nonfinite_skip_limit: int = 0
    compile: bool = False  # torch.compile the model (DeepSpeed's engine.compile)
    profile: str | None = None  # "FIRST-LAST": trace those steps (pretrain.train.profiling)

    def validate(self) -> None:
        for key in ("max_steps", "micro_batch_size", "grad_accum_steps", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key}: must be >= 1, got {getattr(self, key)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"trainer.zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.val_every < 0 or self.val_batches < 1:
            raise ConfigError("trainer.val_every must be >= 0 and trainer.val_batches >= 1")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ConfigError(f"trainer.peak_flops: must be > 0, got {self.peak_flops}")
        if self.nonfinite_skip_limit < 0:
            raise ConfigError(
                f"trainer.nonfinite_skip_limit: must be >= 0, got {self.nonfinite_skip_limit}"
            )
        if self.profile is not None:
            from pretrain.train.profiling import parse_step_range

            try:
                parse_step_range(str(self.profile))
            except ValueError as e:
                raise ConfigError(f"trainer.profile: {e}") from None


@dataclass
class CheckpointConfig:
    """DeepSpeed checkpoints: cadence, retention and resume policy."""

    dir: str | None = None  # default: <run_dir>/checkpoints
    every: int = 500  # steps; 0 saves only at the end
    keep: int = 3  # newest complete checkpoints kept; 0 keeps all
    resume: str = "auto"  # "auto" (newest complete, if any), "none", or a checkpoint path
    save_final: bool = True
    # Weights to start from when there is nothing to resume (fine-tuning, continued pretraining):
    # an export directory, an HF Perceiver directory, a run directory or a checkpoint; weights
    # only, no optimizer state (pretrain.export.load_initial_weights).
    init_from: str = ""

    def validate(self) -> None:
        if self.every < 0 or self.keep < 0:
            raise ConfigError("checkpoint.every and checkpoint.keep must be >= 0")


@dataclass
class LoggingConfig:
    """TensorBoard and console output (rank 0 only)."""

    tensorboard: bool = True
    progress_bar: bool = True  # a bar on a terminal, else a line every trainer.log_every steps
    jsonl: bool = True  # also append metrics to <run_dir>/metrics.jsonl


@dataclass
class GlueConfig:
    """The GLUE task of a ``perceiver_io_classifier`` run; data.dir is ``<glue_dir>/<TASK>``."""

    task: str = ""  # cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli
    tokenizer: str = "byte"  # what pretraining used: byte or spm:PATH (perceiver glue sets it)
    max_length: int = 0  # tokens per example incl. [CLS]/[SEP]; 0: model.max_seq_len
    max_train_examples: int = 0  # 0: all; else a fixed random subset (quick runs, probes)
    max_eval_examples: int = 0  # 0: all; else the first N of each dev split (test: always all)

    def validate(self) -> None:
        for key in ("max_length", "max_train_examples", "max_eval_examples"):
            if getattr(self, key) < 0:
                raise ConfigError(f"glue.{key}: must be >= 0, got {getattr(self, key)}")
        if self.task:
            from pretrain.glue.tasks import get_task

            try:
                get_task(self.task)
            except ValueError as e:
                raise ConfigError(f"glue.task: {e}") from None


@dataclass
class ProbesConfig:
    """GLUE probes while pretraining: every ``every`` steps the weights are exported and briefly
    fine-tuned on ``tasks``; the dev scores land in this run's TensorBoard as
    ``glue/<task>/<metric>`` at the step they belong to (docs/glue.md)."""

    every: int = 0  # steps; 0 disables probes
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    glue_dir: str = ""  # the GLUE root: <glue_dir>/<TASK>/{train,dev}.tsv
    mode: Literal["inline", "slurm"] = "inline"  # inline: training waits; slurm: a separate job
    max_steps: int = 200  # fine-tuning steps per task
    lr: float = 5.0e-5
    batch_size: int = 16
    overrides: list[str] = field(default_factory=list)  # more fine-tuning overrides, key=value
    # mode=slurm: the fields of slurm.cluster.JobRequest, checked by the Slurm layer when it
    # submits (this package does not import slurm)
    slurm: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError(f"probes.every: must be >= 0, got {self.every}")
        if not self.every:
            return
        if not self.glue_dir:
            raise ConfigError("probes.glue_dir: required when probes.every > 0")
        from pretrain.glue.tasks import get_task

        for i, task in enumerate(self.tasks):
            try:
                get_task(task)
            except ValueError as e:
                raise ConfigError(f"probes.tasks[{i}]: {e}") from None
        if not self.tasks:
            raise ConfigError("probes.tasks: at least one GLUE task is required")
        if self.max_steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("probes.max_steps and probes.batch_size must be >= 1, lr > 0")


@dataclass
class Config:
    """The whole run: ``model`` and ``objective`` are typed by ``model.type`` and
    ``objective.name`` (see the module docstring); both are required, as in a YAML file."""

    model: ModelConfig
    objective: ObjectiveConfig
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    glue: GlueConfig = field(default_factory=GlueConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)

    @property
    def model_type(self) -> str:
        """``model.type``: a key of ``pretrain.models.MODEL_TYPES``."""
        return self.model.type

    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.trainer.run_dir) / "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as a YAML file spells it (``model.type`` first in the model section)."""
        out = dataclasses.asdict(self)
        out["model"] = {"type": self.model_type, **out["model"]}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        self.objective.validate(self.model)
        self.data.validate()
        self.optimizer.validate()
        self.trainer.validate()
        self.checkpoint.validate()
        self.glue.validate()
        self.probes.validate()
        if self.trainer.precision == "fp16" and self.trainer.device == "cpu":
            raise ConfigError("trainer.precision: fp16 needs a GPU; use bf16 or fp32 on CPU")
        if self.optimizer.name == "lamb" and self.trainer.zero_stage > 0:
            raise ConfigError(
                "optimizer.name: lamb computes a trust ratio per parameter tensor, but "
                f"trainer.zero_stage={self.trainer.zero_stage} hands the optimizer flattened "
                "partitions, which would silently change LAMB into a per-partition rule; "
                "use trainer.zero_stage=0 with lamb, or optimizer.name=adamw with ZeRO"
            )
        if self.optimizer.name == "lamb" and self.trainer.precision == "fp16":
            raise ConfigError(
                "trainer.precision: fp16 with optimizer.name=lamb is not supported "
                "(DeepSpeed's fp16 optimizer flattens parameters); use bf16"
            )

    @property
    def autocast_bf16(self) -> bool:
        """bf16 via torch.autocast (fp32 weights) instead of DeepSpeed's bf16 optimizer.

        DeepSpeed's bf16 mode flattens parameters into partitions even at ZeRO stage 0, which
        LAMB's per-tensor trust ratio cannot work on; LAMB runs bf16 matmuls under autocast.
        """
        return self.trainer.precision == "bf16" and self.optimizer.name == "lamb"
