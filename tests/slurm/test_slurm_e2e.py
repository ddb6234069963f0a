"""End to end on a real Slurm cluster (2 nodes x 1 CPU task, ZeRO-2, tiny Perceiver IO MLM).

* ``perceiver submit`` (submitit), preempted twice while it trains, once by ``scontrol requeue``
  (SIGTERM, Slurm requeues) and once by the warning signal (USR2, the job requeues itself): it
  finishes with exactly the planned steps, its step log has no gap or repeat, and every loss,
  the final one included, equals that of an uninterrupted run of the same config.
* ``slurm/templates/train.sbatch`` (plain sbatch + srun + perceiver train), one rank killed with
  SIGKILL mid-run: the job requeues itself, restarts from the last complete checkpoint and ends
  with the uninterrupted run's losses.
* The warning signal while the ranks still start up (before the training loop): kept, agreed on
  at the first step boundary, which is saved; the job requeues itself and finishes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.slurm.conftest import (
    diagnostics,
    job_done,
    job_info,
    last_step,
    metrics,
    run,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.distributed]

MAX_STEPS = 150
TRAIN = [
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.log_every=1",
    "trainer.val_every=0",
    "checkpoint.every=20",
    "checkpoint.keep=0",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def shards(tmp_path_factory, slurm_cluster) -> Path:
    from data_pipeline.cli import prepare_demo_corpus
    from pretrain.config import load_config

    out = tmp_path_factory.mktemp("slurm_shards") / "mlm"
    seq_len = load_config(REPO / "configs" / "tiny_mlm.yaml").model.max_seq_len
    prepare_demo_corpus(out, seq_len=seq_len, objective="mlm", max_bytes=400_000)
    return out


def _submit(data_dir: Path, run_dir: Path, max_steps: int = MAX_STEPS) -> str:
    proc = run(
        [
            sys.executable,
            "-m",
            "perceiver_cli",
            "submit",
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={data_dir}",
            f"trainer.run_dir={run_dir}",
            *TRAIN,
            f"trainer.max_steps={max_steps}",
            "--nodes",
            "2",
            "--time",
            "00:15:00",
        ]
    )
    m = re.search(r"submitted job (\d+)", proc.stdout)
    assert m, proc.stdout
    assert (
        "tensorboard --logdir" in proc.stdout
        and f"{run_dir}/slurm/{m.group(1)}_0_log.out" in proc.stdout
    )
    return m.group(1)


class _Job:
    """An uninterrupted reference run, submitted first so it trains while the others start."""

    def __init__(self, run_dir: Path, job_id: str) -> None:
        self.run_dir, self.job_id = run_dir, job_id

    def losses(self) -> dict[int, float]:
        wait_until(
            lambda: job_done(self.job_id),
            JOB_TIMEOUT,
            "the reference job",
            lambda: diagnostics(self.run_dir, self.job_id),
            interval=1,
        )
        rows = metrics(self.run_dir)
        assert [r["step"] for r in rows] == list(range(1, MAX_STEPS + 1)), diagnostics(
            self.run_dir, self.job_id
        )
        return {r["step"]: r["train/loss"] for r in rows}


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> _Job:
    run_dir = tmp_path_factory.mktemp("slurm_ref") / "run"
    return _Job(run_dir, _submit(shards, run_dir))


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "slurm" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _starts(run_dir: Path) -> list[dict]:
    return [e for e in _events(run_dir) if e["event"] == "start"]


def test_submit_preempted_twice_resumes_exactly(shards, reference, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(shards, run_dir)
    diag = lambda: diagnostics(run_dir, job)  # noqa: E731

    # 1. Slurm-initiated: scontrol requeue (SIGTERM to every rank, Slurm queues the job again).
    wait_until(lambda: last_step(run_dir) >= 30, JOB_TIMEOUT, "step 30", diag)
    run(["scontrol", "requeue", job])
    wait_until(
        lambda: len(_starts(run_dir)) >= 2, JOB_TIMEOUT, "the restart after scontrol requeue", diag
    )
    resumed_at = _starts(run_dir)[1]["checkpoint_step"]
    assert resumed_at is not None and resumed_at >= 30, diag()

    # 2. The warning signal (what --signal=USR2@T sends before the time limit): the job saves and
    #    requeues itself.
    wait_until(
        lambda: last_step(run_dir) >= resumed_at + 5,
        JOB_TIMEOUT,
        "progress after the restart",
        diag,
    )
    run(["scancel", "--signal=USR2", job])
    wait_until(lambda: len(_starts(run_dir)) >= 3, JOB_TIMEOUT, "the restart after USR2", diag)
    wait_until(lambda: job_done(job), JOB_TIMEOUT, "the job to finish", diag, interval=1)

    info = job_info(job)
    assert info.get("JobState") == "COMPLETED" and info.get("Restarts") == "2", diag()
    script = (run_dir / "slurm" / f"{job}_submission.sh").read_text()  # what submitit submitted
    assert "#SBATCH --signal=USR2@120" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "slurm.lifecycle end --run-dir" in script
    assert (run_dir / "slurm" / "config.yaml").is_file()  # the config snapshot beside the logs
    starts = _starts(run_dir)
    assert [s["restart_count"] for s in starts] == [0, 1, 2], diag()
    assert starts[2]["checkpoint_step"] > resumed_at, diag()
    # After scontrol requeue Slurm kills the batch script too (or its hook sees the job ending:
    # "leave"); after USR2 the hook requeues; then the run finishes.
    actions = [e["action"] for e in _events(run_dir) if e["event"] == "end"]
    assert [a for a in actions if a != "leave"] == ["requeue", "done"], diag()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["state"]["step"] == MAX_STEPS, diag()
    assert summary["resumed_from"].endswith(f"step_{starts[2]['checkpoint_step']:08d}")

    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, MAX_STEPS + 1)), diag()  # no gap, no repeat
    ref = reference.losses()
    assert rows[-1]["train/loss"] == ref[MAX_STEPS]
    assert {r["step"]: r["train/loss"] for r in rows} == ref  # bit-identical, every step

    status = json.loads(
        run([sys.executable, "-m", "perceiver_cli", "status", str(run_dir), "--json"]).stdout
    )
    assert status["job_state"] == "COMPLETED" and status["requeues"] == 2
    assert status["last_step"] == MAX_STEPS and status["last_checkpoint_step"] == MAX_STEPS


def _rank_pid(snapshot: Path, rank: int) -> int | None:
    """PID of the training process of ``rank`` (a python running ``perceiver train SNAPSHOT``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if (
            "python" in Path(exe).name
            and str(snapshot).encode() in cmdline
            and f"SLURM_PROCID={rank}".encode() in environ
        ):
            return int(entry.name)
    return None


def test_sbatch_template_survives_a_killed_rank(shards, reference, tmp_path):
    run_dir = tmp_path / "run"
    python = sys.executable
    proc = run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--time=15:00",
            f"--output={tmp_path}/sbatch-%j.out",
            str(REPO / "slurm" / "templates" / "train.sbatch"),
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={shards}",
            f"trainer.run_dir={run_dir}",
            *TRAIN,
        ],
        PERCEIVER=f"{python} -m pretrain.cli",
        PERCEIVER_PYTHON=python,
    )
    job = proc.stdout.strip().split(";")[0]
    diag = lambda: diagnostics(run_dir, job)  # noqa: E731

    wait_until(lambda: last_step(run_dir) >= 45, JOB_TIMEOUT, "step 45", diag)  # checkpoints 20, 40
    pid = _rank_pid(run_dir / "slurm" / "config.yaml", rank=1)
    assert pid is not None, "rank 1's training process not found\n" + diag()
    killed_at = last_step(run_dir)
    os.kill(pid, signal.SIGKILL)  # no warning: like a node dying
    wait_until(lambda: job_done(job), JOB_TIMEOUT, "the job to finish", diag, interval=1)

    assert job_info(job).get("JobState") == "COMPLETED", diag()
    starts = _starts(run_dir)
    assert [s["restart_count"] for s in starts] == [0, 1], diag()
    crash = [e for e in _events(run_dir) if e["event"] == "end"][0]
    assert crash["action"] == "requeue" and crash["exit_code"] != 0, diag()
    resumed_at = starts[1]["checkpoint_step"]
    assert resumed_at is not None and 40 <= resumed_at <= killed_at + 1, diag()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["state"]["step"] == MAX_STEPS, diag()
    assert summary["resumed_from"].endswith(f"step_{resumed_at:08d}")

    # Steps after the last complete checkpoint ran twice (the crash lost them); each run of a step
    # has the reference's loss, and every planned step is there.
    rows = metrics(run_dir)
    ref = reference.losses()
    assert sorted({r["step"] for r in rows}) == list(range(1, MAX_STEPS + 1)), diag()
    assert all(r["train/loss"] == ref[r["step"]] for r in rows), diag()
    repeated = sorted({r["step"] for r in rows if [x["step"] for x in rows].count(r["step"]) > 1})
    assert all(s > resumed_at for s in repeated), repeated
    assert rows[-1]["step"] == MAX_STEPS and rows[-1]["train/loss"] == ref[MAX_STEPS]


