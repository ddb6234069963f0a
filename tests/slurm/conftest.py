"""Fixtures for tests against a real Slurm cluster (tools/slurm_cluster.sh starts one locally).

Tests that need the cluster take the ``slurm_cluster`` fixture: it skips them with the reason when
no controller answers (a laptop), and fails them instead when ``CI=true``, where
``tools/ci_slurm_setup.sh`` must have started the cluster before the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, skip_unless_ci

CLUSTER_DIR = Path(os.environ.get("PERCEIVER_SLURM_DIR", "/tmp/perceiver-slurm"))


def slurm_env(**extra: str) -> dict[str, str]:
    """Environment for Slurm commands and the jobs they submit (sbatch exports it to the job)."""
    env = dict(os.environ)
    if "SLURM_CONF" not in env and (CLUSTER_DIR / "slurm.conf").is_file():
        env["SLURM_CONF"] = str(CLUSTER_DIR / "slurm.conf")  # tools/slurm_cluster.sh's own config
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO}:{pythonpath}" if pythonpath else str(REPO)
    env["DS_ACCELERATOR"] = "cpu"
    env.update(extra)
    return env


def _cluster_problem() -> str | None:
    """Why the cluster is not usable, or None when it is (>= 2 nodes up)."""
    if shutil.which("sinfo") is None:
        return "Slurm client tools (sinfo) are not installed"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"],
            capture_output=True,
            text=True,
            timeout=20,
            env=slurm_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()[-300:]}"
    up = {
        line.split()[0]
        for line in proc.stdout.splitlines()
        if len(line.split()) == 2
        and line.split()[1].rstrip("*~#") in ("idle", "mix", "alloc", "comp")
    }
    if len(up) < 2:
        return f"fewer than 2 usable nodes: {proc.stdout.strip()!r}"
    return None


def require_cluster() -> None:
    """Skips the calling test without a usable cluster (fails it under CI=true)."""
    problem = _cluster_problem()
    if problem is not None:
        skip_unless_ci(
            f"no Slurm cluster is usable: {problem}; start one with `sudo tools/slurm_cluster.sh "
            "start` (see docs/slurm.md; in CI tools/ci_slurm_setup.sh does)"
        )


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A reachable Slurm cluster with two nodes; skip (fail under CI=true) without one."""
    require_cluster()


def run(
    cmd: list[str], timeout: float = 120, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """Run a command with :func:`slurm_env`; fail with its output on error."""
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=slurm_env(**env),
        cwd=REPO,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n"
            f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job`` of a job ({} once Slurm forgot it)."""
    from slurm.cluster import parse_scontrol_record

    proc = run(["scontrol", "show", "job", "-o", job_id], check=False)
    return parse_scontrol_record(proc.stdout) if proc.returncode == 0 else {}


def metrics(run_dir: Path) -> list[dict]:
    """Rows of ``metrics.jsonl`` that carry a training loss (a torn last line is ignored)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "train/loss" in row:
                rows.append(row)
    return rows


def last_step(run_dir: Path) -> int:
    rows = metrics(run_dir)
    return rows[-1]["step"] if rows else 0


def diagnostics(run_dir: Path, job_id: str | None) -> str:
    """Everything useful when a Slurm test fails: job state, events, log tails."""
    parts = []
    if job_id:
        parts.append(f"scontrol: {job_info(job_id)}")
    events = run_dir / "slurm" / "events.jsonl"
    if events.is_file():
        parts.append("events:\n" + events.read_text())
    for log in sorted((run_dir / "slurm").glob("*_log.*")) + sorted(run_dir.parent.glob("*.out")):
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if "cpp_extension" not in line]
        parts.append(f"--- {log}\n" + "\n".join(lines[-25:]))
    return "\n".join(parts)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    on_fail: Callable[[], str],
    interval: float = 0.2,
) -> None:
    """Poll ``predicate`` until true; fail with ``what`` and ``on_fail()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_fail()}")


def job_done(job_id: str) -> bool:
    """True once the job reached a final state (it stays in scontrol for MinJobAge)."""
    state = job_info(job_id).get("JobState", "")
    return state in (
        "",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
    )
