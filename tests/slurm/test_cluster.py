"""Slurm formats, cluster description and refusal of requests that cannot run."""

from __future__ import annotations

import pytest

from slurm.cluster import (
    ClusterInfo,
    JobRequest,
    SubmitError,
    check_against_config,
    parse_gpu_count,
    parse_mem_mb,
    parse_scontrol_record,
    parse_time_minutes,
    query_cluster,
    validate_request,
)
from tests.slurm.conftest import slurm_env

# Literal `scontrol show partition -o` / `scontrol show node -o` lines of a GPU cluster without a
# default partition (as Slurm 22.05 prints them; the OS field contains spaces).
PARTITIONS = "\n".join(
    [
        "PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL "
        "Default=NO QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 "
        "Hidden=NO MaxNodes=UNLIMITED MaxTime=2-00:00:00 MinNodes=0 LLN=NO "
        "MaxCPUsPerNode=UNLIMITED Nodes=gpu[01-04] PriorityJobFactor=1 PriorityTier=1 "
        "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
        "TotalCPUs=256 TotalNodes=4 SelectTypeParameters=NONE JobDefaults=(null) "
        "DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
        "TRES=cpu=256,mem=2000G,node=4,billing=256,gres/gpu=28",
        "PartitionName=cpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL "
        "Default=NO QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 "
        "Nodes=cpu01,cpu02 State=UP TotalCPUs=64 TotalNodes=2",
        "PartitionName=maint Default=NO MaxTime=01:00:00 Nodes=cpu01 State=DOWN TotalCPUs=32 "
        "TotalNodes=1",
    ]
)
NODES = "\n".join(
    f"NodeName={name} Arch=x86_64 CoresPerSocket=32 CPUAlloc=0 CPUEfctv={cpus} CPUTot={cpus} "
    f"CPULoad=0.01 AvailableFeatures=a100 ActiveFeatures=a100 Gres={gres} NodeAddr={name} "
    f"NodeHostName={name} Version=22.05.8 OS=Linux 5.15.0-91-generic #101-Ubuntu SMP Tue Nov 14 "
    f"13:30:08 UTC 2023 RealMemory={mem} AllocMem=0 FreeMem=500000 Sockets=2 Boards=1 "
    f"State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions={part} "
    f"CfgTRES=cpu={cpus},mem=500G,billing=64 AllocTRES= CapWatts=n/a CurrentWatts=0"
    for name, cpus, gres, mem, part in [
        ("gpu01", 64, "gpu:a100:8(S:0-1)", 512000, "gpu"),
        ("gpu02", 64, "gpu:a100:8(S:0-1)", 512000, "gpu"),
        ("gpu03", 64, "gpu:a100:8(S:0-1)", 512000, "gpu"),
        ("gpu04", 64, "gpu:a100:4", 256000, "gpu"),
        ("cpu01", 32, "(null)", 128000, "cpu,maint"),
        ("cpu02", 32, "(null)", 128000, "cpu"),
    ]
)


@pytest.fixture
def cluster() -> ClusterInfo:
    return ClusterInfo.from_scontrol(PARTITIONS, NODES)


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("30", 30),
        ("90:30", 91),  # M:S, rounded up
        ("01:30:00", 90),
        ("24:00:00", 1440),
        ("2-00:00:00", 2880),
        ("1-12", 2160),
        ("1-00:30", 1470),
        ("UNLIMITED", None),
        ("INFINITE", None),
    ],
)
def test_parse_time(text, minutes):
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("bad", ["1h", "01:30:00:00", "", "-5"])
def test_parse_time_refuses(bad):
    with pytest.raises(ValueError, match="not a Slurm time"):
        parse_time_minutes(bad)


@pytest.mark.parametrize(
    "text, mb",
    [("500M", 500), ("64G", 65536), ("1T", 1048576), ("2048", 2048), ("0", 0), ("1.5G", 1536)],
)
def test_parse_mem(text, mb):
    assert parse_mem_mb(text) == mb


@pytest.mark.parametrize(
    "gres, n",
    [
        ("(null)", 0),
        ("gpu:8", 8),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:a100:4,gpu:v100:2", 6),
        ("gpu", 1),
    ],
)
def test_parse_gpu_count(gres, n):
    assert parse_gpu_count(gres) == n


def test_scontrol_record_keeps_values_with_spaces():
    rec = parse_scontrol_record(NODES.splitlines()[0])
    assert rec["NodeName"] == "gpu01" and rec["CPUTot"] == "64" and rec["RealMemory"] == "512000"
    assert (
        rec["OS"].startswith("Linux 5.15.0-91-generic #101-Ubuntu SMP") and rec["AllocTRES"] == ""
    )


def test_cluster_from_scontrol(cluster):
    assert sorted(cluster.partitions) == ["cpu", "gpu", "maint"]
    assert cluster.default_partition is None
    gpu = cluster.partitions["gpu"]
    assert gpu.nodes == ("gpu01", "gpu02", "gpu03", "gpu04") and gpu.max_time_min == 2880
    assert cluster.partitions["cpu"].nodes == ("cpu01", "cpu02")
    assert cluster.partitions["cpu"].max_time_min is None
    assert cluster.nodes["gpu04"].gpus == 4 and cluster.nodes["cpu01"].gpus == 0
    assert cluster.nodes["gpu01"].memory_mb == 512000


def test_valid_request_passes(cluster):
    req = validate_request(
        JobRequest(
            nodes=3,
            gpus_per_node=8,
            cpus_per_task=8,
            mem="400G",
            partition="gpu",
            time="1-00:00:00",
        ),
        cluster,
    )
    assert req.partition == "gpu" and req.ntasks_per_node == 8 and req.num_tasks == 24