def _submitit_tasks(job: str) -> list[int]:
    """PIDs of the job's task processes (``python -m submitit.core._submit``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if (
            "python" in Path(exe).name  # not srun, whose command line names the same module
            and b"submitit.core._submit" in cmdline
            and f"SLURM_JOB_ID={job}".encode() in environ
        ):
            pids.append(int(entry.name))
    return pids


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (``SigCgt`` of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(caught >> (signum - 1) & 1)


def test_warning_signal_during_start_up_is_kept_until_the_first_step(shards, tmp_path):
    run_dir = tmp_path / "run"
    steps = 30
    job = _submit(shards, run_dir, max_steps=steps)
    diag = lambda: diagnostics(run_dir, job)  # noqa: E731

    # Both tasks run Python with a USR2 handler (submitit's, then the job's own), and are still
    # starting up (imports, process group, model, engine, loaders): no step logged yet.
    wait_until(
        lambda: (
            len(tasks := _submitit_tasks(job)) == 2
            and all(_catches(p, signal.SIGUSR2) for p in tasks)
        ),
        JOB_TIMEOUT,
        "both tasks handling USR2",
        diag,
    )
    time.sleep(2)
    assert not (run_dir / "metrics.jsonl").exists(), "start-up already over: " + diag()
    run(["scancel", "--signal=USR2", job])
    wait_until(lambda: job_done(job), JOB_TIMEOUT, "the job to finish", diag, interval=1)

    info = job_info(job)
    assert info.get("JobState") == "COMPLETED" and info.get("Restarts") == "1", diag()
    starts = _starts(run_dir)
    assert [s["restart_count"] for s in starts] == [0, 1], diag()
    assert starts[1]["checkpoint_step"] == 1, diag()  # saved at the first step boundary
    ends = [e for e in _events(run_dir) if e["event"] == "end"]
    assert [(e["action"], e["restart_count"]) for e in ends] == [("requeue", 0), ("done", 1)]
    assert "warning signal" in ends[0]["reason"], diag()
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, steps + 1)), diag()
