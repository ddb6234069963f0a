"""Typed configuration tree: YAML presets plus dotted ``key.sub=value`` overrides.

A run is described by one :class:`Config` (model, data, optimizer, trainer, checkpoint, logging).
Everything is validated before any process starts or any file is written: unknown keys are
refused with the list of valid ones, wrong types name the offending key, and impossible
combinations (fp16 on CPU, ZeRO stage 4, ...) are refused with the key that causes them.

The ``model`` section is a mapping with a ``type`` (see ``pretrain.models.MODEL_TYPES``) and the
fields of that model's config dataclass; ``preset: NAME`` loads ``configs/model/NAME.yaml`` first.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from data_pipeline.shards.remote import check_location, is_url, under

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A user error in a config file or an override; the message names the key."""


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
    mask_prob: float = 0.15  # MLM only: fraction of whitespace-delimited words that are masked
    # MLM only: what is masked as a whole: `word` (whole-word masking, the paper's) or `token`
    # (each byte/piece of a word on its own; mask_prob is then the fraction of word tokens)
    mask_unit: str = "word"
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
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"data.mask_prob: must be in (0, 1), got {self.mask_prob}")
        if self.mask_unit not in ("word", "token"):
            raise ConfigError(f"data.mask_unit: must be 'word' or 'token', got {self.mask_unit!r}")
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
    slurm: dict[str, Any] = field(default_factory=dict)  # mode=slurm: slurm.cluster.JobRequest

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
        if self.slurm:
            from slurm.cluster import JobRequest

            valid = {f.name for f in dataclasses.fields(JobRequest)}
            unknown = sorted(set(self.slurm) - valid)
            if unknown:
                raise ConfigError(
                    f"probes.slurm.{unknown[0]}: unknown; valid keys: {', '.join(sorted(valid))}"
                )


@dataclass
class Config:
    """The whole run."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    glue: GlueConfig = field(default_factory=GlueConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)

    @property
    def model_type(self) -> str:
        return self.model["type"]

    @property
    def objective(self) -> str:
        """The objective that trains this model (see ``pretrain.objectives.text``)."""
        from pretrain.objectives.text import objective_for_model

        return objective_for_model(self.model_type)

    def model_config(self) -> Any:
        """The model's own typed config dataclass."""
        from pretrain.models import MODEL_TYPES

        cfg_cls, _ = MODEL_TYPES[self.model_type]
        kwargs = {k: v for k, v in self.model.items() if k != "type"}
        return cfg_cls(**kwargs)

    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.trainer.run_dir) / "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
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


# --------------------------------------------------------------------------------------------
# Loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return (
            [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
            if args
            else list(value)
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{key}: unknown key; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def find_preset(name: str, search_dirs: list[Path]) -> Path:
    """Locate a model preset by file path or by name under ``configs/model/``."""
    candidates = []
    if name.endswith((".yaml", ".yml")):
        candidates += [d / name for d in search_dirs] + [Path(name)]
    else:
        candidates += [d / "model" / f"{name}.yaml" for d in search_dirs]
        candidates += [d / f"{name}.yaml" for d in search_dirs]
    for c in candidates:
        if c.is_file():
            return c
    available = sorted(p.stem for p in (CONFIG_ROOT / "model").glob("*.yaml"))
    raise ConfigError(f"model.preset: no preset {name!r}; available: {', '.join(available)}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (so 3 is an int, true a bool)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (validated later)."""
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _resolve_model(raw: Any, search_dirs: list[Path]) -> dict[str, Any]:
    from pretrain.models import MODEL_TYPES

    if not isinstance(raw, dict):
        raise ConfigError("model: expected a mapping with `type` or `preset`")
    raw = dict(raw)
    preset = raw.pop("preset", None)
    if preset is not None:
        base = _load_yaml(find_preset(str(preset), search_dirs))
        raw = _deep_merge(base, raw)
    mtype = raw.get("type")
    if mtype not in MODEL_TYPES:
        raise ConfigError(f"model.type: must be one of {sorted(MODEL_TYPES)}, got {mtype!r}")
    cfg_cls, _ = MODEL_TYPES[mtype]
    hints = typing.get_type_hints(cfg_cls)
    names = {f.name for f in dataclasses.fields(cfg_cls) if f.init}
    out: dict[str, Any] = {"type": mtype}
    for k, v in raw.items():
        if k == "type":
            continue
        if k not in names:
            raise ConfigError(
                f"model.{k}: unknown key for {mtype}; valid keys: {', '.join(sorted(names))}"
            )
        out[k] = _coerce(v, hints[k], f"model.{k}")
    try:
        cfg_cls(**{k: v for k, v in out.items() if k != "type"})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply overrides, validate everything; raise ConfigError on bad input."""
    data: dict[str, Any] = {}
    search_dirs = [CONFIG_ROOT]
    if path is not None:
        path = Path(path)
        data = _load_yaml(path)
        search_dirs = [path.resolve().parent, path.resolve().parent.parent, CONFIG_ROOT]
    return config_from_dict(data, overrides or [], search_dirs)


def config_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, search_dirs: list[Path] | None = None
) -> Config:
    """Build and validate a Config from a plain mapping (plus overrides)."""
    data = apply_overrides(data, overrides or [])
    model = _resolve_model(data.get("model", {}), search_dirs or [CONFIG_ROOT])
    cfg = _build_dataclass(Config, {k: v for k, v in data.items() if k != "model"}, "")
    cfg.model = model
    cfg.validate()
    return cfg


def check_inputs(cfg: Config) -> None:
    """Check what the run will read, before any process starts or any file is written: every
    data directory against the model (its manifest), a ``checkpoint.resume`` path and
    ``checkpoint.init_from`` unless a checkpoint is resumed. Reads manifests and markers, no
    weights.

    Raises:
        ConfigError: naming the key whose path is missing or does not fit.
    """
    from pretrain.objectives.text import check_data
    from pretrain.train import checkpoint as ckpt

    check_data(cfg)
    try:
        resume = ckpt.resolve_resume(cfg.checkpoint.resume, cfg.checkpoint_dir())
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if cfg.checkpoint.init_from and resume is None:  # as the trainer: a resume ignores it
        from pretrain.export import CONFIG_NAME, find_checkpoint

        path = Path(cfg.checkpoint.init_from)
        if not path.exists():
            raise ConfigError(
                f"checkpoint.init_from: {path} does not exist (an export, an HF Perceiver "
                "directory, a run directory or a checkpoint)"
            )
        if not (path / CONFIG_NAME).is_file():  # an export or HF directory is read at start
            try:
                find_checkpoint(path)
            except FileNotFoundError as e:
                raise ConfigError(f"checkpoint.init_from: {e}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(cfg.to_yaml())
    tmp.replace(path)


def config_digest(cfg: Config) -> str:
    """A stable JSON string of the config (used to check a resume matches its run)."""
    return json.dumps(cfg.to_dict(), sort_keys=True)
