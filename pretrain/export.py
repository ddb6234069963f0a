"""Checkpoint export and import: one ``model.safetensors`` + ``config.json`` from any checkpoint.

``perceiver export RUN_DIR[/checkpoints/step_N] --output DIR [--dtype fp32|bf16] [--format
native|hf]`` consolidates a DeepSpeed checkpoint of any ZeRO stage and world size on the CPU of one
process:

* ZeRO 1/2/3: DeepSpeed's ``zero_to_fp32`` joins the fp32 partitions of every rank.
* ZeRO 0: the module weights in ``mp_rank_00_model_states.pt``; when DeepSpeed's bf16 optimizer
  kept fp32 master weights beside bf16 module weights, the fp32 masters (matched to names by the
  parameter-group rule of ``pretrain.train.optim.param_groups`` and checked by shape).

Native export directory (what fine-tuning and ``checkpoint.init_from`` read)::

    model.safetensors   # our parameter names, fp32 or bf16
    config.json         # {"format": "perceiver-pretrain", "model_type", "model": {fields},
                        #  "tokenizer": {...}, "dtype", "source": {...}}
    tokenizer.model     # SentencePiece runs only

``--format hf`` writes a directory that ``transformers.PerceiverForMaskedLM.from_pretrained``
loads (and, for the byte tokenizer, ``PerceiverTokenizer.from_pretrained``; the ids are the same),
or, for the image classifier and the optical-flow model, the HF class of
``pretrain.models.hf_vision`` (``PerceiverForImageClassificationFourier`` / ``Learned`` /
``ConvProcessing``, ``PerceiverForOpticalFlow``). ``perceiver import-hf HF_DIR --output DIR`` goes
the other way (the class from the saved config's ``architectures``), so published Perceiver
weights (e.g. ``deepmind/language-perceiver``, ``deepmind/vision-perceiver-conv``,
``deepmind/optical-flow-perceiver``) can be fine-tuned or trained further.

:func:`load_pretrained` reads any of these sources (export directory, HF directory, run
directory, checkpoint), and :func:`load_initial_weights` puts them into a freshly built model
(the trainer's ``checkpoint.init_from``), adapting a masked LM to a classifier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from data_pipeline.files import atomic_write_json
from pretrain.config.objectives import MOVED_KEYS
from pretrain.train import checkpoint as ckpt

NATIVE_FORMAT = "perceiver-pretrain"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
SPM_NAME = "tokenizer.model"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HF_VISION_TYPES = ("perceiver_io_image_classifier", "perceiver_io_optical_flow")
# Fields that do not change the function a model computes (so they may differ on loading).
_NON_ARCHITECTURE_FIELDS = {"dropout", "init_scale"}


@dataclass
class Pretrained:
    """Weights and what is needed to use them.

    Attributes:
        model_type: A key of ``pretrain.models.MODEL_TYPES``.
        model: The model config's fields (without ``type``).
        state_dict: Parameter name -> tensor (our names).
        tokenizer: Description as in shard manifests (``{"name": "byte", ...}`` or ``{"name":
            "spm", "model_file": ABSOLUTE PATH, ...}``).
        source: Where the weights came from (``kind``, ``path``, ``step`` for checkpoints).
    """

    model_type: str
    model: dict[str, Any]
    state_dict: dict[str, Tensor]
    tokenizer: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)

    def tokenizer_name(self) -> str:
        """``byte`` or ``spm:PATH`` (what ``glue.tokenizer`` and ``get_tokenizer`` take)."""
        if self.tokenizer.get("name") == "spm":
            return f"spm:{self.tokenizer['model_file']}"
        return str(self.tokenizer.get("name", "byte"))


# --------------------------------------------------------------------------------------------
# Reading DeepSpeed checkpoints


def checkpoint_dir_of(run_dir: Path) -> Path:
    """Where a run keeps its ``step_*`` checkpoints (``checkpoint.dir`` of its saved config)."""
    run_config = run_dir / "config.yaml"
    if run_config.is_file():
        saved = (yaml.safe_load(run_config.read_text()) or {}).get("checkpoint", {}) or {}
        if saved.get("dir"):
            return Path(saved["dir"])
    return run_dir / "checkpoints"


def find_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint: ``path`` itself, or the newest one of a run directory (or of a
    directory of ``step_*`` checkpoints).

    Raises:
        FileNotFoundError: If ``path`` is neither (or the run has no complete checkpoint).
    """
    path = Path(path)
    if ckpt.is_complete(path):
        return path
    checkpoint_dir = checkpoint_dir_of(path)
    latest = ckpt.find_latest(checkpoint_dir) or ckpt.find_latest(path)  # run or checkpoints dir
    if latest is None:
        what = (
            "a checkpoint without its COMPLETE marker"
            if path.name.startswith("step_")
            else (f"a run directory without a complete checkpoint under {checkpoint_dir}")
        )
        raise FileNotFoundError(f"{path}: {what} (nothing to export)")
    return latest


