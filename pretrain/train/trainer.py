"""The pretraining loop: build, resume, loop over steps, log, evaluate, checkpoint.

Everything that must survive a restart is in the checkpoint: DeepSpeed's engine state (model,
optimizer, LR schedule), :class:`TrainState` and the data loader's ``state_dict``. Every random
draw of a training micro-step is a function of (seed, micro-step, rank): MLM masks and multimodal
queries come from the objective's generator seeded with (seed, key), dropout and Perceiver AR
prefix dropout from torch's global generator, reseeded before every micro-step
(:func:`seed_micro_step`). No draw depends on what ran before it (a DataLoader iterator created on
resume draws from the global generator), so a resumed run sees exactly the batches, masks, dropout
and losses of a run that never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pretrain.config import Config, check_inputs, save_config
from pretrain.objectives.base import Objective
from pretrain.objectives.registry import build_objective
from pretrain.train import checkpoint as ckpt
from pretrain.train import distributed as dist_utils
from pretrain.train.metrics import MetricLogger, Throughput, detect_peak_flops, peak_memory_bytes
from pretrain.train.signals import StopSignal

VAL_KEY_OFFSET = 1 << 40  # validation masks use keys disjoint from training's


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


class _EpochLoader:
    """Endless iteration over a StreamingDataLoader, counting epochs."""

    def __init__(self, loader: Any, epoch: int) -> None:
        self.loader = loader
        self.epoch = epoch
        self._it = None

    def next(self) -> dict[str, torch.Tensor]:
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
        raise RuntimeError(
            "data.dir: the training split yields no batch in a whole epoch; it has fewer samples "
            "than one global batch (trainer.micro_batch_size x world size)"
        )


def seed_micro_step(seed: int, key: int) -> None:
    """Seeds torch's global generators (CPU and CUDA) for the micro-step of ``key``.

    The model's draws (dropout, prefix dropout) use ``mix_seed(seed, ~key)``: negative keys, so
    they never share a stream with a batch transform, which seeds its generator with ``key >= 0``.
    """
    from data_pipeline.loading.collators import mix_seed

    torch.manual_seed(mix_seed(seed, ~key))


def _build_engine(
    cfg: Config, model: torch.nn.Module, device: torch.device, world_size: int, universal: bool
):
    import deepspeed

    from pretrain.train.ds_config import build_ds_config
    from pretrain.train.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, cfg.optimizer, device)
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps)
    ds_config = build_ds_config(cfg, world_size, device.type == "cuda", load_universal=universal)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine


def _build_loader(cfg: Config, split: str, shuffle: bool):
    from data_pipeline.loading.dataset import build_dataloader
    from data_pipeline.loading.mixtures import (
        MixtureSource,
        build_mixture_dataloader,
        build_val_loader,
        check_datasets,
    )

    # One cache per node: streaming's local leaders must not share a `local` dir (run_dir may be
    # on a shared filesystem, and a test cluster runs several Slurm nodes on one host).
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    cache_root = Path(cfg.data.cache_dir or Path(cfg.trainer.run_dir) / ".streaming_cache" / node)
    datasets = cfg.data.dataset_dirs()
    if split == cfg.data.train_split and cfg.model_type in ("perceiver_io_mlm", "perceiver_ar"):
        check_datasets(  # refuses shards the model cannot read, naming model.vocab_size
            [d for _, d, _ in datasets],
            max_seq_len=cfg.model.max_seq_len,
            objective=cfg.objective.name,
            vocab_size=cfg.model.vocab_size,
        )
    if not cfg.data.mixture:
        return build_dataloader(
            cfg.data.dir,
            split,
            cfg.trainer.micro_batch_size,
            shuffle=shuffle,
            seed=cfg.data.shuffle_seed,
            num_workers=cfg.data.num_workers,
            cache_root=str(cache_root),
            **cfg.data.stream_options(),
        )
    sources = [MixtureSource(name, d, p) for name, d, p in datasets]
    if split == cfg.data.train_split:
        return build_mixture_dataloader(
            sources,
            split,
            cfg.trainer.micro_batch_size,
            shuffle=shuffle,
            seed=cfg.data.shuffle_seed,
            num_workers=cfg.data.num_workers,
            cache_root=str(cache_root),
            **cfg.data.stream_options(),
        )
    return build_val_loader(  # each dataset's own val split, interleaved in proportion
        sources,
        cfg.trainer.micro_batch_size,
        split=split,
        num_workers=cfg.data.num_workers,
        cache_root=str(cache_root),
        **cfg.data.stream_options(),
    )


def _build_val_loader(cfg: Config, build_loader, is_main: bool) -> tuple[Any, str]:
    """The validation loader, or None and why: an empty split is warned about once, not fatal."""
    from data_pipeline.loading.dataset import EmptySplitError

    if not cfg.trainer.val_every:
        return None, ""
    try:
        return build_loader(cfg, cfg.data.val_split, False), ""
    except EmptySplitError as err:
        why = f"no validation (trainer.val_every={cfg.trainer.val_every} skipped): {err}"
        if is_main:
            logging.getLogger(__name__).warning(why)
        return None, why


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _grad_norm(model: torch.nn.Module) -> float:
    """Global L2 norm of the (already all-reduced) gradients, for engines that do not report it."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _any_rank(flag: torch.Tensor) -> bool:
    """True on every rank if ``flag`` (a 0-d tensor, 1 = set) is set on any rank (one sync)."""
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _skip_step(engine, loss: torch.Tensor) -> None:
    """The last micro-step of a step, leaving weights and optimizer state unchanged.

    DeepSpeed's own optimizers (ZeRO, bf16, fp16) skip a step whose gradients are not finite,
    consistently on every rank, so the loss is made NaN for them; see :func:`_drop_gradients`
    for a plain torch optimizer.
    """
    if hasattr(engine.optimizer, "overflow"):
        engine.backward(loss * float("nan"))
        engine.step()
        if engine.was_step_applied():
            raise RuntimeError("DeepSpeed applied an optimizer step with non-finite gradients")
    else:
        engine.backward(loss)
        _drop_gradients(engine)


