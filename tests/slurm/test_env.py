"""Inside a job: SLURM_* -> torch.distributed / streaming variables, on both launch paths."""

from __future__ import annotations

import os

import pytest

from pretrain.train.distributed import env_from_slurm, slurm_port
from slurm.launcher import setup_task_env

_DIST = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _task_environ(**over: str) -> dict[str, str]:
    """What srun gives task 9 of a 2-node x 8-GPU job (rank 9 = node 1, local rank 1)."""
    env = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu[03-04]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "16",
        "SLURM_NTASKS_PER_NODE": "8",
        "SLURM_TASKS_PER_NODE": "8(x2)",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
    }
    env.update(over)
    return env


@pytest.fixture
def task_env(monkeypatch):
    def apply(**over: str) -> None:
        for key in _DIST:
            monkeypatch.delenv(key, raising=False)
        for key, value in _task_environ(**over).items():
            monkeypatch.setenv(key, value)

    return apply


def test_submitit_task_environment(task_env):
    task_env()
    env = setup_task_env()
    got = {k: os.environ[k] for k in _DIST}
    assert got == {
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "gpu03",  # first node of the allocation
        "MASTER_PORT": str(slurm_port("4242")),
    }
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (9, 16, 1, 8)
    assert not env.is_main
    # DeepSpeed/the trainer pick cuda:LOCAL_RANK among all GPUs: the mask is not narrowed.
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"


def test_both_launch_paths_agree(task_env):
    """submitit's TrainJob and `srun perceiver train` (the sbatch template) map identically."""
    environ = _task_environ()
    task_env()
    assert setup_task_env() == env_from_slurm(environ)


def test_inherited_variables_do_not_leak_into_the_job(task_env, monkeypatch):
    """A submit shell inside another job carries RANK etc.; the task's own values win."""
    task_env()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "elsewhere")
    monkeypatch.setenv("MASTER_PORT", "1234")
    env = setup_task_env()
    assert (env.rank, env.world_size, env.master_addr, env.master_port) == (
        9,
        16,
        "gpu03",
        slurm_port("4242"),
    )


def test_port_is_derived_from_the_job_id(task_env):
    task_env(SLURM_JOB_ID="4243")
    a = setup_task_env().master_port
    task_env(SLURM_JOB_ID="4242")
    b = setup_task_env().master_port
    assert a != b and 20000 <= min(a, b) and max(a, b) < 40000
    task_env(SLURM_JOB_ID="4242")
    assert setup_task_env().master_port == b  # every task of a job, and a requeued job, agree


def test_single_node_cpu_job(task_env):
    task_env(
        SLURM_JOB_NODELIST="n1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_TASKS_PER_NODE="2",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
    )
    env = setup_task_env()
    assert (env.rank, env.world_size, env.local_world_size, env.master_addr) == (0, 2, 2, "n1")
    assert env.is_main
