"""Loading the config tree: YAML files and presets, dotted ``key.sub=value`` overrides, type
checks that name the key, and the pre-flight check of a run's inputs (``check_inputs``).

Everything is validated once, here, before any process starts or any file is written: unknown
keys are refused with the list of valid ones, wrong types name the offending key, keys that moved
name their new place, and impossible combinations (fp16 on CPU, ZeRO stage 4, ...) are refused
with the key that causes them. The ``model`` section is a mapping with a ``type`` (see
``pretrain.models.MODEL_TYPES``) and the fields of that model's config dataclass; ``preset: NAME``
loads ``configs/model/NAME.yaml`` first.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from data_pipeline.files import atomic_write_text
from pretrain.config.errors import ConfigError
from pretrain.config.objectives import MOVED_KEYS, OBJECTIVE_CONFIGS, default_objective
from pretrain.config.schema import Config

if TYPE_CHECKING:
    from pretrain.models import ModelConfig

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


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


def _refuse_moved(section: str, keys: Any) -> None:
    """Refuses a key of ``section`` that moved to another section, naming its new key."""
    for k in keys if isinstance(keys, dict) else ():
        if f"{section}.{k}" in MOVED_KEYS:
            raise ConfigError(f"{section}.{k}: moved; set {MOVED_KEYS[f'{section}.{k}']} instead")


def _resolve_model(raw: Any, search_dirs: list[Path]) -> ModelConfig:
    """The typed model config of ``model.type`` (after loading ``model.preset``)."""
    from pretrain.models import MODEL_TYPES  # torch: only once a config is built

    if not isinstance(raw, dict):
        raise ConfigError("model: expected a mapping with `type` or `preset`")
    raw = dict(raw)
    preset = raw.pop("preset", None)
    if preset is not None:
        base = _load_yaml(find_preset(str(preset), search_dirs))
        raw = _deep_merge(base, raw)
    mtype = raw.pop("type", None)
    if mtype not in MODEL_TYPES:
        raise ConfigError(f"model.type: must be one of {sorted(MODEL_TYPES)}, got {mtype!r}")
    _refuse_moved("model", raw)
    cfg_cls, _ = MODEL_TYPES[mtype]
    hints = typing.get_type_hints(cfg_cls)
    names = {f.name for f in dataclasses.fields(cfg_cls) if f.init}
    kwargs = {}
    for k, v in raw.items():
        if k not in names:
            raise ConfigError(
                f"model.{k}: unknown key for {mtype}; valid keys: {', '.join(sorted(names))}"
            )
        kwargs[k] = _coerce(v, hints[k], f"model.{k}")
    try:
        return cfg_cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None


def _resolve_objective(raw: Any, model_type: str) -> Any:
    """The typed section of ``objective.name`` (default: the objective of ``model_type``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"objective: expected a mapping, got {raw!r}")
    name = raw.get("name") or default_objective(model_type)
    if name not in OBJECTIVE_CONFIGS:
        raise ConfigError(
            f"objective.name: must be one of {sorted(OBJECTIVE_CONFIGS)}, got {name!r}"
        )
    cls = OBJECTIVE_CONFIGS[name]
    if model_type not in cls.model_types:
        raise ConfigError(
            f"objective.name: {name} trains {', '.join(cls.model_types)}, not model.type="
            f"{model_type} (leave it out for {default_objective(model_type)})"
        )
    return _build_dataclass(cls, {**raw, "name": name}, "objective")


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
    _refuse_moved("data", data.get("data"))
    model = _resolve_model(data.get("model", {}), search_dirs or [CONFIG_ROOT])
    objective = _resolve_objective(data.get("objective"), model.type)
    sections = {k: v for k, v in data.items() if k not in ("model", "objective")}
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(sections) - fields)
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(fields))}"
        )
    from pretrain.models import ModelConfig  # torch: only once a config is built

    hints = typing.get_type_hints(Config, localns={"ModelConfig": ModelConfig})
    kwargs = {k: _coerce(v, hints[k], k) for k, v in sections.items()}
    cfg = Config(model=model, objective=objective, **kwargs)
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
    from pretrain.train import checkpoint as ckpt

    cfg.objective.check_data(cfg)
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
    atomic_write_text(path, cfg.to_yaml())


def config_digest(cfg: Config) -> str:
    """A stable JSON string of the config (used to check a resume matches its run)."""
    return json.dumps(cfg.to_dict(), sort_keys=True)
