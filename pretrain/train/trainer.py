"""The pretraining loop: set up, resume, loop over steps; log, evaluate, checkpoint, call hooks.

Everything that must survive a restart is in the checkpoint: DeepSpeed's engine state (model,
optimizer, LR schedule), :class:`TrainState` and the data loader's ``state_dict``. Every random
draw of a training micro-step is a function of (seed, micro-step, rank): MLM masks and multimodal
queries come from the objective's generator seeded with (seed, key), dropout and Perceiver AR
prefix dropout from torch's global generator, reseeded before every micro-step
(:func:`seed_micro_step`). No draw depends on what ran before it (a DataLoader iterator created on
resume draws from the global generator), so a resumed run sees exactly the batches, masks, dropout
and losses of a run that never stopped.

The loop knows nothing of who consumes its weights: GLUE probes and anything else that acts at
step k are :class:`pretrain.train.hooks.Hook` objects built by whoever launches training.
Set-up lives beside it: the engine in :mod:`pretrain.train.engine`, the loaders in
:mod:`pretrain.train.loaders`, validation in :mod:`pretrain.train.evaluate`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pretrain.config import Config, check_inputs, save_config
from pretrain.objectives.registry import build_objective
from pretrain.train import checkpoint as ckpt
from pretrain.train import distributed as dist_utils
from pretrain.train.engine import (
    build_training_engine,
    drop_gradients,
    grad_norm,
    has_own_skip,
    skip_step,
    weights_finite,
)
from pretrain.train.evaluate import accumulate, evaluate, reduce_sums
from pretrain.train.hooks import Hook, LoopContext
from pretrain.train.loaders import EpochLoader, build_loader, build_val_loader, to_device
from pretrain.train.metrics import MetricLogger, Throughput, detect_peak_flops, peak_memory_bytes
from pretrain.train.signals import StopSignal


@dataclass
class TrainState:
    """Counters that advance with training (saved in every checkpoint)."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done on each rank
    samples_seen: int = 0  # global
    tokens_seen: int = 0  # global (tokens of model input)
    epoch: int = 0
    requeues: int = 0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradients


@dataclass
class TrainResult:
    """What a call to :func:`train` did (rank 0's view)."""

    status: Literal["finished", "stopped", "preempted"]
    state: TrainState
    run_dir: Path
    checkpoint: Path | None
    first_loss: float | None = None
    last_loss: float | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    num_params: int = 0
    resumed_from: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """What ``summary.json`` holds."""
        return {
            "status": self.status,
            "state": asdict(self.state),
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
            "val_metrics": self.val_metrics,
            "num_params": self.num_params,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
        }


def seed_micro_step(seed: int, key: int) -> None:
    """Seeds torch's global generators (CPU and CUDA) for the micro-step of ``key``.

    The model's draws (dropout, prefix dropout) use ``mix_seed(seed, ~key)``: negative keys, so
    they never share a stream with a batch transform, which seeds its generator with ``key >= 0``.
    """
    from data_pipeline.loading.collators import mix_seed

    torch.manual_seed(mix_seed(seed, ~key))


def train(
    cfg: Config,
    *,
    hooks: Sequence[Hook] = (),
    stop_at_step: int | None = None,
    stopper: StopSignal | None = None,
) -> TrainResult:
    """Run (or resume) training as described by ``cfg``; every rank calls this.

    Args:
        cfg: the validated config.
        hooks: called at the loop's fixed points on every rank (GLUE probes: built by the
            launcher with :func:`pretrain.glue.probes.probe_hooks`).
        stop_at_step: stop (with a checkpoint) after this many steps even though the schedule
            runs to ``trainer.max_steps``; used to test and demonstrate exact resumption.
        stopper: the caller's stop-signal handler, installed before its own start-up; without
            one, train installs its own before anything slow and restores the previous handlers.
    """
    check_inputs(cfg)  # before any file is written, whoever launched this (CLI, Slurm, GLUE)
    env = dist_utils.detect_env()
    if stopper is None:
        stopper = StopSignal(announce=env.is_main)
        try:
            return train(cfg, hooks=hooks, stop_at_step=stop_at_step, stopper=stopper)
        finally:
            stopper.restore()
    return Trainer(cfg, env, hooks).run(stopper, stop_at_step)


