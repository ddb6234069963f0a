"""What a job asks Slurm for, what the cluster has, and whether the two fit.

:class:`JobRequest` holds the options of ``perceiver submit`` (nodes, GPUs, CPUs, memory,
partition, ...). :func:`query_cluster` reads partitions and nodes from ``scontrol show partition``
and ``scontrol show node`` into a :class:`ClusterInfo`, and :func:`validate_request` refuses what
cannot run there (more tasks than GPUs, no partition where the cluster has no default, more nodes,
CPUs, memory or time than the partition offers), before anything is submitted. Every message names
the option to change.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from typing import Any


def expand_nodelist(nodelist: str) -> list[str]:
    """``n[1-3],m1`` -> host names (``pretrain.train.distributed.expand_nodelist``, imported here
    only when called: that module imports torch, and ``perceiver --help`` should not)."""
    from pretrain.train.distributed import expand_nodelist as expand

    return expand(nodelist)


class SubmitError(ValueError):
    """A request that cannot run on the cluster; the message names the option to change."""


class SlurmUnavailable(RuntimeError):
    """No Slurm controller could be reached from this machine."""


# --------------------------------------------------------------------------------------------
# Slurm value formats


def parse_time_minutes(text: str) -> int | None:
    """Parse a Slurm time limit into whole minutes (rounded up); ``None`` means unlimited.

    Accepts every ``--time`` format: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``,
    plus ``UNLIMITED``/``INFINITE`` as printed by ``scontrol``.

    Raises:
        ValueError: If ``text`` is not a Slurm time.
    """
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"{text!r} is not a Slurm time (HH:MM:SS, D-HH:MM:SS or minutes)")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = (parts + [0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif len(parts) == 1:  # M
        seconds = parts[0] * 60
    elif len(parts) == 2:  # M:S
        seconds = parts[0] * 60 + parts[1]
    else:  # H:M:S
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return math.ceil(seconds / 60)


def format_minutes(minutes: int | None) -> str:
    """Minutes as Slurm's ``D-HH:MM:SS`` (or ``UNLIMITED``)."""
    if minutes is None:
        return "UNLIMITED"
    d, rem = divmod(minutes, 1440)
    h, m = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def parse_mem_mb(text: str) -> int:
    """Parse a Slurm memory size (``500M``, ``64G``, ``1T``, plain megabytes) into megabytes.

    ``0`` means "all the memory of the node" to Slurm and is returned as 0.

    Raises:
        ValueError: If ``text`` is not a Slurm memory size.
    """
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", text.strip().upper())
    if not m:
        raise ValueError(f"{text!r} is not a memory size (e.g. 500M, 64G)")
    value, unit = float(m.group(1)), m.group(2) or "M"
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return math.ceil(value * factor)


def parse_gpu_count(gres: str) -> int:
    """Number of GPUs in a node's ``Gres`` field (``gpu:8``, ``gpu:a100:4(S:0-1),gpu:v100:2``)."""
    total = 0
    for item in gres.split(","):
        item = re.sub(r"\(.*?\)", "", item.strip())
        if not item.startswith("gpu"):
            continue
        last = item.split(":")[-1]
        total += int(last) if last.isdigit() else 1
    return total


def parse_scontrol_record(line: str) -> dict[str, str]:
    """Parse one line of ``scontrol show ... -o`` (``Key=value Key2=value with spaces ...``)."""
    pairs = re.split(r"\s+(?=[A-Za-z][A-Za-z0-9_/:.]*=)", line.strip())
    out = {}
    for pair in pairs:
        if "=" in pair:
            key, value = pair.split("=", 1)
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# The cluster


