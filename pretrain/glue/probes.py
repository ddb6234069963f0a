"""GLUE probes during pretraining: a short fine-tune of the current weights every N steps.

Configured by the ``probes`` section (``pretrain.config.ProbesConfig``). Whoever launches training
builds the hook with :func:`probe_hooks` and passes it to ``pretrain.train.trainer.train``;
:class:`GlueProbes` acts after every ``probes.every``-th step (after that step's checkpoint):

1. Snapshot: the current weights are gathered (a collective under ZeRO-3, where parameters are
   partitioned; DeepSpeed-bf16 runs snapshot the bf16 weights their forward pass uses) and rank 0
   writes them as a native export to ``<run_dir>/probes/step_XXXXXXXX/model``.
2. Fine-tune: ``perceiver glue`` on ``probes.tasks`` with one learning rate, one batch size and
   ``probes.max_steps`` steps, in a child process (``mode: inline``: the training ranks wait for
   it) or as a one-task Slurm job that does not block training (``mode: slurm``, resources from
   ``probes.slurm``). The child does not inherit the training job's rank or Slurm variables.
   Slurm submission is handed in by the launcher (``slurm.probes.probe_submitter``): this package
   does not import ``slurm``.
3. Report: the child writes ``glue/<task>/<metric>`` (percent) at the pretraining step into
   ``<run_dir>/tensorboard`` (its own event file beside the trainer's, so TensorBoard shows them in
   the same run), appends them to ``<run_dir>/probes/results.jsonl`` and leaves its full results
   under ``<run_dir>/probes/step_XXXXXXXX/``.

A failing inline probe is reported (with its log) and training goes on. Inline probes run while
the other ranks wait in a barrier, so keep them shorter than the process group's timeout (30 min
by default); use ``mode: slurm`` for longer ones. No probe starts on a step the loop stops early
after (a stop signal: the job is about to be preempted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from data_pipeline.files import atomic_write_json
from data_pipeline.loading.dataset import LAUNCHER_VARS
from pretrain.export import Pretrained, run_tokenizer, write_native
from pretrain.train.hooks import Hook, LoopContext

PROBES_DIR = "probes"
RESULTS_FILE = "results.jsonl"
# Variables a child must not inherit from a training rank (it is a job of its own).
STRIP_PREFIXES = ("SLURM_", "SUBMITIT_", "TORCHELASTIC_")
STRIP_VARS = LAUNCHER_VARS


def probe_dir(run_dir: str | Path, step: int) -> Path:
    """Where the probe of pretraining step ``step`` keeps its snapshot and results."""
    return Path(run_dir) / PROBES_DIR / f"step_{step:08d}"


def child_env() -> dict[str, str]:
    """This process's environment without the distributed-job variables of a training rank."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in STRIP_VARS and not k.startswith(STRIP_PREFIXES)
    }
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def gather_state_dict(engine: Any, is_main: bool) -> dict[str, torch.Tensor] | None:
    """The full weights of the engine's module on rank 0 (None elsewhere); every rank calls it."""
    module = engine.module
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0
    context: Any = None
    if stage == 3:
        import deepspeed

        context = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with context if context is not None else torch.no_grad():
        if not is_main:
            return None
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def probe_command(cfg: Any, step: int, export_dir: Path) -> list[str]:
    """The ``perceiver glue`` command line of the probe of ``step``."""
    p = cfg.probes
    return [
        sys.executable,
        "-m",
        "pretrain.cli",
        "glue",
        "--checkpoint",
        str(export_dir),
        "--glue-dir",
        str(Path(p.glue_dir).resolve()),
        "--tasks",
        ",".join(p.tasks),
        "--out",
        str(probe_dir(cfg.trainer.run_dir, step)),
        "--lrs",
        str(p.lr),
        "--batch-sizes",
        str(p.batch_size),
        "--max-steps",
        str(p.max_steps),
        "--probe-of",
        str(Path(cfg.trainer.run_dir).resolve()),
        "--probe-step",
        str(step),
        "--no-test",
        *p.overrides,
    ]


# What a launcher hands GlueProbes for mode=slurm: (command, probe dir, step) -> Slurm job id.
Submitter = Callable[[list[str], Path, int], str]


def probe_hooks(cfg: Any, is_main: bool, submit: Submitter | None = None) -> list[Hook]:
    """The hooks that run ``cfg``'s GLUE probes (none when ``probes.every`` is 0).

    Args:
        cfg: The pretraining config.
        is_main: Whether this is rank 0.
        submit: Starts a probe as a Slurm job; required by ``probes.mode=slurm``
            (``slurm.probes.probe_submitter(cfg)``).
    """
    return [GlueProbes(cfg, is_main, submit)] if cfg.probes.every else []


