"""Submit training to Slurm with submitit, and what runs in every task of the job.

``perceiver submit`` builds a :class:`JobRequest`, checks it against the cluster, snapshots the
resolved config under ``RUN_DIR/slurm/`` and hands :class:`TrainJob` to a ``submitit``
``SlurmExecutor`` whose job folder is ``RUN_DIR/slurm`` (logs ``<job>_<task>_log.{out,err}``).
The generated batch script runs ``srun`` with one task per GPU (or per CPU rank), wrapped by the
``start``/``end`` hooks of :mod:`slurm.lifecycle`.

Preemption, the choice made here (docs/slurm.md has the whole story):

* The job asks for ``--signal=USR2@<delay>`` (submitit's warning signal) and ``--requeue``.
* ``pretrain.train.signals.StopSignal`` owns SIGINT/SIGTERM/SIGUSR1/SIGUSR2 on every rank from the
  first line of :meth:`TrainJob.__call__`, before the slow start-up (process group, model, engine,
  loaders): a signal only sets a flag, which the ranks all-reduce at every step boundary from the
  first step on; when set they write one collective checkpoint and ``train`` returns
  ``preempted``. A signal during start-up is therefore acted on after the first step, not lost.
  submitit's own handler (rank 0 calls :meth:`TrainJob.checkpoint` and requeues at once, which
  cannot write a ZeRO checkpoint) is replaced before anything slow runs.
* Requeueing is done after ``srun`` returns, by the batch script's ``end`` hook (one place for both
  launch paths): it requeues after a warning-signal stop that made progress, and leaves the job
  alone when Slurm is already ending it (``scontrol requeue``, preemption, ``scancel``). A job
  that made no progress since its last start is not requeued (it would requeue forever).
"""

from __future__ import annotations

import copy
import itertools
import os
import re
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from data_pipeline.files import atomic_write_json
from data_pipeline.loading.dataset import LAUNCHER_VARS
from pretrain.config import Config, load_config, save_config
from slurm import lifecycle
from slurm.cluster import (
    JobRequest,
    SlurmUnavailable,
    SubmitError,
    check_against_config,
    executor_parameters,
    format_minutes,
    query_cluster,
    validate_request,
)

# Variables a submitting shell may carry (e.g. from inside another job) that would override what
# each task derives from Slurm.
INHERITED_DIST_VARS = LAUNCHER_VARS
DEFAULT_TIME = "24:00:00"


# --------------------------------------------------------------------------------------------
# Inside the job


def setup_task_env() -> Any:
    """Export torch.distributed's and mosaicml-streaming's variables for this Slurm task.

    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` (the first node
    of the allocation) and ``MASTER_PORT`` (derived from the job id, as in
    ``pretrain.train.distributed.slurm_port``) come from submitit's ``TorchDistributedEnvironment``;
    ``CUDA_VISIBLE_DEVICES`` is left alone so that DeepSpeed and the trainer pick
    ``cuda:LOCAL_RANK`` among all GPUs of the node. Streaming reads the same variables when the
    datasets are built (after this).

    Returns:
        The ``pretrain.train.distributed.DistEnv`` the trainer will see.
    """
    from submitit.helpers import TorchDistributedEnvironment

    from pretrain.train.distributed import detect_env, slurm_port

    os.environ["MASTER_PORT"] = str(slurm_port(os.environ.get("SLURM_JOB_ID", "0")))
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return detect_env()


