"""The pretraining loop: build, resume, loop over steps, log, evaluate, checkpoint.

Everything that must survive a restart is in the checkpoint: DeepSpeed's engine state (model,
optimizer, LR schedule), :class:`TrainState`, the data loader's ``state_dict`` and every rank's RNG
state. MLM masks are a function of (seed, micro-step, rank), so a resumed run sees exactly the
batches, masks and losses of a run that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pretrain import checkpoint as ckpt
from pretrain import distributed as dist_utils
from pretrain.config import Config, save_config
from pretrain.metrics import MetricLogger, Throughput, detect_peak_flops, peak_memory_bytes
from pretrain.objectives import Objective, build_objective

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


class StopSignal:
    """Sets a flag on SIGUSR1/SIGUSR2/SIGTERM; ranks agree on it at step boundaries (see the loop).

    SIGUSR2 is the warning signal submitit asks Slurm for (``--signal=USR2@...``); docs/slurm.md.
    """

    def __init__(
        self, signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
    ) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous = {}
        for s in signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test harness thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


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


def _build_engine(
    cfg: Config, model: torch.nn.Module, device: torch.device, world_size: int, universal: bool
):
    import deepspeed

    from pretrain.ds_config import build_ds_config
    from pretrain.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, cfg.optimizer, device)
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.trainer.max_steps)
    ds_config = build_ds_config(cfg, world_size, device.type == "cuda", load_universal=universal)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine


def _build_loader(cfg: Config, split: str, shuffle: bool):
    from data_pipeline.mixtures import (
        MixtureSource,
        build_mixture_dataloader,
        build_val_loader,
        check_datasets,
    )
    from data_pipeline.streaming import build_dataloader

    # One cache per node: streaming's local leaders must not share a `local` dir (run_dir may be
    # on a shared filesystem, and a test cluster runs several Slurm nodes on one host).
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    cache_root = Path(cfg.data.cache_dir or Path(cfg.trainer.run_dir) / ".streaming_cache" / node)
    datasets = cfg.data.dataset_dirs()
    if split == cfg.data.train_split and cfg.model_type in ("perceiver_io_mlm", "perceiver_ar"):
        check_datasets(  # refuses shards the model cannot read, naming model.vocab_size
            [d for _, d, _ in datasets],
            max_seq_len=cfg.model.get("max_seq_len"),
            objective=cfg.objective,
            vocab_size=cfg.model.get("vocab_size"),
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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _grad_norm(model: torch.nn.Module) -> float:
    """Global L2 norm of the (already all-reduced) gradients, for engines that do not report it."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


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


