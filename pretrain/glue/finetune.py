"""``perceiver glue``: fine-tune a pretrained checkpoint on GLUE tasks through the trainer.

For each task, a grid of runs (the paper's recipe, ``configs/glue.yaml``: LAMB, 10 epochs, 200
warmup steps, weight decay 0.01; lr in {1e-4, 5e-5, 2e-5, 1e-5} x batch in {16, 32, 64}) is
planned as ordinary training configs (:func:`plan_task`): model ``perceiver_io_classifier`` with
the pretrained encoder's fields and the task's number of classes, ``data.dir = <glue_dir>/<TASK>``,
``checkpoint.init_from`` the pretrained weights, ``glue.tokenizer`` what pretraining used, and
``trainer.max_steps = epochs * (train examples // batch)`` (the dev set is evaluated in the loop
once per epoch). Each run trains with ``pretrain.train.trainer.train`` (ZeRO, bf16, checkpoints and
TensorBoard as in pretraining), in this process (``--nproc-per-node 1``), in N local processes, or
as a Slurm job array per batch size (``--slurm``). Run directories::

    <out>/pretrained/                 # the source consolidated once (unless it is an export)
    <out>/<task>/bs=<B>/lr=<LR>/      # config.yaml, checkpoints/, tensorboard/, eval.json,
                                      # predictions/{dev*,test*}.tsv
    <out>/results.json|md, <out>/submission/*.tsv

:func:`collect` evaluates every finished run (final checkpoint = ``trainer.max_steps``) on the
dev split(s) with the exact GLUE metrics and writes test predictions, then picks the best run
per task by dev score; after a Slurm sweep, ``perceiver glue --collect`` does only this step.
Finished runs are not trained again, so an interrupted ``perceiver glue`` continues where it
stopped.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from data_pipeline.files import atomic_write_json
from pretrain.config import CONFIG_ROOT, Config, ConfigError, config_from_dict, load_config
from pretrain.glue import metrics as M
from pretrain.glue import results as R
from pretrain.glue.tasks import (
    DIAGNOSTIC,
    TASKS,
    TaskSpec,
    get_task,
    read_split,
    split_path,
    task_files,
)

GLUE_CONFIG = CONFIG_ROOT / "glue.yaml"
PAPER_LRS = ("1e-4", "5e-5", "2e-5", "1e-5")
PAPER_BATCH_SIZES = (16, 32, 64)
PAPER_EPOCHS = 10
EVAL_FILE = "eval.json"


@dataclass
class GlueRun:
    """One point of a task's grid."""

    task: TaskSpec
    lr: str
    batch_size: int
    cfg: Config

    @property
    def run_dir(self) -> Path:
        """The run's ``trainer.run_dir``."""
        return Path(self.cfg.trainer.run_dir)


def prepare_source(
    checkpoint: str | Path, out_dir: str | Path, write: bool = True
) -> tuple[Path, Any]:
    """The pretrained weights as a native export (consolidated once into ``<out>/pretrained``
    unless ``checkpoint`` already is one; ``write=False`` only says where). Returns the export
    directory and the ``Pretrained``."""
    from pretrain.export import NATIVE_FORMAT, load_pretrained, write_native

    checkpoint = Path(checkpoint)
    config = checkpoint / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("format") == NATIVE_FORMAT:
        return checkpoint.resolve(), load_pretrained(checkpoint)
    pretrained = load_pretrained(checkpoint)
    export_dir = (Path(out_dir) / "pretrained").resolve()
    if write:
        write_native(pretrained, export_dir)
    return export_dir, pretrained


def classifier_model(pretrained: Any, task: TaskSpec) -> dict[str, Any]:
    """The ``model`` section: the pretrained encoder's fields + the task's classes."""
    from pretrain.models.perceiver_io import PerceiverIOConfig

    if pretrained.model_type not in ("perceiver_io_mlm", "perceiver_io_classifier"):
        raise ValueError(f"GLUE fine-tunes Perceiver IO models, not {pretrained.model_type}")
    names = {f.name for f in PerceiverIOConfig.__dataclass_fields__.values()}
    fields = {k: v for k, v in pretrained.model.items() if k in names}
    return {"type": "perceiver_io_classifier", **fields, "num_classes": task.num_classes}


