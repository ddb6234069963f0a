"""Hooks that run in the batch script around ``srun``: record each start, requeue after a stop.

Both launch paths (submitit's generated script and ``slurm/templates/train.sbatch``) call::

    python -m slurm.lifecycle start --run-dir RUN_DIR        # before srun (template: CONFIG ...)
    srun ...                                                 # every task trains
    python -m slurm.lifecycle end --run-dir RUN_DIR --exit-code $?

``start`` appends a ``start`` event (job id, Slurm's restart count, newest complete checkpoint) to
``RUN_DIR/slurm/events.jsonl``. ``end`` decides what happens next (:func:`decide`):

* Slurm no longer lists the job as RUNNING: Slurm itself is ending it (``scontrol requeue``,
  preemption with requeue, ``scancel``, time limit). The ranks saw SIGTERM and wrote a collective
  checkpoint; whatever Slurm decided stands (a requeued job comes back and resumes).
* The run finished: nothing to do.
* Training stopped on the warning signal (``--signal=USR2@T``: time limit or preemption notice):
  the ranks agreed and wrote a collective checkpoint; ``end`` requeues the job with
  ``scontrol requeue``, unless it already was requeued ``trainer.max_requeues`` times, or it made
  no progress since this start (no newer complete checkpoint): that would requeue forever.
* Training crashed (a rank was killed, a node died): requeue if the run made progress (a newer
  complete checkpoint than at the start) and the cap is not reached; a crash without progress is
  not retried, so a deterministic bug does not loop. The restart resumes from the newest
  complete checkpoint (incomplete ones are invisible).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

SLURM_SUBDIR = "slurm"
EVENTS_FILE = "events.jsonl"
CONFIG_SNAPSHOT = "config.yaml"
SUMMARY_FILE = "summary.json"  # written by rank 0 when training returns (perceiver train, TrainJob)


def slurm_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/slurm``: job folder, config snapshot, logs and events of a run."""
    return Path(run_dir) / SLURM_SUBDIR


