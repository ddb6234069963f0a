"""What the training loop calls at fixed points, so that it needs to know nothing of GLUE, Slurm
or any other consumer of its weights and metrics.

Whoever launches training (the CLI, the Slurm job, GLUE fine-tuning, a test) builds the hooks it
wants and passes them to :func:`pretrain.train.trainer.train`. Every rank calls every method at the
same point, so a hook may use collectives (gathering ZeRO-3 weights, a barrier); a hook that only
rank 0 should act on checks ``ctx.env.is_main`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoopContext:
    """The loop's state as hooks see it (read it; the loop owns it)."""

    cfg: Any  # pretrain.config.Config
    env: Any  # pretrain.train.distributed.DistEnv
    device: Any  # torch.device
    engine: Any  # the DeepSpeed engine (engine.module is the model)
    state: Any  # pretrain.train.trainer.TrainState: step, epoch, ...
    logger: Any  # pretrain.train.metrics.MetricLogger (writes on rank 0 only)
    run_dir: Path
    # True in after_step of a step the loop stops early after (a stop signal, stop_at_step): it
    # has saved and is about to end, so a hook should not start long work (preemption is near).
    stopping: bool = False


class Hook:
    """Base class: override the points you need; the defaults do nothing."""

    def on_start(self, ctx: LoopContext) -> None:
        """After set-up and resume, before the first step of this process."""

    def after_step(self, ctx: LoopContext) -> None:
        """After every optimizer step (``ctx.state.step`` is the step just finished), after its
        logging, validation and checkpoint."""

    def after_save(self, ctx: LoopContext, path: Path) -> None:
        """After a checkpoint of ``ctx.state.step`` is complete at ``path``."""

    def on_end(self, ctx: LoopContext, result: Any) -> None:
        """When the loop ends for any reason but an exception (``result``: TrainResult)."""