def available_tasks(
    glue_dir: str | Path, tasks: list[TaskSpec], test: bool = True, skip_missing: bool = False
) -> tuple[list[TaskSpec], dict[str, list[str]]]:
    """The tasks whose files (:func:`~pretrain.glue.tasks.task_files`) all exist, and the missing
    files of the others (task name -> paths).

    Raises:
        FileNotFoundError: Naming every missing file, if one is missing (``skip_missing``: if no
            task has all its files).
    """
    missing = {}
    for task in tasks:
        absent = [str(p) for p in task_files(glue_dir, task, test) if not p.is_file()]
        if absent:
            missing[task.name] = absent
    present = [task for task in tasks if task.name not in missing]
    if missing and not (skip_missing and present):
        lines = "".join(f"\n  {TASKS[n].dir_name}: {', '.join(f)}" for n, f in missing.items())
        raise FileNotFoundError(f"GLUE files missing under {glue_dir}, nothing was run:{lines}")
    return present, missing


def num_train_examples(cfg: Config) -> int:
    """Training examples of the run (after ``glue.max_train_examples``)."""
    examples, _ = read_split(cfg.data.dir, get_task(cfg.glue.task), cfg.data.train_split)
    limit = cfg.glue.max_train_examples
    return min(len(examples), limit) if limit else len(examples)


def plan_task(
    task: TaskSpec,
    *,
    glue_dir: str | Path,
    out_dir: str | Path,
    init_from: str | Path,
    pretrained: Any,
    lrs: tuple[str, ...] = PAPER_LRS,
    batch_sizes: tuple[int, ...] = PAPER_BATCH_SIZES,
    epochs: int = PAPER_EPOCHS,
    max_steps: int | None = None,
    world_size: int = 1,
    overrides: list[str] | None = None,
    base_config: str | Path = GLUE_CONFIG,
) -> list[GlueRun]:
    """The grid of one task as validated configs (see the module docstring).

    Raises:
        ConfigError: For a batch size the world size does not divide, a training set smaller
            than one batch, or any invalid override.
    """
    base = yaml.safe_load(Path(base_config).read_text()) or {}
    base["model"] = classifier_model(pretrained, task)
    base.setdefault("data", {}).update(
        dir=str((Path(glue_dir) / task.dir_name).resolve()),
        train_split="train",
        val_split=task.dev_splits[0],
    )
    base.setdefault("checkpoint", {})["init_from"] = str(init_from)
    base.setdefault("glue", {}).update(task=task.name, tokenizer=pretrained.tokenizer_name())
    search = [Path(base_config).resolve().parent, CONFIG_ROOT]
    probe = config_from_dict(base, overrides, search)
    n = num_train_examples(probe)
    runs = []
    for batch_size in batch_sizes:
        if batch_size % world_size:
            raise ConfigError(f"--batch-sizes: {batch_size} is not divisible by {world_size} ranks")
        steps_per_epoch = n // batch_size
        if steps_per_epoch < 1:
            raise ConfigError(f"{task.dir_name}: {n} training examples < one batch of {batch_size}")
        steps = max_steps or epochs * steps_per_epoch
        for lr in lrs:
            data = copy.deepcopy(base)
            data["optimizer"] = {**data.get("optimizer", {}), "lr": float(lr)}
            point = f"lr={lr}"
            trainer = data.setdefault("trainer", {})
            if probe.optimizer.warmup_steps >= steps:  # shorter than the warmup: warm a tenth
                data["optimizer"]["warmup_steps"] = steps // 10
            trainer.update(
                run_dir=str(Path(out_dir).resolve() / task.name / f"bs={batch_size}" / point),
                max_steps=steps,
                micro_batch_size=batch_size // world_size,
                val_every=0 if max_steps else steps_per_epoch,
            )
            cfg = config_from_dict(data, overrides, search)
            runs.append(GlueRun(task, lr, batch_size, cfg))
    return runs


def is_finished(cfg: Config) -> bool:
    """Whether the run has its final checkpoint."""
    from pretrain.train import checkpoint as ckpt

    done = ckpt.list_complete(cfg.checkpoint_dir())
    return bool(done) and done[-1][0] >= cfg.trainer.max_steps


def train_run(run: GlueRun, nproc: int = 1) -> None:
    """Trains one grid point (unless finished): in this process, or ``nproc`` local ranks."""
    from pretrain.config import save_config

    if is_finished(run.cfg):
        return
    run.cfg.objective.check_data(run.cfg)
    if nproc > 1:
        from pretrain.train.distributed import spawn_local

        path = run.run_dir / "train.yaml"
        save_config(run.cfg, path)
        code = spawn_local(["train", str(path)], nproc)
        if code:
            raise RuntimeError(f"fine-tuning {run.run_dir} failed with exit code {code}")
        return
    from pretrain.train.trainer import train

    train(run.cfg)


# --------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(model: torch.nn.Module, split: Any, batch_size: int = 64) -> np.ndarray:
    """Model outputs (float64 [n, k]) for every example of an encoded split, in order."""
    from pretrain.glue.data import EvalLoader

    outputs = np.zeros((len(split), model.cfg.num_classes))
    for batch in EvalLoader(split, batch_size, rank=0, world_size=1):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).double()
        keep = batch["weight"] > 0
        outputs[batch["row"][keep].numpy()] = logits[keep].numpy()
    return outputs