def _drop_gradients(engine) -> None:
    """Instead of ``engine.step()`` under a plain torch optimizer (ZeRO stage 0 without
    DeepSpeed's bf16/fp16), which has no skip: no optimizer step, the gradients are dropped and
    the engine's micro-step counter advances as ``engine.step()`` would advance it."""
    engine.zero_grad()
    engine.micro_steps += 1


def _weights_finite(engine, device: torch.device) -> bool:
    """Whether every rank's weights (its ZeRO-3 partition, if any) are finite (collective)."""
    bad = torch.zeros((), device=device)
    for p in engine.module.parameters():
        for t in (p.data, getattr(p, "ds_tensor", None)):
            if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
                bad.fill_(1.0)
    return not _any_rank(bad)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


def _accumulate(sums: dict[str, float], stats: dict[str, torch.Tensor]) -> None:
    for k, v in stats.items():
        sums[k] = sums.get(k, 0.0) + float(v)


def _reduce(sums: dict[str, float], keys: tuple[str, ...], device) -> dict[str, float]:
    """Sum statistics over ranks (keys in a fixed order, so every rank reduces the same tensor)."""
    return dict(zip(keys, _all_reduce_sum([sums.get(k, 0.0) for k in keys], device)))


@torch.no_grad()
def evaluate(engine, loader, objective: Objective, max_batches: int, device, world_size: int):
    """The objective's metrics on up to ``max_batches`` batches of every rank."""
    engine.eval()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    sums: dict[str, float] = {}
    n = min(max_batches, len(loader))
    for i, raw in enumerate(loader):
        if i >= n:
            break
        batch = objective.transform(_to_device(raw, device), VAL_KEY_OFFSET + i * world_size + rank)
        _, stats = objective.step(engine, batch)
        _accumulate(sums, stats)
    engine.train()
    return objective.summarize(_reduce(sums, objective.stat_keys, device), "val")