def summarize_result(result: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``summary.json`` written when training returns (same keys as ``perceiver train``)."""
    return {
        **result.to_dict(),
        "slurm_job_id": lifecycle.job_id_of(environ),
        "slurm_restart_count": lifecycle.restart_count(environ),
    }


class TrainJob:
    """The submitit callable: ``__call__`` runs on every task of the job.

    Holds the resolved config, so a requeued job trains exactly what was submitted even if the
    YAML changed since.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self) -> dict[str, Any]:
        """Set up the distributed environment, train (or resume), write the summary on rank 0."""
        from pretrain.train.signals import StopSignal

        # Replaces submitit's handlers for good: a signal from here on, start-up included, is
        # agreed on at a step boundary; one after training has nothing left to save.
        stopper = StopSignal(announce=os.environ.get("SLURM_PROCID", "0") == "0")
        env = setup_task_env()
        cfg = copy.deepcopy(self.cfg)
        if lifecycle.restart_count(os.environ) > 0:
            # After a requeue the run continues from its own newest checkpoint, whatever the
            # first start resumed from (a fine-tuning source, or none).
            cfg.checkpoint.resume = "auto"
        from pretrain.glue.probes import probe_hooks
        from pretrain.train import distributed as dist_utils
        from pretrain.train.trainer import train
        from slurm.probes import probe_submitter

        try:
            submit = probe_submitter(cfg) if cfg.probes.mode == "slurm" else None
            hooks = probe_hooks(cfg, env.is_main, submit)
            result = train(cfg, hooks=hooks, stopper=stopper)
            summary = summarize_result(result, os.environ)
            if env.is_main:
                atomic_write_json(Path(cfg.trainer.run_dir) / lifecycle.SUMMARY_FILE, summary)
                print(f"{result.status} at step {result.state.step}; {result.checkpoint}")
        finally:
            dist_utils.destroy()
        return summary

    def checkpoint(self) -> Any:
        """Called by submitit on global rank 0 when its warning signal arrives outside the loop.

        Only reachable in the moment between submitit installing its handler and
        :meth:`__call__` replacing it, when nothing was trained since this start: a requeue then
        would make no progress (and could repeat forever), so the job is not requeued and the
        reason is recorded (``perceiver status`` shows it).

        Returns:
            None: submitit then ends the job without requeueing it.
        """
        settings = lifecycle.read_run_settings(self.cfg.trainer.run_dir)
        step = lifecycle.latest_checkpoint_step(settings.checkpoint_dir)
        lifecycle.append_event(
            self.cfg.trainer.run_dir,
            {
                "event": "end",
                "job_id": lifecycle.job_id_of(os.environ),
                "restart_count": lifecycle.restart_count(os.environ),
                "action": "stop",
                "reason": lifecycle.no_progress_reason(
                    "warning signal before training started", step
                ),
            },
        )
        return None


# --------------------------------------------------------------------------------------------
# Submitting


@dataclass
class Submission:
    """A submitted (or, with ``--dry-run``, prepared) job or job array."""

    job_id: str | None
    folder: Path
    run_dirs: list[Path]
    script: str
    request: JobRequest
    array_size: int = 0  # 0: a single job
    notes: list[str] = field(default_factory=list)

    def task_job_ids(self) -> list[str]:
        """Job id of each run (``A_i`` for array tasks)."""
        if self.job_id is None:
            return []
        if self.array_size:
            return [f"{self.job_id}_{i}" for i in range(self.array_size)]
        return [self.job_id]

    def log_paths(self, job_id: str, task: int = 0) -> tuple[Path, Path]:
        """stdout and stderr of one task of one job."""
        return (self.folder / f"{job_id}_{task}_log.out", self.folder / f"{job_id}_{task}_log.err")

    def describe(self) -> str:
        """What ``perceiver submit`` prints."""
        r = self.request
        shape = f"{r.nodes} node(s) x {r.ntasks_per_node} task(s)"
        shape += f" with {r.gpus_per_node} GPU(s) each" if r.gpus_per_node else " on CPU"
        lines = [*self.notes]
        if self.job_id is None:
            lines += [self.script.rstrip(), "", f"dry run: {shape}, partition {r.partition}"]
            return "\n".join(lines)
        kind = f"job {self.job_id}"
        if self.array_size:
            kind = f"job array {self.job_id} ({self.array_size} runs)"
        lines.append(f"submitted {kind}: {shape}, partition {r.partition}")
        for jid, run_dir in zip(self.task_job_ids(), self.run_dirs):
            out, err = self.log_paths(jid)
            lines += [
                f"  job id:      {jid}",
                f"  run dir:     {run_dir}",
                f"  logs:        {out}",
                f"               {err}",
            ]
            if r.num_tasks > 1:
                lines.append(f"               (task N of {r.num_tasks}: {jid}_N_log.out)")
            lines.append(f"  status:      perceiver status {run_dir}")
        logdir = self.run_dirs[0] if len(self.run_dirs) == 1 else self.folder.parent
        lines.append(f"  tensorboard: tensorboard --logdir {logdir}")
        return "\n".join(lines)


