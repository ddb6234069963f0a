"""Launcher environment mapping (torchrun, srun, single process)."""

from __future__ import annotations

import pytest

from pretrain.distributed import detect_env, env_from_slurm, expand_nodelist, slurm_port


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