def train(
    cfg: Config, *, stop_at_step: int | None = None, stopper: StopSignal | None = None
) -> TrainResult:
    """Run (or resume) training as described by ``cfg``; every rank calls this.

    Args:
        cfg: the validated config.
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
            return train(cfg, stop_at_step=stop_at_step, stopper=stopper)
        finally:
            stopper.restore()
    device = dist_utils.resolve_device(cfg.trainer.device)
    dist_utils.init_distributed(env, device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    run_dir = Path(cfg.trainer.run_dir)
    t = cfg.trainer
    if env.is_main:
        save_config(cfg, run_dir / "config.yaml")

    from pretrain.models.attention import writable
    from pretrain.train.ds_config import build_ds_config
    from pretrain.train.parallelize import (
        apply_activation_checkpointing,
        build_for_training,
        num_parameters,
    )

    model_cfg = cfg.model
    # identical initial weights on every rank; under ZeRO-3 partitioned while they are built
    ds_config = build_ds_config(cfg, env.world_size, device.type == "cuda")
    model = build_for_training(cfg.model_type, model_cfg, t.seed, ds_config).to(device)
    num_params = num_parameters(model)
    if t.activation_checkpointing:
        apply_activation_checkpointing(model)
    resume_path = ckpt.select_resume(cfg.checkpoint.resume, cfg.checkpoint_dir())
    universal = None
    if resume_path is not None and ckpt.saved_partitions(resume_path) not in (0, env.world_size):
        # written by another number of ranks: reshard through a universal checkpoint
        universal = ckpt.ensure_universal(resume_path, env.is_main)
    if cfg.checkpoint.init_from and resume_path is None:  # pretrained weights, not a resume
        from pretrain.export import load_initial_weights

        with writable(*model.parameters()):  # ZeRO-3: whole while they are loaded
            load_initial_weights(model, cfg)
    engine = _build_engine(cfg, model, device, env.world_size, universal is not None)
    if t.compile:
        from torch._inductor import config as inductor_config

        # compiled random draws (dropout, prefix dropout) from torch's generator, as in eager:
        # the same (seed, micro-step, rank) stream, so compiled runs also resume exactly
        inductor_config.fallback_random = True
        engine.compile()  # DeepSpeed's: torch.compile of the module, its ZeRO hooks kept

    objective = build_objective(cfg)
    build_loader = _build_loader if objective.shard_kind else objective.build_loader  # GLUE: TSVs
    train_loader = build_loader(cfg, cfg.data.train_split, cfg.data.shuffle)
    val_loader, no_val = _build_val_loader(cfg, build_loader, env.is_main)
    probes = None
    if cfg.probes.every:  # GLUE probes of the weights every N steps (pretrain/glue/probes.py)
        from pretrain.glue.probes import ProbeRunner

        probes = ProbeRunner(cfg, env.is_main)
    state = TrainState()
    if resume_path is not None:
        client = ckpt.load(engine, resume_path, universal=universal)
        state = TrainState(**client["train_state"])
        train_loader.load_state_dict(client["loader_state"])
    # Slurm counts how often it requeued this job; keep the count with the run's state.
    state.requeues = int(os.environ.get("SLURM_RESTART_COUNT", state.requeues))
    data = _EpochLoader(train_loader, state.epoch)

    logger = MetricLogger(
        run_dir, env.is_main, cfg.logging.tensorboard, cfg.logging.jsonl, resume_step=state.step
    )
    if env.is_main and state.step == 0:
        logger.log_text("config", "```\n" + cfg.to_yaml() + "\n```", 0)
    if no_val:
        logger.log_text("validation", no_val, state.step)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if cfg.autocast_bf16
        else contextlib.nullcontext
    )
    last_grad_norm = float("nan")
    flops_per_sample = objective.flops_per_sample(model_cfg)
    peak_flops = detect_peak_flops(device, t.peak_flops)
    result = TrainResult(
        "finished", state, run_dir, None, num_params=num_params, resumed_from=resume_path
    )
    meter = Throughput()
    window: dict[str, float] = {}  # summed statistics since the last log
    progress = None
    if env.is_main and cfg.logging.progress_bar:  # a bar on a terminal, else a line per log
        from pretrain.train.progress import step_progress

        progress = step_progress(t.max_steps, state.step, f"train {cfg.model_type}", t.log_every)

    def save(step: int) -> Path:
        if not _weights_finite(engine, device):
            raise FloatingPointError(
                f"step {step}: the weights are not finite; not saved. Last good checkpoint: "
                f"{ckpt.find_latest(cfg.checkpoint_dir())}"
            )
        client = {"train_state": asdict(state), "loader_state": train_loader.state_dict()}
        return ckpt.save(
            engine, cfg.checkpoint_dir(), step, client, cfg.to_yaml(), cfg.checkpoint.keep
        )

    def diverged(first_bad: int) -> FloatingPointError:
        """Reject the checkpoint holding the weights that made the loss non-finite, and say so."""
        before = cfg.checkpoint_dir() / ckpt.tag_for_step(first_bad - 1)
        if env.is_main and ckpt.is_complete(before):
            ckpt.reject(before, f"its weights gave a non-finite loss from step {first_bad} on")
        dist_utils.barrier()
        return FloatingPointError(
            f"step {state.step}: loss or gradients were not finite on {streak} consecutive steps "
            f"(since step {first_bad}; trainer.nonfinite_skip_limit={t.nonfinite_skip_limit}). "
            f"Last good checkpoint: {ckpt.find_latest(cfg.checkpoint_dir())}"
        )

    streak = 0  # consecutive steps with a non-finite loss or gradients (skipped)
    profiler = None
    if t.profile:
        from pretrain.train.profiling import StepProfiler

        profiler = StepProfiler(t.profile, run_dir / "profile", env.rank, device)

    try:
        while state.step < t.max_steps:
            if profiler is not None:
                profiler.before_step(state.step + 1)
            step_tokens = 0
            step_stats: dict[str, float] = {}
            nonfinite = torch.zeros((), device=device)
            bad = False
            for i in range(t.grad_accum_steps):
                t0 = time.perf_counter()
                key = state.micro_step * env.world_size + env.rank
                raw = data.next()
                seed_micro_step(t.seed, key)  # after next(): a new loader iterator draws from it
                # the transform (MLM masking) runs where the batch is: on the GPU when there is one
                batch = objective.transform(_to_device(raw, device), key)
                meter.data_wait += time.perf_counter() - t0
                with autocast():
                    loss, stats = objective.step(engine, batch)
                nonfinite = torch.maximum(nonfinite, (~torch.isfinite(loss.detach())).float())
                if i == t.grad_accum_steps - 1:
                    bad = _any_rank(nonfinite)  # before the last backward: all ranks skip alike
                if bad:
                    _skip_step(engine, loss)
                else:
                    engine.backward(loss)
                    if (
                        engine.is_gradient_accumulation_boundary()
                        and engine.get_global_grad_norm() is None
                    ):
                        last_grad_norm = _grad_norm(engine.module)
                    last = i == t.grad_accum_steps - 1
                    plain_optimizer = not hasattr(engine.optimizer, "overflow")
                    if last and plain_optimizer and not math.isfinite(last_grad_norm):
                        bad = True  # all-reduced gradients: the same on every rank
                        _drop_gradients(engine)
                    else:
                        engine.step()
                        # DeepSpeed skipped it for non-finite gradients (fp16: loss scaling)
                        bad = last and not engine.was_step_applied() and t.precision != "fp16"
                state.micro_step += 1
                _accumulate(step_stats, stats)
                meter.samples += objective.num_samples(batch)
                step_tokens += objective.num_tokens(batch)
            meter.tokens += step_tokens
            state.step += 1
            if profiler is not None:
                profiler.after_step(state.step)
            if bad:
                state.skipped_steps += 1
                streak += 1
                if streak > t.nonfinite_skip_limit:
                    raise diverged(state.step - streak + 1)
                if env.is_main:
                    warnings.warn(
                        f"step {state.step}: non-finite loss or gradients, optimizer step skipped "
                        f"({streak} in a row; trainer.nonfinite_skip_limit="
                        f"{t.nonfinite_skip_limit})",
                        stacklevel=1,
                    )
            else:
                streak = 0
                for k, v in step_stats.items():
                    window[k] = window.get(k, 0.0) + v
            state.epoch = data.epoch
            state.samples_seen += t.micro_batch_size * t.grad_accum_steps * env.world_size
            state.tokens_seen += step_tokens * env.world_size

            # (nothing to log when every step since the last log was skipped)
            if window and (state.step % t.log_every == 0 or state.step == t.max_steps):
                metrics = objective.summarize(_reduce(window, objective.stat_keys, device), "train")
                grad_norm = engine.get_global_grad_norm()
                metrics.update(
                    {
                        "train/lr": engine.get_lr()[0],
                        "train/grad_norm": float(
                            last_grad_norm if grad_norm is None else grad_norm
                        ),
                        "train/tokens_seen": float(state.tokens_seen),
                        "train/epoch": float(state.epoch),
                        "train/skipped_steps": float(state.skipped_steps),
                        "perf/peak_memory_gib": peak_memory_bytes(device) / 2**30,
                        **meter.summary(env.world_size, flops_per_sample, peak_flops),
                    }
                )
                logger.log(metrics, state.step)
                if result.first_loss is None:
                    result.first_loss = metrics["train/loss"]
                result.last_loss = metrics["train/loss"]
                if progress is not None:
                    progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
                window = {}
                meter.reset()
            if progress is not None:
                progress.update(1)

            if val_loader is not None and (
                state.step % t.val_every == 0 or state.step == t.max_steps
            ):
                with autocast():
                    result.val_metrics = evaluate(
                        engine, val_loader, objective, t.val_batches, device, env.world_size
                    )
                logger.log(result.val_metrics, state.step)
                logger.log_images(objective.images(), state.step)

            stop = dist_utils.all_reduce_max_flag(stopper.requested, device)
            if stop or (stop_at_step is not None and state.step >= stop_at_step):
                result.status = "preempted" if stop else "stopped"
                if not bad:  # a skipped step's weights just gave a non-finite loss: never saved
                    result.checkpoint = save(state.step)
                break
            every = cfg.checkpoint.every
            if not bad and (
                (every and state.step % every == 0)
                or (state.step == t.max_steps and cfg.checkpoint.save_final)
            ):
                result.checkpoint = save(state.step)
            if probes is not None and state.step % cfg.probes.every == 0:
                probes.run(engine, state.step)
    finally:
        if profiler is not None:
            profiler.close()
        if progress is not None:
            progress.close()
        logger.close()
    result.state = state
    return result