class GlueProbes(Hook):
    """Runs the probes of one pretraining run (see the module docstring).

    Args:
        cfg: The pretraining config (``probes.every > 0``).
        is_main: Whether this is rank 0 (which writes snapshots and starts the probes).
        submit: See :func:`probe_hooks`.

    Raises:
        FileNotFoundError: If a probe task's training or dev file is missing (checked at start-up,
            not after hours of pretraining).
        ValueError: If ``probes.mode`` is ``slurm`` and no ``submit`` was given.
    """

    def __init__(self, cfg: Any, is_main: bool, submit: Submitter | None = None) -> None:
        from pretrain.glue.tasks import get_task, split_path

        if cfg.probes.mode == "slurm" and submit is None:
            raise ValueError(
                "probes.mode=slurm: this launcher cannot submit Slurm jobs (pass "
                "submit=slurm.probes.probe_submitter(cfg) to probe_hooks, or launch with the "
                "`perceiver` console script); set probes.mode=inline to run probes in-process"
            )
        self.cfg = cfg
        self.is_main = is_main
        self.submit = submit
        for name in cfg.probes.tasks:
            task = get_task(name)
            for split in ("train", task.dev_splits[0]):
                path = split_path(cfg.probes.glue_dir, task, split)
                if not path.is_file():
                    raise FileNotFoundError(f"probes.glue_dir: {path} not found")
        self.tokenizer = run_tokenizer(cfg.to_dict()) if is_main else {}

    def after_step(self, ctx: LoopContext) -> None:
        """Every ``probes.every`` steps, unless the loop is stopping early (preemption is near)."""
        if ctx.state.step % self.cfg.probes.every == 0 and not ctx.stopping:
            self.run(ctx.engine, ctx.state.step)

    def run(self, engine: Any, step: int) -> None:
        """Snapshot the weights at ``step`` and start (inline: run) the probe; all ranks call."""
        state = gather_state_dict(engine, self.is_main)
        if self.is_main:
            try:
                self._start(state, step)
            except Exception:  # a probe must never end a pretraining run
                print(f"warning: GLUE probe at step {step} failed:", file=sys.stderr)
                traceback.print_exc()
        if self.cfg.probes.mode == "inline" and torch.distributed.is_initialized():
            torch.distributed.barrier()  # the other ranks wait for the probe

    def _start(self, state: dict[str, torch.Tensor], step: int) -> None:
        out = probe_dir(self.cfg.trainer.run_dir, step)
        model = dict(vars(self.cfg.model))  # the typed model config's fields
        source = {"kind": "snapshot", "run_dir": self.cfg.trainer.run_dir, "step": step}
        pretrained = Pretrained(self.cfg.model_type, model, state, self.tokenizer, source)
        command = probe_command(self.cfg, step, write_native(pretrained, out / "model"))
        if self.cfg.probes.mode == "inline":
            self._run_inline(command, out, step)
            return
        job_id = self.submit(command, out, step)
        atomic_write_json(out / "job.json", {"job_id": job_id, "command": command})
        print(f"GLUE probe at step {step}: Slurm job {job_id} ({out})", file=sys.stderr)

    def _run_inline(self, command: list[str], out: Path, step: int) -> None:
        log = out / "log.txt"
        t0 = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.run(command, env=child_env(), stdout=f, stderr=subprocess.STDOUT)
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            print(
                f"warning: GLUE probe at step {step} failed (exit {proc.returncode}); see {log}",
                file=sys.stderr,
            )
        else:
            print(f"GLUE probe at step {step} done in {took:.0f} s ({out})", file=sys.stderr)


def report(run_dir: str | Path, step: int, scores: dict[str, dict[str, float]]) -> None:
    """Writes a probe's dev scores into the pretraining run (TensorBoard + results.jsonl).

    Args:
        run_dir: The pretraining run.
        step: The pretraining step the probed weights belong to.
        scores: Task -> metric -> value (percent), including ``score`` per task.
    """
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(run_dir)
    writer = SummaryWriter(
        log_dir=str(run_dir / "tensorboard"), filename_suffix=f".glue_probe_{step:08d}"
    )
    try:
        for task, metrics in scores.items():
            for name, value in metrics.items():
                writer.add_scalar(f"glue/{task}/{name}", value, global_step=step)
    finally:
        writer.close()
    line = json.dumps({"step": step, "time": time.time(), "glue": scores})
    with open(run_dir / PROBES_DIR / RESULTS_FILE, "a") as f:
        f.write(line + "\n")