def train(cfg: Config, *, stop_at_step: int | None = None) -> TrainResult:
    """Run (or resume) training as described by ``cfg``; every rank calls this.

    Args:
        cfg: the validated config.
        stop_at_step: stop (with a checkpoint) after this many steps even though the schedule
            runs to ``trainer.max_steps``; used to test and demonstrate exact resumption.
    """
    env = dist_utils.detect_env()
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

    from pretrain.models import build_model
    from pretrain.parallelize import apply_activation_checkpointing

    model_cfg = cfg.model_config()
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = build_model(cfg.model_type, model_cfg).to(device)
    model.init_weights()
    num_params = sum(p.numel() for p in model.parameters())
    if t.activation_checkpointing:
        apply_activation_checkpointing(model)
    resume_path = ckpt.resolve_resume(cfg.checkpoint.resume, cfg.checkpoint_dir())
    universal = None
    if resume_path is not None and ckpt.saved_partitions(resume_path) not in (0, env.world_size):
        # written by another number of ranks: reshard through a universal checkpoint
        universal = ckpt.ensure_universal(resume_path, env.is_main)
    if cfg.checkpoint.init_from and resume_path is None:  # pretrained weights, not a resume
        from pretrain.export import load_initial_weights

        load_initial_weights(model, cfg)
    engine = _build_engine(cfg, model, device, env.world_size, universal is not None)
    torch.manual_seed(t.seed + 1000 * env.rank + 1)  # per-rank streams for dropout

    objective = build_objective(cfg)
    build_loader = getattr(objective, "build_loader", _build_loader)  # GLUE: in-memory TSVs
    train_loader = build_loader(cfg, cfg.data.train_split, cfg.data.shuffle)
    val_loader = build_loader(cfg, cfg.data.val_split, False) if t.val_every else None
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

    logger = MetricLogger(run_dir, env.is_main, cfg.logging.tensorboard, cfg.logging.jsonl)
    if env.is_main and state.step == 0:
        logger.log_text("config", "```\n" + cfg.to_yaml() + "\n```", 0)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if cfg.autocast_bf16
        else contextlib.nullcontext
    )
    last_grad_norm = float("nan")
    flops_per_sample = objective.flops_per_sample(model_cfg)
    peak_flops = detect_peak_flops(device, t.peak_flops)
    stopper = StopSignal()
    result = TrainResult(
        "finished", state, run_dir, None, num_params=num_params, resumed_from=resume_path
    )
    meter = Throughput()
    window: dict[str, float] = {}  # summed statistics since the last log
    progress = None
    if env.is_main and cfg.logging.progress_bar:
        from tqdm import tqdm

        progress = tqdm(
            total=t.max_steps, initial=state.step, desc=f"train {cfg.model_type}", unit="step"
        )

    def save(step: int) -> Path:
        client = {"train_state": asdict(state), "loader_state": train_loader.state_dict()}
        return ckpt.save(
            engine, cfg.checkpoint_dir(), step, client, cfg.to_yaml(), cfg.checkpoint.keep
        )

    try:
        while state.step < t.max_steps:
            step_tokens = 0
            for _ in range(t.grad_accum_steps):
                t0 = time.perf_counter()
                key = state.micro_step * env.world_size + env.rank
                # the transform (MLM masking) runs where the batch is: on the GPU when there is one
                batch = objective.transform(_to_device(data.next(), device), key)
                meter.data_wait += time.perf_counter() - t0
                with autocast():
                    loss, stats = objective.step(engine, batch)
                engine.backward(loss)
                if (
                    engine.is_gradient_accumulation_boundary()
                    and engine.get_global_grad_norm() is None
                ):
                    last_grad_norm = _grad_norm(engine.module)
                engine.step()
                state.micro_step += 1
                _accumulate(window, stats)
                meter.samples += objective.num_samples(batch)
                step_tokens += objective.num_tokens(batch)
            meter.tokens += step_tokens
            state.step += 1
            state.epoch = data.epoch
            state.samples_seen += t.micro_batch_size * t.grad_accum_steps * env.world_size
            state.tokens_seen += step_tokens * env.world_size

            if state.step % t.log_every == 0 or state.step == t.max_steps:
                metrics = objective.summarize(_reduce(window, objective.stat_keys, device), "train")
                if not math.isfinite(metrics["train/loss"]):
                    raise FloatingPointError(
                        f"step {state.step}: training loss is {metrics['train/loss']}"
                    )
                grad_norm = engine.get_global_grad_norm()
                metrics.update(
                    {
                        "train/lr": engine.get_lr()[0],
                        "train/grad_norm": float(
                            last_grad_norm if grad_norm is None else grad_norm
                        ),
                        "train/tokens_seen": float(state.tokens_seen),
                        "train/epoch": float(state.epoch),
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
                result.checkpoint = save(state.step)
                break
            every = cfg.checkpoint.every
            if (every and state.step % every == 0) or (
                state.step == t.max_steps and cfg.checkpoint.save_final
            ):
                result.checkpoint = save(state.step)
            if probes is not None and state.step % cfg.probes.every == 0:
                probes.run(engine, state.step)
    finally:
        stopper.restore()
        if progress is not None:
            progress.close()
        logger.close()
    result.state = state
    return result