def _refusal(cluster, **kwargs) -> str:
    with pytest.raises(SubmitError) as e:
        validate_request(JobRequest(**kwargs), cluster)
    return str(e.value)


def test_more_tasks_than_gpus_is_refused(cluster):
    msg = _refusal(cluster, gpus_per_node=4, tasks_per_node=8, partition="gpu")
    assert msg.startswith("--tasks-per-node: 8 tasks per node but only --gpus-per-node 4")
    assert "one task per GPU" in msg


def test_fewer_tasks_than_gpus_is_refused(cluster):
    assert "would leave 6 of --gpus-per-node 8 idle" in _refusal(
        cluster, gpus_per_node=8, tasks_per_node=2, partition="gpu"
    )


def test_missing_partition_without_default_is_refused(cluster):
    msg = _refusal(cluster, nodes=1)
    assert msg == (
        "--partition: required, this cluster has no default partition; available: cpu, gpu, maint"
    )


def test_unknown_partition(cluster):
    assert (
        _refusal(cluster, partition="h100")
        == "--partition: no partition 'h100'; available: cpu, gpu, maint"
    )


def test_more_gpus_than_nodes_have(cluster):
    msg = _refusal(cluster, nodes=4, gpus_per_node=8, partition="gpu")
    assert msg.startswith(
        "--gpus-per-node: 8 GPUs per node on 4 node(s) requested but partition gpu has 3"
    )
    assert "at most 0 GPUs" in _refusal(cluster, gpus_per_node=1, partition="cpu")


def test_too_many_nodes_cpus_memory_time_all_reported(cluster):
    msg = _refusal(
        cluster,
        nodes=3,
        tasks_per_node=4,
        cpus_per_task=16,
        mem="200G",
        time="3-00:00:00",
        partition="cpu",
    )
    lines = msg.splitlines()
    assert lines[0] == "--nodes: 3 nodes requested but partition cpu has 2"
    assert (
        lines[1].startswith("--cpus-per-task: 4 tasks x 16 CPUs = 64 CPUs per node")
        and "at most 32" in lines[1]
    )
    assert (
        lines[2]
        == "--mem: 200G per node requested but the nodes of partition cpu have at most 128000 MB"
    )
    assert len(lines) == 3  # cpu has no time limit


def test_time_limit_and_down_partition(cluster):
    assert "--time: 3-00:00:00 exceeds the time limit of partition gpu (2-00:00:00)" in _refusal(
        cluster, gpus_per_node=8, partition="gpu", time="3-00:00:00"
    )
    assert "--partition: partition maint is DOWN" in _refusal(cluster, partition="maint")


def test_exclude_shrinks_the_partition(cluster):
    assert (
        "--nodes: 3 nodes requested but partition gpu without --exclude'd nodes has 2"
        in _refusal(cluster, nodes=3, gpus_per_node=4, partition="gpu", exclude="gpu[01-02]")
    )


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"nodes": 0}, "--nodes"),
        ({"time": "soon"}, "--time"),
        ({"time": "0"}, "--time"),
        ({"mem": "lots"}, "--mem"),
        ({"cpus_per_task": 0}, "--cpus-per-task"),
    ],
)
def test_local_checks_name_the_option(kwargs, option):
    with pytest.raises(SubmitError, match=f"^{option}:"):
        JobRequest(**kwargs).check()


def test_config_and_request_must_agree():
    from types import SimpleNamespace

    cuda = SimpleNamespace(trainer=SimpleNamespace(device="cuda"))
    cpu = SimpleNamespace(trainer=SimpleNamespace(device="cpu"))
    with pytest.raises(SubmitError, match="^--gpus-per-node: trainer.device=cuda needs GPUs"):
        check_against_config(JobRequest(), cuda)
    with pytest.raises(SubmitError, match="would sit idle with trainer.device=cpu"):
        check_against_config(JobRequest(gpus_per_node=8), cpu)
    check_against_config(JobRequest(gpus_per_node=8), cuda)
    check_against_config(JobRequest(tasks_per_node=2), cpu)


@pytest.mark.slurm
def test_query_real_cluster(slurm_cluster, monkeypatch):
    """The local test cluster: a default partition over n1, n2, without GPUs."""
    conf = slurm_env().get("SLURM_CONF")
    if conf:
        monkeypatch.setenv("SLURM_CONF", conf)
    cluster = query_cluster()
    name = cluster.default_partition
    assert name is not None and len(cluster.partitions[name].nodes) >= 2
    req = validate_request(JobRequest(nodes=2), cluster)
    assert req.partition == name
    with pytest.raises(SubmitError, match="^--gpus-per-node: 1 GPUs per node on 2 node"):
        validate_request(JobRequest(nodes=2, gpus_per_node=1), cluster)


def test_a_missing_slurm_conf_is_reported_at_once(tmp_path, monkeypatch):
    """scontrol itself retries a missing SLURM_CONF for a minute; a dry run without a cluster
    must not wait for that."""
    import shutil
    import time

    from slurm.cluster import SlurmUnavailable

    if shutil.which("scontrol") is None:
        pytest.skip("scontrol is not installed: the check under test comes after finding it")
    missing = tmp_path / "slurm.conf"
    monkeypatch.setenv("SLURM_CONF", str(missing))
    started = time.monotonic()
    with pytest.raises(SlurmUnavailable, match=f"SLURM_CONF={missing}: no such file"):
        query_cluster()
    assert time.monotonic() - started < 2