def _stage0_fp32_master(states: dict[str, Any], module: dict[str, Tensor]) -> dict[str, Tensor]:
    """fp32 master weights of DeepSpeed's ZeRO-0 bf16/fp16 optimizer, by parameter name.

    The optimizer holds them per parameter group as in ``pretrain.train.optim.param_groups``: weight
    matrices (decayed) first, then vectors and biases, each in ``named_parameters`` order.
    """
    groups = (states.get("optimizer") or {}).get("fp32_groups")
    if not groups:
        return {}
    buffers = set(states.get("buffer_names") or [])
    names = [k for k in module if k not in buffers]
    decay = [k for k in names if module[k].ndim >= 2 and not k.endswith(".bias")]
    ordered = decay + [k for k in names if k not in set(decay)]
    flat = [t for group in groups for t in group]
    if len(flat) != len(ordered) or any(
        tuple(t.shape) != tuple(module[k].shape) for k, t in zip(ordered, flat)
    ):
        return {}  # another grouping: keep the module's (lower precision) weights
    return {k: t.float() for k, t in zip(ordered, flat)}


def consolidate(checkpoint: str | Path) -> dict[str, Tensor]:
    """The full fp32 state dict of a complete DeepSpeed checkpoint (any ZeRO stage / world size).

    Runs on CPU in one process, whatever the number of processes that wrote the checkpoint.
    """
    path = Path(checkpoint)
    if not ckpt.is_complete(path):
        raise ValueError(f"{path}: not a complete checkpoint (no {ckpt.MARKER})")
    if list(path.glob("*zero_pp_rank_*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        quiet = io.StringIO()  # it reports progress on stdout and stderr
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    else:
        model_file = path / "mp_rank_00_model_states.pt"
        if not model_file.is_file():
            raise FileNotFoundError(f"{model_file}: missing (not a DeepSpeed checkpoint?)")
        states = torch.load(model_file, map_location="cpu", weights_only=False)
        module = states["module"]
        state = {k: v.float() for k, v in module.items()}
        master = _stage0_fp32_master(states, module)
        low = sorted({str(v.dtype) for v in module.values() if v.dtype != torch.float32})
        if low and not master:
            warnings.warn(
                f"{model_file}: no fp32 master weights found; exporting the {low} module weights",
                stacklevel=2,
            )
        state.update(master)
    return {k: v.detach().float().contiguous().clone() for k, v in state.items()}


def run_tokenizer(run_config: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer a run trained with, from its data's manifest (SentencePiece model path made
    absolute); the byte tokenizer when the data is gone and the vocabulary is the byte one's."""
    from data_pipeline.shards.manifest import read_manifest
    from data_pipeline.shards.remote import fetch, under
    from data_pipeline.tokenization.tokenizer import SPM_MODEL_NAME, ByteTokenizer

    data = run_config.get("data") or {}
    root = data.get("dir") or ""
    dirs = [root] if root and not data.get("mixture") else []
    dirs += [under(root, m["dir"]) for m in data.get("mixture") or []]
    for d in dirs:
        try:
            info = dict(read_manifest(d)["tokenizer"])
        except (OSError, ValueError, KeyError):
            continue
        if info.get("name") == "spm":  # a URL's model: downloaded into a temporary mirror
            info["model_file"] = str(fetch(d, info.get("model_file", SPM_MODEL_NAME)))
        return info
    vocab = (run_config.get("model") or {}).get("vocab_size")
    if vocab == ByteTokenizer.vocab_size:
        return {**ByteTokenizer().config(), "note": "assumed: the run's data manifest is gone"}
    raise FileNotFoundError(
        f"cannot find the tokenizer of this run: no shard manifest under {dirs} and vocab_size "
        f"{vocab} is not the byte tokenizer's; pass --tokenizer spm:PATH"
    )


def architecture_only(model: dict[str, Any]) -> dict[str, Any]:
    """A saved model section without the objective settings older versions kept in it.

    Until the config tree gave objectives their own section, the multimodal model's config also
    held its loss weights, query counts and label-mask probability (now ``objective.*``). They
    never shaped a weight, so checkpoints and exports written then load as they are.
    """
    moved = {key.split(".", 1)[1] for key in MOVED_KEYS if key.startswith("model.")}
    return {k: v for k, v in model.items() if k not in moved}


def read_checkpoint(path: str | Path, tokenizer: str | None = None) -> Pretrained:
    """A run directory or checkpoint -> :class:`Pretrained` (consolidated fp32 weights)."""
    checkpoint = find_checkpoint(path)
    config_file = checkpoint / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: missing; the checkpoint cannot explain itself")
    run_config = yaml.safe_load(config_file.read_text()) or {}
    model = architecture_only(dict(run_config.get("model") or {}))
    model_type = model.pop("type", None)
    if model_type is None:
        raise ValueError(f"{config_file}: no model.type")
    if model_type in HF_VISION_TYPES:  # images and flow: no tokenizer
        info = {}
    else:
        info = tokenizer_description(tokenizer) if tokenizer else run_tokenizer(run_config)
    meta = json.loads((checkpoint / ckpt.MARKER).read_text() or "{}")
    source = {"kind": "checkpoint", "path": str(checkpoint.resolve()), "step": meta.get("step")}
    return Pretrained(model_type, model, consolidate(checkpoint), info, source)


def tokenizer_description(name: str) -> dict[str, Any]:
    """``byte`` or ``spm:PATH`` -> a description as in shard manifests (absolute model path)."""
    from data_pipeline.tokenization.tokenizer import get_tokenizer

    tok = get_tokenizer(name)
    info = dict(tok.config()) if hasattr(tok, "config") else {"name": tok.name}
    if info.get("name") == "spm":
        info["model_file"] = str(Path(tok.model_file).resolve())
    return info


# --------------------------------------------------------------------------------------------
# Export directories


def _check_native(directory: Path, meta: dict[str, Any]) -> None:
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_NAME}: unknown format_version")
    if not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory / WEIGHTS_NAME}: missing")