def _python_path_root() -> str:
    """The directory that holds the ``slurm`` and ``pretrain`` packages (for PYTHONPATH)."""
    return str(Path(lifecycle.__file__).resolve().parent.parent)


def hook_lines(python: str, target: list[str]) -> tuple[list[str], list[str]]:
    """Setup and teardown lines of the batch script around srun.

    Args:
        python: The shell-quoted interpreter.
        target: ``["--run-dir", DIR]`` or ``["--sweep", FILE]`` for :mod:`slurm.lifecycle`.
    """
    where = " ".join(shlex.quote(t) for t in target)
    setup = [
        f"unset {' '.join(INHERITED_DIST_VARS)}",
        f"export PYTHONPATH={shlex.quote(_python_path_root())}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"{python} -m slurm.lifecycle start {where} || exit 1",
    ]
    teardown = [
        "PERCEIVER_EXIT=$?",
        f"{python} -m slurm.lifecycle end {where} --exit-code $PERCEIVER_EXIT",
    ]
    return setup, teardown


def submitit_command(python: str, folder: Path) -> str:
    """The command submitit runs in every task (as ``SlurmExecutor._submitit_command_str``)."""
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_text(params: dict[str, Any], folder: Path, python: str, array_size: int = 0) -> str:
    """The batch script submitit writes for ``params`` (what ``--dry-run`` prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    extra = {"map_count": array_size} if array_size else {}
    return _make_sbatch_string(
        command=submitit_command(python, folder), folder=folder, **params, **extra
    )


def _resolve_request(
    request: JobRequest, cfgs: list[Config], dry_run: bool, notes: list[str]
) -> JobRequest:
    """Validate ``request`` (locally first, then against the cluster) and fill in the partition
    and a finite time limit (submitit's requeue accounting needs one): without ``--time``, the
    partition's limit, else a day. A dry run without a reachable cluster only notes that."""
    request = replace(request)
    request.check()
    for cfg in cfgs:
        check_against_config(request, cfg)
    limit = None
    try:
        cluster = query_cluster()
    except SlurmUnavailable as e:
        if not dry_run:
            raise
        notes.append(f"# note: not checked against a cluster ({e})")
    else:
        request = validate_request(request, cluster)
        limit = cluster.partitions[request.partition].max_time_min
    if request.time is None or request.time_minutes is None:
        request.time = DEFAULT_TIME if limit is None else format_minutes(limit)
    return request


def _snapshot(cfg: Config) -> None:
    """The resolved config the job trains, beside its logs (a job explains itself)."""
    save_config(cfg, lifecycle.slurm_dir(cfg.trainer.run_dir) / lifecycle.CONFIG_SNAPSHOT)


def submit(cfg: Config, request: JobRequest, *, dry_run: bool = False) -> Submission:
    """Validate ``request`` against the cluster and ``cfg``, snapshot the config and submit.

    Args:
        cfg: The resolved config (relative paths are made absolute here).
        request: Resources; its partition is filled in from the cluster's default.
        dry_run: Validate and render the batch script, submit nothing, write nothing.

    Raises:
        SubmitError: If the request cannot run (the message names the option).
        SlurmUnavailable: If no cluster answers (without ``dry_run``).
    """
    import submitit

    cfg = lifecycle.resolve_run_paths(copy.deepcopy(cfg))
    notes: list[str] = []
    request = _resolve_request(request, [cfg], dry_run, notes)
    run_dir = Path(cfg.trainer.run_dir)
    folder = lifecycle.slurm_dir(run_dir)
    python = shlex.quote(sys.executable)
    params = executor_parameters(request, hook_lines(python, ["--run-dir", str(run_dir)]))
    script = sbatch_text(params, folder, python)
    if dry_run:
        return Submission(None, folder, [run_dir], script, request, notes=notes)
    folder.mkdir(parents=True, exist_ok=True)
    _snapshot(cfg)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.trainer.max_requeues)
    executor.update_parameters(**params)
    job = executor.submit(TrainJob(cfg))
    lifecycle.append_event(run_dir, {"event": "submit", "job_id": job.job_id})
    return Submission(job.job_id, folder, [run_dir], script, request, notes=notes)