def cpu_threads(local_world_size: int) -> int | None:
    """Intra-op threads for one of ``local_world_size`` CPU ranks on this node: the cores split
    between them, or None when ``OMP_NUM_THREADS`` is set (torch read it at start-up; it wins)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (os.cpu_count() or 1) // local_world_size)


class Trainer:
    """One rank's training run: ``__init__`` sets up and resumes, :meth:`run` loops."""

    def __init__(self, cfg: Config, env: dist_utils.DistEnv, hooks: Sequence[Hook] = ()) -> None:
        t = cfg.trainer
        self.cfg, self.env, self.hooks = cfg, env, list(hooks)
        self.device = device = dist_utils.resolve_device(t.device)
        dist_utils.init_distributed(env, device)
        if device.type == "cpu" and (threads := cpu_threads(env.local_world_size)):
            torch.set_num_threads(threads)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        self.run_dir = Path(t.run_dir)
        if env.is_main:
            save_config(cfg, self.run_dir / "config.yaml")

        # What to resume from; written by another number of ranks, it is resharded through a
        # universal checkpoint, which the engine must be built to load.
        resume_path = ckpt.select_resume(cfg.checkpoint.resume, cfg.checkpoint_dir())
        partitions = ckpt.saved_partitions(resume_path) if resume_path is not None else 0
        universal = None
        if partitions not in (0, env.world_size):
            universal = ckpt.ensure_universal(resume_path, env.is_main)
        self.engine, num_params = build_training_engine(
            cfg,
            env.world_size,
            device,
            init_from=bool(cfg.checkpoint.init_from) and resume_path is None,  # not a resume
            universal=universal is not None,
        )
        self.objective = build_objective(cfg)
        self.train_loader = build_loader(
            cfg, self.objective, cfg.data.train_split, cfg.data.shuffle
        )
        self.val_loader, no_val = build_val_loader(cfg, self.objective, env.is_main)

        self.state = TrainState()
        if resume_path is not None:
            client = ckpt.load(self.engine, resume_path, universal=universal)
            self.state = TrainState(**client["train_state"])
            self.train_loader.load_state_dict(client["loader_state"])
        # Slurm counts how often it requeued this job; keep the count with the run's state.
        self.state.requeues = int(os.environ.get("SLURM_RESTART_COUNT", self.state.requeues))
        self.data = EpochLoader(self.train_loader, self.state.epoch)

        self.logger = MetricLogger(
            self.run_dir,
            env.is_main,
            cfg.logging.tensorboard,
            cfg.logging.jsonl,
            resume_step=self.state.step,
        )
        if env.is_main and self.state.step == 0:
            self.logger.log_text("config", "```\n" + cfg.to_yaml() + "\n```", 0)
        if no_val:
            self.logger.log_text("validation", no_val, self.state.step)
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if cfg.autocast_bf16
            else contextlib.nullcontext
        )
        self.flops_per_sample = self.objective.flops_per_sample(cfg.model)
        self.peak_flops = detect_peak_flops(device, t.peak_flops)
        self.result = TrainResult(
            "finished",
            self.state,
            self.run_dir,
            None,
            num_params=num_params,
            resumed_from=resume_path,
        )
        self.meter = Throughput()
        self.window: dict[str, float] = {}  # summed statistics since the last log
        self.last_grad_norm = float("nan")
        self.streak = 0  # consecutive steps with a non-finite loss or gradients (skipped)
        self.progress = None
        if env.is_main and cfg.logging.progress_bar:  # a bar on a terminal, else a line per log
            from pretrain.train.progress import step_progress

            name = f"train {cfg.model_type}"
            self.progress = step_progress(t.max_steps, self.state.step, name, t.log_every)
        self.profiler = None
        if t.profile:
            from pretrain.train.profiling import StepProfiler

            self.profiler = StepProfiler(t.profile, self.run_dir / "profile", env.rank, device)
        self.ctx = LoopContext(cfg, env, device, self.engine, self.state, self.logger, self.run_dir)

    def run(self, stopper: StopSignal, stop_at_step: int | None = None) -> TrainResult:
        """Steps until ``trainer.max_steps``, a stop signal or ``stop_at_step``."""
        cfg, t, state, result = self.cfg, self.cfg.trainer, self.state, self.result
        try:
            for hook in self.hooks:
                hook.on_start(self.ctx)
            while state.step < t.max_steps:
                skipped = self.train_step()
                self.log_step()
                if self.val_loader is not None and (
                    state.step % t.val_every == 0 or state.step == t.max_steps
                ):
                    self.validate()

                stop = dist_utils.all_reduce_max_flag(stopper.requested, self.device)
                stopping = stop or (stop_at_step is not None and state.step >= stop_at_step)
                every = cfg.checkpoint.every
                due = (every and state.step % every == 0) or (
                    state.step == t.max_steps and cfg.checkpoint.save_final
                )
                # a skipped step's weights just gave a non-finite loss: never saved
                if not skipped and (stopping or due):
                    result.checkpoint = self.save()
                self.ctx.stopping = stopping
                for hook in self.hooks:
                    hook.after_step(self.ctx)
                if stopping:
                    result.status = "preempted" if stop else "stopped"
                    break
            for hook in self.hooks:
                hook.on_end(self.ctx, result)
        finally:
            if self.profiler is not None:
                self.profiler.close()
            if self.progress is not None:
                self.progress.close()
            self.logger.close()
        return result

    def train_step(self) -> bool:
        """One optimizer step of ``trainer.grad_accum_steps`` micro-steps; returns whether it was
        skipped (a non-finite loss or gradients on any rank: weights and optimizer unchanged)."""
        t, env, state, objective = self.cfg.trainer, self.env, self.state, self.objective
        if self.profiler is not None:
            self.profiler.before_step(state.step + 1)
        step_tokens = 0
        step_stats: dict[str, float] = {}
        nonfinite = torch.zeros((), device=self.device)
        skipped = False
        for i in range(t.grad_accum_steps):
            last = i == t.grad_accum_steps - 1
            t0 = time.perf_counter()
            key = state.micro_step * env.world_size + env.rank
            raw = self.data.next()
            seed_micro_step(t.seed, key)  # after next(): a new loader iterator draws from it
            # the transform (MLM masking) runs where the batch is: on the GPU when there is one
            batch = objective.transform(to_device(raw, self.device), key)
            self.meter.data_wait += time.perf_counter() - t0
            with self.autocast():
                loss, stats = objective.step(self.engine, batch)
            nonfinite = torch.maximum(nonfinite, (~torch.isfinite(loss.detach())).float())
            if last:  # before the last backward: all ranks skip alike
                skipped = dist_utils.any_rank(nonfinite)
            if skipped:
                skip_step(self.engine, loss)
            else:
                skipped = self._backward(loss, last)
            state.micro_step += 1
            accumulate(step_stats, stats)
            self.meter.samples += objective.num_samples(batch)
            step_tokens += objective.num_tokens(batch)
        self.meter.tokens += step_tokens
        state.step += 1
        if self.profiler is not None:
            self.profiler.after_step(state.step)
        if skipped:
            self._skipped()
        else:
            self.streak = 0
            for k, v in step_stats.items():
                self.window[k] = self.window.get(k, 0.0) + v
        state.epoch = self.data.epoch
        state.samples_seen += t.micro_batch_size * t.grad_accum_steps * env.world_size
        state.tokens_seen += step_tokens * env.world_size
        return skipped

    def _backward(self, loss: torch.Tensor, last: bool) -> bool:
        """Backward and (at the accumulation boundary) optimizer step; True if the step was
        skipped for non-finite gradients."""
        engine = self.engine
        engine.backward(loss)
        if engine.is_gradient_accumulation_boundary() and engine.get_global_grad_norm() is None:
            self.last_grad_norm = grad_norm(engine.module)
        if last and not has_own_skip(engine) and not math.isfinite(self.last_grad_norm):
            drop_gradients(engine)  # all-reduced gradients: the same on every rank
            return True
        engine.step()
        # DeepSpeed skipped it for non-finite gradients (fp16: loss scaling, not a failure)
        return last and not engine.was_step_applied() and self.cfg.trainer.precision != "fp16"

    def _skipped(self) -> None:
        """Counts a skipped step; too many in a row end the run (:meth:`diverged`)."""
        t = self.cfg.trainer
        self.state.skipped_steps += 1
        self.streak += 1
        if self.streak > t.nonfinite_skip_limit:
            raise self.diverged(self.state.step - self.streak + 1)
        if self.env.is_main:
            warnings.warn(
                f"step {self.state.step}: non-finite loss or gradients, optimizer step skipped "
                f"({self.streak} in a row; trainer.nonfinite_skip_limit={t.nonfinite_skip_limit})",
                stacklevel=1,
            )

    def log_step(self) -> None:
        """Every ``trainer.log_every`` steps (and the last): the window's metrics, reduced."""
        t, state, engine = self.cfg.trainer, self.state, self.engine
        # (nothing to log when every step since the last log was skipped)
        if self.window and (state.step % t.log_every == 0 or state.step == t.max_steps):
            sums = reduce_sums(self.window, self.objective.stat_keys, self.device)
            metrics = self.objective.summarize(sums, "train")
            norm = engine.get_global_grad_norm()
            metrics.update(
                {
                    "train/lr": engine.get_lr()[0],
                    "train/grad_norm": float(self.last_grad_norm if norm is None else norm),
                    "train/tokens_seen": float(state.tokens_seen),
                    "train/epoch": float(state.epoch),
                    "train/skipped_steps": float(state.skipped_steps),
                    "perf/peak_memory_gib": peak_memory_bytes(self.device) / 2**30,
                    **self.meter.summary(
                        self.env.world_size, self.flops_per_sample, self.peak_flops
                    ),
                }
            )
            self.logger.log(metrics, state.step)
            if self.result.first_loss is None:
                self.result.first_loss = metrics["train/loss"]
            self.result.last_loss = metrics["train/loss"]
            if self.progress is not None:
                self.progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
            self.window = {}
            self.meter.reset()
        if self.progress is not None:
            self.progress.update(1)

    def validate(self) -> None:
        """The objective's validation metrics, logged with its images (collective)."""
        t = self.cfg.trainer
        with self.autocast():
            self.result.val_metrics = evaluate(
                self.engine,
                self.val_loader,
                self.objective,
                t.val_batches,
                self.device,
                self.env.world_size,
            )
        self.logger.log(self.result.val_metrics, self.state.step)
        self.logger.log_images(self.objective.images(), self.state.step)

    def save(self) -> Path:
        """A collective checkpoint of this step; never of weights that are not finite."""
        cfg, step = self.cfg, self.state.step
        if not weights_finite(self.engine, self.device):
            raise FloatingPointError(
                f"step {step}: the weights are not finite; not saved. Last good checkpoint: "
                f"{ckpt.find_latest(cfg.checkpoint_dir())}"
            )
        client = {"train_state": asdict(self.state), "loader_state": self.train_loader.state_dict()}
        path = ckpt.save(
            self.engine, cfg.checkpoint_dir(), step, client, cfg.to_yaml(), cfg.checkpoint.keep
        )
        for hook in self.hooks:
            hook.after_save(self.ctx, path)
        return path

    def diverged(self, first_bad: int) -> FloatingPointError:
        """Reject the checkpoint holding the weights that made the loss non-finite, and say so."""
        cfg = self.cfg
        before = cfg.checkpoint_dir() / ckpt.tag_for_step(first_bad - 1)
        if self.env.is_main and ckpt.is_complete(before):
            ckpt.reject(before, f"its weights gave a non-finite loss from step {first_bad} on")
        dist_utils.barrier()
        return FloatingPointError(
            f"step {self.state.step}: loss or gradients were not finite on {self.streak} "
            f"consecutive steps (since step {first_bad}; trainer.nonfinite_skip_limit="
            f"{cfg.trainer.nonfinite_skip_limit}). Last good checkpoint: "
            f"{ckpt.find_latest(cfg.checkpoint_dir())}"
        )