def read_export(directory: str | Path) -> Pretrained:
    """A native export directory -> :class:`Pretrained` (weights in fp32)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / CONFIG_NAME).read_text())
    _check_native(directory, meta)
    tokenizer = dict(meta["tokenizer"])
    if tokenizer.get("name") == "spm":
        tokenizer["model_file"] = str((directory / tokenizer.get("model_file", SPM_NAME)).resolve())
    weights = {k: v.float() for k, v in load_file(directory / WEIGHTS_NAME).items()}
    source = {"kind": "export", "path": str(directory.resolve()), **meta.get("source", {})}
    model = architecture_only(dict(meta["model"]))
    return Pretrained(meta["model_type"], model, weights, tokenizer, source)


def read_hf(directory: str | Path) -> Pretrained:
    """A ``transformers`` Perceiver directory -> :class:`Pretrained`: ``PerceiverForMaskedLM``,
    or the image / optical-flow classes of ``pretrain.models.hf_vision`` (by ``architectures``)."""
    from transformers import PerceiverConfig, PerceiverForMaskedLM

    from data_pipeline.tokenization.tokenizer import ByteTokenizer
    from pretrain.models import hf_vision
    from pretrain.models.hf_interop import config_from_hf, from_hf_state_dict

    directory = Path(directory)
    hf_cfg = PerceiverConfig.from_pretrained(str(directory))
    architectures = hf_cfg.architectures or []
    source = {"kind": "hf", "path": str(directory.resolve())}
    if any(a in hf_vision.ARCHITECTURES for a in architectures):
        model_type, fields, weights = hf_vision.read_hf_directory(directory, hf_cfg)
        return Pretrained(model_type, fields, weights, {}, source)
    if architectures and "PerceiverForMaskedLM" not in architectures:
        supported = sorted({"PerceiverForMaskedLM", *hf_vision.ARCHITECTURES})
        raise ValueError(
            f"{directory / CONFIG_NAME}: architectures {architectures}; supported: {supported}"
        )
    hf = PerceiverForMaskedLM.from_pretrained(str(directory))  # fp32 unless told otherwise
    cfg = config_from_hf(hf.config)
    weights = from_hf_state_dict(hf.state_dict(), cfg)
    if (directory / SPM_NAME).is_file():
        tokenizer = tokenizer_description(f"spm:{directory / SPM_NAME}")
    elif cfg.vocab_size == ByteTokenizer.vocab_size:
        tokenizer = ByteTokenizer().config()  # HF's PerceiverTokenizer has the same ids
    else:
        raise ValueError(f"{directory}: vocab_size {cfg.vocab_size} and no {SPM_NAME}")
    fields = dataclasses.asdict(cfg)
    weights = {k: v.detach().float().contiguous().clone() for k, v in weights.items()}
    return Pretrained("perceiver_io_mlm", fields, weights, tokenizer, source)


def load_pretrained(path: str | Path, tokenizer: str | None = None) -> Pretrained:
    """Weights from an export directory, an HF Perceiver directory, a run or a checkpoint."""
    path = Path(path)
    config = path / CONFIG_NAME
    if config.is_file():
        meta = json.loads(config.read_text())
        if meta.get("format") == NATIVE_FORMAT:
            return read_export(path)
        if meta.get("model_type") == "perceiver":
            return read_hf(path)
        raise ValueError(f"{config}: neither a perceiver-pretrain export nor an HF Perceiver")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such export, run or checkpoint directory")
    return read_checkpoint(path, tokenizer)


def write_native(pretrained: Pretrained, output: str | Path, dtype: str = "fp32") -> Path:
    """Writes a native export directory (``config.json`` last: it marks the export complete)."""
    from safetensors.torch import save_file

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / CONFIG_NAME).unlink(missing_ok=True)
    tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in pretrained.state_dict.items()}
    save_file(tensors, str(output / WEIGHTS_NAME), metadata={"format": "pt"})
    tokenizer = dict(pretrained.tokenizer)
    if tokenizer.get("name") == "spm":
        if Path(tokenizer["model_file"]).resolve() != (output / SPM_NAME).resolve():
            shutil.copyfile(tokenizer["model_file"], output / SPM_NAME)
        tokenizer["model_file"] = SPM_NAME
    meta = {
        "format": NATIVE_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_type": pretrained.model_type,
        "model": pretrained.model,
        "tokenizer": tokenizer,
        "dtype": dtype,
        "num_params": sum(v.numel() for v in tensors.values()),
        "source": pretrained.source,
    }
    atomic_write_json(output / CONFIG_NAME, meta)
    return output


def write_hf(pretrained: Pretrained, output: str | Path, dtype: str = "fp32") -> Path:
    """Writes a directory ``transformers.PerceiverForMaskedLM.from_pretrained`` loads (or the
    image / optical-flow class of ``pretrain.models.hf_vision.hf_class_name``)."""
    from transformers import PerceiverForMaskedLM, PerceiverTokenizer

    from pretrain.models import build_config
    from pretrain.models.hf_interop import hf_config, to_hf_state_dict
    from pretrain.models.hf_vision import write_hf_directory
    from pretrain.models.perceiver_io import PerceiverIOConfig

    if pretrained.model_type in HF_VISION_TYPES:
        vision = build_config(pretrained.model_type, pretrained.model)
        return write_hf_directory(vision, pretrained.state_dict, output, DTYPES[dtype])
    if pretrained.model_type != "perceiver_io_mlm":
        raise ValueError(
            f"--format hf: only perceiver_io_mlm has an HF counterpart among the text models (and "
            f"{', '.join(HF_VISION_TYPES)}), not {pretrained.model_type}"
        )
    cfg = PerceiverIOConfig(**pretrained.model)
    hf = PerceiverForMaskedLM(hf_config(cfg))
    hf.load_state_dict(to_hf_state_dict(pretrained.state_dict, cfg))
    output = Path(output)
    hf.to(DTYPES[dtype]).save_pretrained(str(output), safe_serialization=True)
    if pretrained.tokenizer.get("name") == "spm":
        shutil.copyfile(pretrained.tokenizer["model_file"], output / SPM_NAME)
    else:
        PerceiverTokenizer(model_max_length=cfg.max_seq_len).save_pretrained(str(output))
    return output


def export(
    source: str | Path,
    output: str | Path,
    dtype: str = "fp32",
    fmt: str = "native",
    tokenizer: str | None = None,
) -> Path:
    """``perceiver export``: any source :func:`load_pretrained` reads -> ``output``."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: must be one of {sorted(DTYPES)}, got {dtype!r}")
    pretrained = load_pretrained(source, tokenizer)
    if fmt == "native":
        return write_native(pretrained, output, dtype)
    if fmt == "hf":
        return write_hf(pretrained, output, dtype)
    raise ValueError(f"--format: must be native or hf, got {fmt!r}")