def expand_grid(specs: list[str]) -> list[list[str]]:
    """``["optimizer.lr=1e-3,3e-4", "trainer.seed=0,1"]`` -> the 4 override lists of the grid.

    Raises:
        SubmitError: For a spec that is not ``key=v1,v2,...`` or a key given twice.
    """
    axes: list[list[str]] = []
    keys: set[str] = set()
    for spec in specs:
        key, sep, values = spec.partition("=")
        items = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(items):
            raise SubmitError(f"--array: expected key=v1,v2,... got {spec!r}")
        if key in keys:
            raise SubmitError(f"--array: {key} is given twice")
        keys.add(key)
        axes.append([f"{key.strip()}={v}" for v in items])
    return [list(point) for point in itertools.product(*axes)]


def point_name(point: list[str]) -> str:
    """A directory name for one grid point: ``[optimizer.lr=1e-3, trainer.seed=1]`` ->
    ``lr=1e-3_seed=1``."""
    parts = []
    for item in point:
        key, _, value = item.partition("=")
        parts.append(f"{key.split('.')[-1]}={value}")
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))


def submit_array(
    config: str,
    overrides: list[str],
    grid: list[str],
    request: JobRequest,
    *,
    dry_run: bool = False,
    max_parallel: int | None = None,
) -> Submission:
    """One Slurm job array with a task per point of the override grid (e.g. a GLUE sweep).

    Run ``i`` trains in ``<trainer.run_dir>/<point name>``; the array's logs and the list of run
    directories (``sweep-<time>.json``, read by the hooks via ``SLURM_ARRAY_TASK_ID``) are in
    ``<trainer.run_dir>/slurm``.
    """
    import submitit

    points = expand_grid(grid)
    base = lifecycle.resolve_run_paths(load_config(config, overrides))
    base_dir = Path(base.trainer.run_dir)
    cfgs = [
        lifecycle.resolve_run_paths(
            load_config(config, [*overrides, *p, f"trainer.run_dir={base_dir / point_name(p)}"])
        )
        for p in points
    ]
    if len({c.trainer.run_dir for c in cfgs}) != len(cfgs):
        raise SubmitError("--array: two grid points map to the same run directory")
    notes: list[str] = []
    request = _resolve_request(request, cfgs, dry_run, notes)
    folder = lifecycle.slurm_dir(base_dir)
    sweep_file = folder / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.json"
    python = shlex.quote(sys.executable)
    params = executor_parameters(request, hook_lines(python, ["--sweep", str(sweep_file)]))
    if max_parallel:
        params["array_parallelism"] = max_parallel
    script = sbatch_text(params, folder, python, array_size=len(cfgs))
    run_dirs = [Path(c.trainer.run_dir) for c in cfgs]
    if dry_run:
        notes.append("# grid points:\n" + "\n".join(f"#   {' '.join(p)}" for p in points))
        return Submission(None, folder, run_dirs, script, request, len(cfgs), notes)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep_file, {"run_dirs": [str(d) for d in run_dirs], "points": points})
    for cfg in cfgs:
        _snapshot(cfg)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=base.trainer.max_requeues)
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(TrainJob(cfg)) for cfg in cfgs]
    array_id = jobs[0].job_id.split("_")[0]
    for cfg, job in zip(cfgs, jobs):
        lifecycle.append_event(cfg.trainer.run_dir, {"event": "submit", "job_id": job.job_id})
    return Submission(array_id, folder, run_dirs, script, request, len(cfgs), notes)
