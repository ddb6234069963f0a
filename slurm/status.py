"""``perceiver status RUN_DIR``: where a Slurm run stands.

Reads what the run left on disk (``slurm/events.jsonl``, ``metrics.jsonl``, ``summary.json``, the
checkpoints) and asks Slurm about the newest job of the run (``scontrol show job``; ``sacct`` when
the controller has forgotten it and accounting exists).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slurm import lifecycle


@dataclass
class RunStatus:
    """The answer of ``perceiver status``."""

    run_dir: Path
    job_id: str | None = None
    job_state: str | None = None  # Slurm's JobState; None when Slurm does not know the job
    job_reason: str | None = None
    nodes: str | None = None
    slurm_restarts: int | None = None  # Slurm's restart count of the newest job
    requeues: int = 0  # starts after a requeue, over all jobs of the run
    last_step: int | None = None
    max_steps: int | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint: str | None = None
    # checkpoints resume passes over: "step_X: what is wrong" (files damaged since the save,
    # or rejected: damaged at a resume, or weights that gave a non-finite loss)
    unusable_checkpoints: list[str] = field(default_factory=list)
    summary_status: str | None = None
    last_event: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "run_dir": str(self.run_dir)}, indent=2)


def _last_logged_step(metrics: Path) -> int | None:
    """Step of the last line of ``metrics.jsonl`` (reads only the end of the file)."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return None


def _sacct_state(job_id: str) -> str | None:
    try:
        proc = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.split()
    return lines[-1] if proc.returncode == 0 and lines else None


def gather_status(run_dir: str | Path) -> RunStatus:
    """Collect the state of a run (works without Slurm too, from the files alone).

    Raises:
        FileNotFoundError: If ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    st = RunStatus(run_dir)
    events = lifecycle.read_events(run_dir)
    st.last_event = events[-1] if events else None
    st.requeues = sum(1 for e in events if e.get("event") == "start" and e.get("restart_count"))
    ids = [e["job_id"] for e in events if e.get("event") in ("submit", "start") and e.get("job_id")]
    st.job_id = ids[-1] if ids else None
    if st.job_id:
        info = lifecycle.slurm_job_info(st.job_id)
        if info is not None:
            st.job_state = info.get("JobState")
            st.job_reason = info.get("Reason")
            st.nodes = info.get("NodeList")
            st.slurm_restarts = int(info.get("Restarts", "0") or 0)
        else:
            st.job_state = _sacct_state(st.job_id)
    settings = lifecycle.read_run_settings(run_dir)
    st.max_steps = settings.max_steps
    from pretrain.train.checkpoint import list_complete, rejected, verify

    for step, path in reversed(list_complete(settings.checkpoint_dir)):
        problems = verify(path, checksums=False)  # sizes only: status reads no checkpoint
        if not problems:
            st.last_checkpoint_step, st.last_checkpoint = step, str(path)
            break
        st.unusable_checkpoints.append(f"{path.name}: damaged: {'; '.join(problems)}")
    st.unusable_checkpoints += [
        f"{path.name}: rejected: {reason}" for path, reason in rejected(settings.checkpoint_dir)
    ]
    st.last_step = _last_logged_step(run_dir / "metrics.jsonl")
    try:
        summary = json.loads((run_dir / lifecycle.SUMMARY_FILE).read_text())
        st.summary_status = summary.get("status")
        if st.last_step is None:
            st.last_step = summary.get("state", {}).get("step")
    except (OSError, json.JSONDecodeError):
        pass
    return st


def format_status(st: RunStatus) -> str:
    """Human-readable lines."""
    if st.job_id is None:
        job = "no Slurm job recorded (not submitted with perceiver submit / the sbatch template)"
    elif st.job_state is None:
        job = f"{st.job_id}: not known to Slurm any more (finished long ago, or another cluster)"
    else:
        job = f"{st.job_id}: {st.job_state}"
        if st.job_reason and st.job_reason != "None":
            job += f" ({st.job_reason})"
        if st.nodes and st.nodes != "(null)":
            job += f" on {st.nodes}"
    step = "none logged" if st.last_step is None else str(st.last_step)
    if st.max_steps:
        step += f" / {st.max_steps}"
    ckpt = "none"
    if st.last_checkpoint is not None:
        ckpt = f"step {st.last_checkpoint_step} ({st.last_checkpoint})"
    requeues = str(st.requeues)
    if st.slurm_restarts is not None:
        requeues += f" (Slurm restart count of job {st.job_id}: {st.slurm_restarts})"
    lines = [
        f"run dir:          {st.run_dir}",
        f"slurm job:        {job}",
        f"last step:        {step}",
        f"last checkpoint:  {ckpt}",
        f"requeues:         {requeues}",
    ]
    lines += [f"unusable:         {u}" for u in st.unusable_checkpoints]
    if st.summary_status:
        lines.append(f"last exit:        {st.summary_status} (summary.json)")
    if st.last_event and st.last_event.get("event") == "end":
        ev = st.last_event
        lines.append(f"last decision:    {ev.get('action')}: {ev.get('reason')}")
    return "\n".join(lines)
