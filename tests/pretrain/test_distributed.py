"""Launcher environment mapping (torchrun, srun, single process), and Ctrl-C under the
``--nproc-per-node`` launcher."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pretrain.train.distributed import detect_env, env_from_slurm, expand_nodelist, slurm_port
from tests.conftest import REPO, clean_env


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[9-11]-ib", ["a9-ib", "a10-ib", "a11-ib"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_srun_variables_map_to_torch_distributed():
    env = env_from_slurm(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_TASKS_PER_NODE": "4(x2)",
            "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_JOB_ID": "123456",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 4)
    assert env.master_addr == "gpu07"
    assert env.master_port == slurm_port("123456") == 20000 + 123456 % 20000


def test_torchrun_variables_take_precedence_over_slurm():
    env = detect_env(
        {
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1234",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "4",
        }
    )
    assert (env.rank, env.world_size, env.master_addr, env.master_port) == (1, 2, "h", 1234)


def test_single_process_default():
    env = detect_env({})
    assert (env.rank, env.world_size, env.local_world_size) == (0, 1, 1)
    assert env.master_port > 0


def test_srun_missing_variable_is_a_clear_error():
    with pytest.raises(RuntimeError, match="SLURM_NTASKS"):
        env_from_slurm({"SLURM_PROCID": "0"})


def test_stop_signal_first_ctrl_c_requests_a_stop_the_second_stops_at_once():
    from pretrain.train.signals import StopSignal

    before = signal.getsignal(signal.SIGINT)
    stopper = StopSignal()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stopper.requested and stopper.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGUSR2)  # other signals only (re)set the flag
        assert stopper.signum == signal.SIGUSR2
    finally:
        stopper.restore()
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------------------------
# Ctrl-C and the --nproc-per-node launcher (2 CPU ranks, tiny MLM)

LONG_RUN = [
    "trainer.max_steps=100000",
    "trainer.log_every=1",
    "trainer.val_every=0",
    "checkpoint.every=0",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def mlm_shards(tmp_path_factory) -> Path:
    from data_pipeline.cli import prepare_demo_corpus
    from pretrain.config import load_config

    out = tmp_path_factory.mktemp("shards") / "mlm"
    seq_len = load_config(REPO / "configs" / "tiny_mlm.yaml").model.max_seq_len
    prepare_demo_corpus(out, seq_len=seq_len, objective="mlm", max_bytes=200_000)
    return out


class Launch:
    """``perceiver train --nproc-per-node 2`` in its own process group, as a terminal runs it."""

    def __init__(self, shards: Path, run_dir: Path, *overrides: str) -> None:
        self.run_dir = run_dir
        self.err_path = run_dir.parent / "stderr.txt"
        cmd = [
            sys.executable,
            "-m",
            "pretrain.cli",
            "train",
            str(REPO / "configs" / "tiny_mlm.yaml"),
        ]
        cmd += [f"data.dir={shards}", f"trainer.run_dir={run_dir}", *LONG_RUN, *overrides]
        self.proc = subprocess.Popen(
            [*cmd, "--nproc-per-node", "2"],
            env=clean_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(self.err_path, "w"),  # noqa: SIM115 (closed with the process)
            start_new_session=True,
        )
        self.ranks: list[psutil.Process] = []

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, predicate, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} (exit {self.proc.poll()})\n{self.stderr()[-5000:]}"
                )
            time.sleep(0.1)

    def steps_logged(self) -> int:
        path = self.run_dir / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.is_file() else 0

    def training(self, steps: int = 2) -> None:
        self.wait_for(lambda: self.steps_logged() >= steps, f"step {steps}")
        self.ranks = psutil.Process(self.proc.pid).children()
        assert len(self.ranks) == 2

    def exit_code(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            err = self.stderr()[-5000:]
            raise AssertionError(f"still running after {timeout} s\n{err}") from None

    def ranks_alive(self) -> list[int]:
        return [p.pid for p in self.ranks if p.is_running() and p.status() != "zombie"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for p in self.ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait()


@pytest.fixture
def launch(mlm_shards, tmp_path):
    started: list[Launch] = []

    def start(*overrides: str) -> Launch:
        started.append(Launch(mlm_shards, tmp_path / "run", *overrides))
        return started[-1]

    yield start
    for run in started:  # a failed test leaves no rank training
        run.kill()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("target", ["launcher", "process group"])
def test_ctrl_c_saves_on_every_rank_and_stops(launch, target):
    """SIGINT to the launcher alone, or to the terminal's whole process group: every rank saves a
    collective checkpoint at the next step boundary and stops; the launcher exits with
    EXIT_PREEMPTED, without a traceback."""
    from pretrain.train.checkpoint import list_complete
    from pretrain.train.signals import EXIT_PREEMPTED

    run = launch()
    run.training()
    if target == "launcher":
        os.kill(run.proc.pid, signal.SIGINT)
    else:
        os.killpg(run.proc.pid, signal.SIGINT)
    code = run.exit_code()
    err = run.stderr()
    assert code == EXIT_PREEMPTED, err[-5000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-5000:]
    assert "SIGINT: saving at the next step boundary (Ctrl-C again: stop at once)" in err
    assert run.ranks_alive() == []
    summary = json.loads((run.run_dir / "summary.json").read_text())
    step = summary["state"]["step"]
    assert summary["status"] == "preempted" and step == run.steps_logged()
    assert [s for s, _ in list_complete(run.run_dir / "checkpoints")] == [step]


@pytest.mark.slow
@pytest.mark.distributed
def test_second_ctrl_c_stops_at_once(launch):
    """Steps of several seconds: the second Ctrl-C stops every rank before the step boundary the
    first one waits for; nothing is saved and the launcher exits with EXIT_INTERRUPTED."""
    from pretrain.train.checkpoint import list_complete
    from pretrain.train.signals import EXIT_INTERRUPTED

    run = launch("trainer.micro_batch_size=256")
    run.training(steps=1)
    logged = run.steps_logged()
    os.killpg(run.proc.pid, signal.SIGINT)
    run.wait_for(lambda: "Ctrl-C again" in run.stderr(), "announcement of the first Ctrl-C")
    os.killpg(run.proc.pid, signal.SIGINT)
    start = time.monotonic()
    code = run.exit_code()
    err = run.stderr()
    assert code == EXIT_INTERRUPTED, err[-5000:]
    assert time.monotonic() - start < 30 and run.ranks_alive() == []
    assert "second Ctrl-C" in err and "Traceback" not in err, err[-5000:]
    assert run.steps_logged() == logged  # no step finished after the first Ctrl-C
    assert list_complete(run.run_dir / "checkpoints") == []