@dataclass(frozen=True)
class NodeInfo:
    """One node as ``scontrol show node`` reports it."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    state: str


@dataclass(frozen=True)
class PartitionInfo:
    """One partition as ``scontrol show partition`` reports it."""

    name: str
    nodes: tuple[str, ...]
    default: bool = False
    state: str = "UP"
    max_time_min: int | None = None  # None: unlimited


@dataclass
class ClusterInfo:
    """Partitions and nodes of a cluster (what validation needs)."""

    partitions: dict[str, PartitionInfo] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)

    @property
    def default_partition(self) -> str | None:
        for p in self.partitions.values():
            if p.default:
                return p.name
        return None

    @classmethod
    def from_scontrol(cls, partitions_text: str, nodes_text: str) -> ClusterInfo:
        """Build from the output of ``scontrol show partition -o`` and ``scontrol show node -o``."""
        info = cls()
        for line in nodes_text.splitlines():
            rec = parse_scontrol_record(line)
            if "NodeName" not in rec:
                continue
            info.nodes[rec["NodeName"]] = NodeInfo(
                name=rec["NodeName"],
                cpus=int(rec.get("CPUTot", "0") or 0),
                memory_mb=int(rec.get("RealMemory", "0") or 0),
                gpus=parse_gpu_count(rec.get("Gres", "")),
                state=rec.get("State", "UNKNOWN"),
            )
        for line in partitions_text.splitlines():
            rec = parse_scontrol_record(line)
            if "PartitionName" not in rec:
                continue
            nodelist = rec.get("Nodes", "")
            info.partitions[rec["PartitionName"]] = PartitionInfo(
                name=rec["PartitionName"],
                nodes=tuple(expand_nodelist(nodelist)) if nodelist and nodelist != "(null)" else (),
                default=rec.get("Default", "NO") == "YES",
                state=rec.get("State", "UP"),
                max_time_min=parse_time_minutes(rec.get("MaxTime", "UNLIMITED")),
            )
        return info


def _scontrol(args: list[str], timeout: float) -> str:
    if shutil.which("scontrol") is None:
        raise SlurmUnavailable("scontrol not found: this machine is not a Slurm submit host")
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # scontrol would retry reading it for a minute
        raise SlurmUnavailable(f"SLURM_CONF={conf}: no such file")
    try:
        proc = subprocess.run(
            ["scontrol", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"scontrol {' '.join(args)}: no answer in {timeout:.0f} s") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        reason = msg[-1] if msg else f"exit status {proc.returncode}"
        raise SlurmUnavailable(f"scontrol {' '.join(args)} failed: {reason}")
    return proc.stdout


def query_cluster(timeout: float = 20.0) -> ClusterInfo:
    """Read partitions and nodes from the Slurm controller.

    Raises:
        SlurmUnavailable: If ``scontrol`` is missing or the controller does not answer.
    """
    return ClusterInfo.from_scontrol(
        _scontrol(["show", "partition", "-o"], timeout), _scontrol(["show", "node", "-o"], timeout)
    )


# --------------------------------------------------------------------------------------------
# The request


@dataclass
class JobRequest:
    """Resources of one training job (the options of ``perceiver submit``).

    With GPUs, training runs one task per GPU, so ``tasks_per_node`` defaults to (and must equal)
    ``gpus_per_node``; on CPU nodes it is the number of CPU ranks per node (default 1).
    """

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None  # per node, Slurm syntax (64G); "0" asks for all of it
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None  # HH:MM:SS etc.; None: the partition's default
    constraint: str | None = None
    exclude: str | None = None
    job_name: str = "perceiver"
    signal_delay_s: int = 120  # warning signal (USR2) this long before the time limit

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.ntasks_per_node

    @property
    def time_minutes(self) -> int | None:
        return None if self.time is None else parse_time_minutes(self.time)

    def check(self) -> None:
        """Checks that need no cluster (counts, formats, one task per GPU).

        Raises:
            SubmitError: Listing every problem, each with its option.
        """
        errors = []
        if self.nodes < 1:
            errors.append(f"--nodes: must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            errors.append(f"--gpus-per-node: must be >= 0, got {self.gpus_per_node}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            errors.append(f"--tasks-per-node: must be >= 1, got {self.tasks_per_node}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            errors.append(f"--cpus-per-task: must be >= 1, got {self.cpus_per_task}")
        if self.gpus_per_node > 0 and self.ntasks_per_node > self.gpus_per_node:
            errors.append(
                f"--tasks-per-node: {self.ntasks_per_node} tasks per node but only "
                f"--gpus-per-node {self.gpus_per_node}: training runs one task per GPU, so there "
                "cannot be more tasks than GPUs (drop --tasks-per-node)"
            )
        elif self.gpus_per_node > 0 and self.ntasks_per_node < self.gpus_per_node:
            errors.append(
                f"--tasks-per-node: {self.ntasks_per_node} tasks per node would leave "
                f"{self.gpus_per_node - self.ntasks_per_node} of --gpus-per-node "
                f"{self.gpus_per_node} idle: training runs one task per GPU (drop --tasks-per-node)"
            )
        if self.time is not None:
            try:
                minutes = parse_time_minutes(self.time)
            except ValueError as e:
                errors.append(f"--time: {e}")
            else:
                if minutes is not None and minutes < 1:
                    errors.append(f"--time: must be at least one minute, got {self.time!r}")
        if self.mem is not None:
            try:
                parse_mem_mb(self.mem)
            except ValueError as e:
                errors.append(f"--mem: {e}")
        if self.signal_delay_s < 0:
            errors.append(f"--signal-delay: must be >= 0 seconds, got {self.signal_delay_s}")
        if errors:
            raise SubmitError("\n".join(errors))


def check_against_config(request: JobRequest, cfg: Any) -> None:
    """Refuse requests that contradict the training config (``trainer.device``).

    Raises:
        SubmitError: If the config wants CUDA without GPUs, or CPU training on GPU nodes.
    """
    device = cfg.trainer.device
    if device == "cuda" and request.gpus_per_node == 0:
        raise SubmitError(
            "--gpus-per-node: trainer.device=cuda needs GPUs; pass --gpus-per-node N "
            "(or trainer.device=cpu)"
        )
    if device == "cpu" and request.gpus_per_node > 0:
        raise SubmitError(
            f"--gpus-per-node: {request.gpus_per_node} GPUs per node would sit idle with "
            "trainer.device=cpu; use --gpus-per-node 0 --tasks-per-node N for CPU ranks, or "
            "trainer.device=cuda"
        )


def validate_request(request: JobRequest, cluster: ClusterInfo) -> JobRequest:
    """Check ``request`` against the cluster; returns it with the partition filled in.

    Raises:
        SubmitError: Listing every reason the job could not run, each naming its option.
    """
    request.check()
    partition_names = ", ".join(sorted(cluster.partitions)) or "(none)"
    name = request.partition or cluster.default_partition
    if name is None:
        raise SubmitError(
            f"--partition: required, this cluster has no default partition; "
            f"available: {partition_names}"
        )
    if name not in cluster.partitions:
        raise SubmitError(f"--partition: no partition {name!r}; available: {partition_names}")
    part = cluster.partitions[name]
    errors = []
    if part.state != "UP":
        errors.append(f"--partition: partition {name} is {part.state}, jobs would not start")
    excluded = set(expand_nodelist(request.exclude)) if request.exclude else set()
    nodes = [cluster.nodes[n] for n in part.nodes if n in cluster.nodes and n not in excluded]
    # --constraint is left to Slurm: its expressions (a&b, [a*2|b*2]) are not re-implemented here.
    where = f"partition {name}" + (" without --exclude'd nodes" if excluded else "")
    if request.nodes > len(nodes):
        errors.append(f"--nodes: {request.nodes} nodes requested but {where} has {len(nodes)}")
    if request.gpus_per_node > 0:
        fit = [n for n in nodes if n.gpus >= request.gpus_per_node]
        if len(fit) < request.nodes:
            most = max((n.gpus for n in nodes), default=0)
            errors.append(
                f"--gpus-per-node: {request.gpus_per_node} GPUs per node on {request.nodes} "
                f"node(s) requested but {where} has {len(fit)} node(s) with that many (at most "
                f"{most} GPUs per node)"
            )
    cpus_needed = request.ntasks_per_node * (request.cpus_per_task or 1)
    if nodes and cpus_needed > max(n.cpus for n in nodes):
        errors.append(
            f"--cpus-per-task: {request.ntasks_per_node} tasks x {request.cpus_per_task or 1} CPUs "
            f"= {cpus_needed} CPUs per node requested but the nodes of {where} have at most "
            f"{max(n.cpus for n in nodes)}"
        )
    if request.mem is not None and nodes:
        mem_mb = parse_mem_mb(request.mem)
        most = max(n.memory_mb for n in nodes)
        if mem_mb > most:
            errors.append(
                f"--mem: {request.mem} per node requested but the nodes of {where} have at most "
                f"{most} MB"
            )
    minutes = request.time_minutes
    if minutes is not None and part.max_time_min is not None and minutes > part.max_time_min:
        errors.append(
            f"--time: {request.time} exceeds the time limit of partition {name} "
            f"({format_minutes(part.max_time_min)})"
        )
    if errors:
        raise SubmitError("\n".join(errors))
    return replace(request, partition=name)


def executor_parameters(request: JobRequest, hooks: tuple[list[str], list[str]]) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments for ``request`` (validated beforehand)."""
    params: dict[str, Any] = {
        "job_name": request.job_name,
        "nodes": request.nodes,
        "ntasks_per_node": request.ntasks_per_node,
        "time": request.time_minutes,
        "signal_delay_s": request.signal_delay_s,
        "setup": hooks[0],
        "teardown": hooks[1],
        "srun_args": ["--kill-on-bad-exit=1"],
        "additional_parameters": {"requeue": True},
    }
    optional = {
        "gpus_per_node": request.gpus_per_node or None,
        "cpus_per_task": request.cpus_per_task,
        "mem": request.mem,
        "partition": request.partition,
        "account": request.account,
        "qos": request.qos,
        "constraint": request.constraint,
        "exclude": request.exclude,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params