# --------------------------------------------------------------------------------------------
# Initial weights for training


def _check_same_architecture(pretrained: Pretrained, model_cfg: Any) -> None:
    """The pretrained encoder's config must equal the new model's (shapes alone miss e.g.
    ``num_self_attention_blocks``)."""
    from pretrain.models.perceiver_io import PerceiverIOConfig

    for f in dataclasses.fields(PerceiverIOConfig):
        if f.name in _NON_ARCHITECTURE_FIELDS or f.name not in pretrained.model:
            continue
        ours = getattr(model_cfg, f.name, None)
        if ours is not None and ours != pretrained.model[f.name]:
            raise ValueError(
                f"model.{f.name}: {ours} differs from the pretrained model's "
                f"{pretrained.model[f.name]} ({pretrained.source.get('path')})"
            )


def adapt_state_dict(
    pretrained: Pretrained, model_type: str, model: nn.Module
) -> tuple[dict[str, Tensor], list[str]]:
    """The pretrained weights ``model`` takes, and the names of its parameters left as
    initialised.

    Same model type: every parameter, exactly. Masked LM -> classifier: the encoder, the decoder
    cross-attention (same shapes) and the class query from the output query of position 0 (where
    ``[CLS]`` is); the MLP head stays freshly initialised.

    Raises:
        ValueError: For an unsupported pair of types or a shape mismatch, naming the key.
    """
    target = model.state_dict()
    source = dict(pretrained.state_dict)
    if pretrained.model_type != model_type:
        if (pretrained.model_type, model_type) != ("perceiver_io_mlm", "perceiver_io_classifier"):
            raise ValueError(
                f"checkpoint.init_from: cannot initialise a {model_type} from a "
                f"{pretrained.model_type}"
            )
        if "output_queries" in source:
            source["class_query"] = source["output_queries"][:1]
    loaded = {k: v for k, v in source.items() if k in target}
    for k, v in loaded.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise ValueError(
                f"checkpoint.init_from: {k} has shape {tuple(v.shape)} in "
                f"{pretrained.source.get('path')}, the model needs {tuple(target[k].shape)}"
            )
    left = [k for k in target if k not in loaded]
    if pretrained.model_type == model_type and left:
        raise ValueError(f"checkpoint.init_from: {pretrained.source.get('path')} lacks {left[:5]}")
    return loaded, left


def load_initial_weights(model: nn.Module, cfg: Any) -> list[str]:
    """Loads ``cfg.checkpoint.init_from`` into ``model`` (call before DeepSpeed wraps it).

    Returns:
        Names of the parameters that kept their fresh initialisation (e.g. the classifier head).
    """
    pretrained = load_pretrained(cfg.checkpoint.init_from)
    _check_same_architecture(pretrained, cfg.model)
    state, left = adapt_state_dict(pretrained, cfg.model_type, model)
    device = next(model.parameters()).device
    missing, unexpected = model.load_state_dict(
        {k: v.to(device) for k, v in state.items()}, strict=False
    )
    if unexpected or sorted(missing) != sorted(left):
        raise RuntimeError(f"init_from: unexpected {unexpected}, missing {missing}")
    return left