def append_event(run_dir: str | Path, event: dict[str, Any]) -> dict[str, Any]:
    """Append one JSON line to the run's event log (adds ``time``); returns the event."""
    event = {"time": time.time(), **event}
    path = slurm_dir(run_dir) / EVENTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(event) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return event


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """All events of a run, oldest first (a torn last line is ignored)."""
    path = slurm_dir(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def restart_count(environ: Mapping[str, str]) -> int:
    """How often Slurm has requeued this job (``SLURM_RESTART_COUNT``, absent before the first)."""
    return int(environ.get("SLURM_RESTART_COUNT") or 0)


def job_id_of(environ: Mapping[str, str]) -> str:
    """This job's id as users see it: ``SLURM_JOB_ID``, or ``ARRAY_TASK`` (``15_0``) in an array.

    Both forms are accepted by ``scontrol``; empty outside a Slurm job.
    """
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task is not None:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID", "")


def resolve_run_paths(cfg: Any, base: str | Path | None = None) -> Any:
    """Make the run's paths absolute (relative to ``base``, default the current directory).

    A job may start in another directory than the one it was submitted from, so the config the
    job sees names every path absolutely: ``trainer.run_dir``, ``data.dir``, ``data.cache_dir``,
    ``checkpoint.dir``, a ``checkpoint.resume`` path, ``checkpoint.init_from``,
    ``probes.glue_dir`` and the model of an ``spm:PATH`` GLUE tokenizer. Remote URLs (``s3://``)
    stay as they are; ``data.mixture`` dirs are relative to ``data.dir`` by design. Modifies and
    returns ``cfg``.
    """
    root = Path(base or os.getcwd())

    def absolute(p: str | None) -> str | None:
        return str((root / p).resolve()) if p and "://" not in p else p

    cfg.trainer.run_dir = absolute(cfg.trainer.run_dir)
    cfg.data.dir = absolute(cfg.data.dir)
    cfg.data.cache_dir = absolute(cfg.data.cache_dir)
    cfg.checkpoint.dir = absolute(cfg.checkpoint.dir)
    if cfg.checkpoint.resume not in ("auto", "none"):
        cfg.checkpoint.resume = absolute(cfg.checkpoint.resume)
    cfg.checkpoint.init_from = absolute(cfg.checkpoint.init_from)
    cfg.probes.glue_dir = absolute(cfg.probes.glue_dir)
    if cfg.glue.tokenizer.startswith("spm:"):
        cfg.glue.tokenizer = "spm:" + absolute(cfg.glue.tokenizer.removeprefix("spm:"))
    return cfg


@dataclass(frozen=True)
class RunSettings:
    """What the hooks need from a run's config snapshot."""

    checkpoint_dir: Path
    max_requeues: int
    max_steps: int | None


def read_run_settings(run_dir: str | Path) -> RunSettings:
    """Read the snapshot ``RUN_DIR/slurm/config.yaml`` (else the trainer's ``config.yaml``)."""
    run_dir = Path(run_dir)
    data: dict[str, Any] = {}
    for path in (slurm_dir(run_dir) / CONFIG_SNAPSHOT, run_dir / "config.yaml"):
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            break
    trainer = data.get("trainer") or {}
    ckpt_dir = (data.get("checkpoint") or {}).get("dir") or run_dir / "checkpoints"
    from pretrain.config import TrainerConfig

    return RunSettings(
        checkpoint_dir=Path(ckpt_dir),
        max_requeues=int(trainer.get("max_requeues", TrainerConfig.max_requeues)),
        max_steps=trainer.get("max_steps"),
    )


def latest_checkpoint_step(checkpoint_dir: str | Path) -> int | None:
    """Step of the newest complete checkpoint, or None."""
    from pretrain.train.checkpoint import list_complete

    done = list_complete(checkpoint_dir)
    return done[-1][0] if done else None


def slurm_job_info(job_id: str, timeout: float = 30.0) -> dict[str, str] | None:
    """``scontrol show job -o JOB`` as a dict (JobState, Restarts, ...); None if unknown."""
    from slurm.cluster import parse_scontrol_record

    try:
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o", str(job_id)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or "JobId=" not in proc.stdout:
        return None
    return parse_scontrol_record(proc.stdout.splitlines()[0])


def requeue_job(job_id: str, timeout: float = 60.0) -> None:
    """``scontrol requeue JOB`` (Slurm then ends this allocation and queues the job again)."""
    subprocess.run(["scontrol", "requeue", str(job_id)], check=True, timeout=timeout)


@dataclass(frozen=True)
class Decision:
    """What the ``end`` hook does after ``srun`` returned."""

    action: Literal["requeue", "done", "stop", "leave"]
    reason: str
    exit_code: int  # of the batch script (decides COMPLETED/FAILED when not requeued)


def no_progress_reason(what: str, step: int | None) -> str:
    """Why a job that made no progress since its start is not requeued (events, logs, status)."""
    at = "no checkpoint yet" if step is None else f"newest complete checkpoint still step {step}"
    return (
        f"{what}, but no progress since this start ({at}); not requeued, since a job that makes "
        "no progress would requeue forever: give the job more time (--time, --signal-delay) or "
        "resubmit"
    )


def decide(
    *,
    job_state: str | None,
    exit_code: int,
    summary_status: str | None,
    start_step: int | None,
    latest_step: int | None,
    restarts: int,
    max_requeues: int,
) -> Decision:
    """Decide what follows once ``srun`` returned (see the module docstring).

    Args:
        job_state: Slurm's ``JobState`` of this job now (None if Slurm did not answer).
        exit_code: ``srun``'s exit status.
        summary_status: ``status`` of a summary written during this start (None if none was).
        start_step: Newest complete checkpoint when this start began.
        latest_step: Newest complete checkpoint now.
        restarts: Slurm's restart count of this job.
        max_requeues: ``trainer.max_requeues``.
    """
    if job_state is not None and job_state != "RUNNING":
        return Decision("leave", f"Slurm is ending the job (JobState={job_state})", exit_code)
    if summary_status in ("finished", "stopped"):
        return Decision("done", f"training {summary_status}", 0)
    progressed = latest_step is not None and (start_step is None or latest_step > start_step)
    if summary_status == "preempted" and not progressed:
        return Decision("stop", no_progress_reason("stopped on a signal", latest_step), 1)
    if summary_status == "preempted":
        why = "stopped on the warning signal after a collective checkpoint"
    elif exit_code != 0 and progressed:
        why = (
            f"training failed (exit {exit_code}) after progress (checkpoint step {start_step} -> "
            f"{latest_step}); resuming from the newest complete checkpoint"
        )
    elif exit_code != 0:
        return Decision(
            "stop",
            f"training failed (exit {exit_code}) without a new checkpoint since this start; "
            "not requeued (a crash without progress would repeat)",
            exit_code,
        )
    else:
        return Decision("stop", "training exited without writing a summary; not requeued", 1)
    if restarts >= max_requeues:
        return Decision(
            "stop", f"{why}, but trainer.max_requeues={max_requeues} requeues are used up", 1
        )
    return Decision("requeue", why, 0)


def on_start(run_dir: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Record that the job (re)started; returns the event written."""
    environ = os.environ if environ is None else environ
    settings = read_run_settings(run_dir)
    return append_event(
        run_dir,
        {
            "event": "start",
            "job_id": job_id_of(environ),
            "restart_count": restart_count(environ),
            "nodes": environ.get("SLURM_JOB_NODELIST"),
            "checkpoint_step": latest_checkpoint_step(settings.checkpoint_dir),
        },
    )


def _summary_status(run_dir: Path, job_id: str, restarts: int, since: float) -> str | None:
    """``status`` of the summary written during this start, None if it is from an earlier one.

    ``TrainJob`` stamps the job id and restart count into the summary; a summary without them
    (``perceiver train``) counts if it was written after the start was recorded.
    """
    path = run_dir / SUMMARY_FILE
    try:
        mtime = path.stat().st_mtime
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if "slurm_job_id" in summary:
        fresh = summary["slurm_job_id"] == job_id and summary.get("slurm_restart_count") == restarts
    else:
        fresh = mtime >= since
    return summary.get("status") if fresh else None


def on_end(
    run_dir: str | Path, exit_code: int, environ: Mapping[str, str] | None = None
) -> Decision:
    """Decide, record and carry out what follows ``srun`` (requeue, or let the job end)."""
    environ = os.environ if environ is None else environ
    run_dir = Path(run_dir)
    job_id = job_id_of(environ)
    restarts = restart_count(environ)
    starts = [
        e
        for e in read_events(run_dir)
        if e.get("event") == "start"
        and e.get("job_id") == job_id
        and e.get("restart_count") == restarts
    ]
    start = starts[-1] if starts else {}
    settings = read_run_settings(run_dir)
    info = slurm_job_info(job_id) if job_id else None
    decision = decide(
        job_state=info.get("JobState") if info else None,
        exit_code=exit_code,
        summary_status=_summary_status(run_dir, job_id, restarts, float(start.get("time", 0.0))),
        start_step=start.get("checkpoint_step"),
        latest_step=latest_checkpoint_step(settings.checkpoint_dir),
        restarts=restarts,
        max_requeues=settings.max_requeues,
    )
    event = {
        "event": "end",
        "job_id": job_id,
        "restart_count": restarts,
        "exit_code": exit_code,
        "action": decision.action,
        "reason": decision.reason,
    }
    if decision.action == "requeue":
        # scontrol requeue ends this allocation: SIGTERM reaches this process too.
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        append_event(run_dir, event)
        try:
            requeue_job(job_id)
        except (OSError, subprocess.SubprocessError) as e:
            signal.signal(signal.SIGTERM, previous)
            append_event(run_dir, {"event": "requeue_failed", "job_id": job_id, "error": str(e)})
            return Decision("stop", f"scontrol requeue {job_id} failed: {e}", 1)
    else:
        append_event(run_dir, event)
    return decision


def start_from_config(
    config: str, overrides: list[str], environ: Mapping[str, str] | None = None
) -> tuple[Path, Path, list[str]]:
    """The template's ``start``: resolve the config, snapshot it, record the start.

    The resolved config is written to ``RUN_DIR/slurm/config.yaml`` when a job first starts and
    reused after a requeue, so editing the YAML does not change a running job.

    Returns:
        The run directory, the config file to train from, and extra overrides
        (``checkpoint.resume=auto`` after a requeue, whatever the config's first resume was).
    """
    from pretrain.config import load_config, save_config

    environ = os.environ if environ is None else environ
    cfg = resolve_run_paths(load_config(config, overrides))
    run_dir = Path(cfg.trainer.run_dir)
    snapshot = slurm_dir(run_dir) / CONFIG_SNAPSHOT
    restarted = restart_count(environ) > 0
    if not (restarted and snapshot.is_file()):
        save_config(cfg, snapshot)
    on_start(run_dir, environ)
    return run_dir, snapshot, (["checkpoint.resume=auto"] if restarted else [])


def _run_dir_arg(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    task = environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        raise SystemExit("error: --sweep needs SLURM_ARRAY_TASK_ID (an array job)")
    return Path(json.loads(Path(args.sweep).read_text())["run_dirs"][int(task)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slurm.lifecycle", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="hook", required=True)
    p = sub.add_parser("start", help="record a (re)start; with CONFIG: also snapshot the config")
    p.add_argument("config", nargs="?", help="YAML config (template path); prints the srun args")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--run-dir")
    p.add_argument("--sweep", help="JSON with run_dirs, indexed by SLURM_ARRAY_TASK_ID")
    p = sub.add_parser("end", help="after srun: requeue, or let the job end")
    p.add_argument("--run-dir")
    p.add_argument("--sweep")
    p.add_argument("--exit-code", type=int, required=True)
    args = parser.parse_args(argv)
    environ = os.environ
    if args.hook == "start" and args.config:
        from pretrain.config import ConfigError

        try:
            run_dir, config, extra = start_from_config(args.config, args.overrides, environ)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("\n".join([str(run_dir), str(config), *extra]))
        return 0
    if not (args.run_dir or args.sweep):
        parser.error(f"{args.hook}: give --run-dir, --sweep or (start) a CONFIG")
    run_dir = _run_dir_arg(args, environ)
    if args.hook == "start":
        on_start(run_dir, environ)
        return 0
    decision = on_end(run_dir, args.exit_code, environ)
    print(f"perceiver: {decision.action}: {decision.reason}", file=sys.stderr)
    return decision.exit_code


if __name__ == "__main__":
    sys.exit(main())