def _labels_to_metrics(task: TaskSpec, outputs: np.ndarray, labels: np.ndarray) -> dict:
    preds = task.score(outputs[:, 0]) if task.is_regression else outputs.argmax(-1)
    return M.split_metrics(task.metrics, preds, labels)


def evaluate_run(run_dir: str | Path, predict_test: bool = True) -> dict[str, Any]:
    """Dev metrics (percent) and prediction files of a finished run; writes ``eval.json``."""
    from pretrain.export import consolidate, find_checkpoint
    from pretrain.glue.data import load_split
    from pretrain.models import build_model

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    task = get_task(cfg.glue.task)
    checkpoint = find_checkpoint(run_dir)
    model = build_model(cfg.model_type, cfg.model)
    model.load_state_dict(consolidate(checkpoint))
    model.eval()
    metrics: dict[str, float] = {}
    dev_predictions = {}
    for split in task.dev_splits:
        data = load_split(cfg, split)
        outputs = predict(model, data)
        found = _labels_to_metrics(task, outputs, data.labels)
        if task.name == "mnli":  # accuracy_m / accuracy_mm from the two dev splits
            found = {"accuracy_" + ("m" if split == "dev_matched" else "mm"): found["accuracy"]}
        metrics.update(found)
        path = run_dir / "predictions" / f"{split}.tsv"
        R.write_predictions(path, data.indices, R.prediction_strings(task, outputs))
        dev_predictions[split] = str(path)
    test_predictions = {}
    if predict_test:
        glue_dir = Path(cfg.data.dir).parent
        sources = [(task, s, name) for s, name in task.test_splits.items()]
        if task.name == "mnli":
            sources.append((DIAGNOSTIC, "diagnostic", "AX"))
        for spec, split, name in sources:
            path = split_path(glue_dir, spec, split)
            if spec is DIAGNOSTIC and not path.is_file():  # optional; test files are not
                continue
            data = load_split(cfg, split, task_dir=path.parent, task=spec)
            outputs = predict(model, data)
            out = R.write_predictions(
                run_dir / "predictions" / f"{name}.tsv",
                data.indices,
                R.prediction_strings(spec, outputs),
            )
            test_predictions[name] = str(out)
    result = {
        "task": task.name,
        "run_dir": str(run_dir),
        "lr": cfg.optimizer.lr,
        "batch_size": cfg.trainer.micro_batch_size * _world_size(checkpoint),
        "step": int(checkpoint.name.split("_")[-1]),
        "metrics": metrics,
        "score": M.task_score(metrics, task.metrics),
        "dev_predictions": dev_predictions,
        "test_predictions": test_predictions,
    }
    atomic_write_json(run_dir / EVAL_FILE, result)  # read back by collect (cached)
    return result


def _world_size(checkpoint: Path) -> int:
    meta = json.loads((checkpoint / "COMPLETE").read_text() or "{}")
    return int(meta.get("world_size", 1))


def task_run_dirs(out_dir: str | Path, task: TaskSpec) -> list[Path]:
    """Run directories of ``task`` under ``out_dir`` (those with a saved config)."""
    return sorted(p.parent for p in (Path(out_dir) / task.name).glob("bs=*/lr=*/config.yaml"))


def collect(
    out_dir: str | Path,
    tasks: list[TaskSpec],
    predict_test: bool = True,
    missing_files: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Evaluates every finished run of ``tasks`` (reusing up-to-date ``eval.json`` files), picks
    the best per task, and writes ``results.json``/``results.md`` and the submission files.
    ``missing_files`` (task -> paths: the tasks not run for want of them) goes into the results."""
    evaluations: dict[str, list[dict[str, Any]]] = {}
    unfinished = []
    for task in tasks:
        runs = []
        for run_dir in task_run_dirs(out_dir, task):
            cfg = load_config(run_dir / "config.yaml")
            if not is_finished(cfg):
                unfinished.append(str(run_dir))
                continue
            cached = run_dir / EVAL_FILE
            if (
                cached.is_file()
                and cached.stat().st_mtime >= (run_dir / "checkpoints").stat().st_mtime
            ):
                runs.append(json.loads(cached.read_text()))
            else:
                runs.append(evaluate_run(run_dir, predict_test))
        evaluations[task.name] = runs
    results = R.summarize(evaluations)
    results["unfinished_runs"] = unfinished
    results["missing_files"] = dict(missing_files or {})
    R.write_results(out_dir, results)
    R.write_submission(out_dir, results)
    return results
