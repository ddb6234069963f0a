"""Process-group set-up for every way a run can be launched.

Supported launchers, detected from the environment in this order:

* ``torchrun`` / ``deepspeed`` launcher / our own ``--nproc-per-node`` spawner: ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` are set.
* ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_JOB_NODELIST`` ... are
  mapped onto the variables above (first node of the allocation is the master, the port is
  derived from the job id so that concurrent jobs on one node do not collide).
* nothing: a single process.

The variables are exported into ``os.environ`` because mosaicml-streaming reads ``WORLD_SIZE``,
``RANK``, ``LOCAL_WORLD_SIZE`` itself when a dataset is built.

``spawn_local`` is the ``--nproc-per-node`` launcher (exit codes: ``pretrain.train.signals``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from pretrain.train.signals import EXIT_INTERRUPTED, EXIT_PREEMPTED, STOP_SIGNALS


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def export(self) -> None:
        """Write the variables torch.distributed, DeepSpeed and streaming read."""
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.local_rank),
            LOCAL_WORLD_SIZE=str(self.local_world_size),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``gpu[01-03,07],login1`` into host names."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-", 1)
                width = len(lo)
                hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(f"{prefix}{r}{suffix}")
    return hosts


def _tasks_on_first_node(tasks_per_node: str) -> int:
    """Parse ``SLURM_TASKS_PER_NODE`` such as ``2(x3),1`` and return the first node's count."""
    m = re.match(r"(\d+)", tasks_per_node)
    if not m:
        raise ValueError(f"SLURM_TASKS_PER_NODE: cannot parse {tasks_per_node!r}")
    return int(m.group(1))


def slurm_port(job_id: str | int) -> int:
    """A master port derived from the Slurm job id (stable across a job's tasks)."""
    return 20000 + int(re.sub(r"\D", "", str(job_id)) or 0) % 20000


def env_from_slurm(environ: dict[str, str]) -> DistEnv:
    """Map the variables ``srun`` sets onto a :class:`DistEnv`."""
    try:
        rank = int(environ["SLURM_PROCID"])
        world = int(environ["SLURM_NTASKS"])
        local_rank = int(environ.get("SLURM_LOCALID", "0"))
        nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST", "")
    except KeyError as e:
        raise RuntimeError(f"running under srun but {e.args[0]} is not set") from None
    local_world = int(
        environ.get("SLURM_NTASKS_PER_NODE")
        or _tasks_on_first_node(environ.get("SLURM_TASKS_PER_NODE", str(world)))
    )
    hosts = expand_nodelist(nodelist) if nodelist else ["127.0.0.1"]
    master = environ.get("MASTER_ADDR") or hosts[0]
    port = int(environ.get("MASTER_PORT") or slurm_port(environ.get("SLURM_JOB_ID", "0")))
    return DistEnv(rank, world, local_rank, local_world, master, port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Find rank and world size from whichever launcher started this process."""
    environ = dict(os.environ if environ is None else environ)
    if "RANK" in environ and "WORLD_SIZE" in environ:
        world = int(environ["WORLD_SIZE"])
        return DistEnv(
            rank=int(environ["RANK"]),
            world_size=world,
            local_rank=int(environ.get("LOCAL_RANK", "0")),
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", str(world))),
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(environ.get("MASTER_PORT", "29500")),
        )
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return env_from_slurm(environ)
    return DistEnv(0, 1, 0, 1, "127.0.0.1", int(environ.get("MASTER_PORT", 0)) or free_port())


def spawn_local(
    argv: list[str], nproc: int, kill_after_s: float = 10.0, module: str = "pretrain.cli"
) -> int:
    """Start ``nproc`` local ranks of ``perceiver <argv>`` (like torchrun) and wait for them.

    The ranks run in their own session, so a Ctrl-C at the terminal reaches only this process,
    which forwards SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 to every rank: the ranks save at the next
    step boundary and stop (:data:`EXIT_PREEMPTED`). A second Ctrl-C stops them at once: it is
    forwarded too, and ranks still alive ``kill_after_s`` later (e.g. blocked in a collective) are
    killed. If a rank fails, the others are terminated.

    Returns:
        0 if every rank finished; :data:`EXIT_PREEMPTED` after a stop with a checkpoint;
        :data:`EXIT_INTERRUPTED` after a second Ctrl-C; else the first failing rank's code.
    """
    port = free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PERCEIVER_SPAWNED_RANK="1",
        )
        procs.append(
            subprocess.Popen([sys.executable, "-m", module, *argv], env=env, start_new_session=True)
        )
    interrupts = 0
    kill_at: float | None = None

    def forward(signum, frame):
        nonlocal interrupts, kill_at
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts == 2:
                print("perceiver: second Ctrl-C: stopping the ranks now", file=sys.stderr)
                kill_at = time.monotonic() + kill_after_s
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                if interrupts >= 2:
                    return EXIT_INTERRUPTED
                failed = [c for c in codes if c != 0]
                return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else (failed or [0])[0]
            failed = [c for c in codes if c not in (None, 0, EXIT_PREEMPTED)]
            if failed or (kill_at is not None and time.monotonic() > kill_at):
                for p in procs:
                    if p.poll() is None and kill_at is not None:
                        p.kill()
                    elif p.poll() is None:
                        p.terminate()
                for p in procs:
                    p.wait()
                return EXIT_INTERRUPTED if interrupts >= 2 else failed[0]
            time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.device=cuda but no CUDA device is visible")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def prepare_deepspeed_env(device: torch.device) -> None:
    """Choose DeepSpeed's accelerator before deepspeed is imported."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # DeepSpeed would otherwise try numactl core binding on CPU; numactl may be absent.
    os.environ.setdefault("DS_BIND_CORES_TO_RANK", "0")


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Export the launcher variables and start the process group (gloo on CPU, nccl on GPU)."""
    env.export()
    prepare_deepspeed_env(device)
    from pretrain.train.native_ops import prepare_jit_ops

    prepare_jit_ops(announce=env.local_rank == 0)  # a first start compiles; say so
    import deepspeed

    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def all_reduce_max_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_rank(flag: torch.Tensor) -> bool:
    """True on every rank if ``flag`` (a 0-d tensor, 1 = set) is set on any rank (one sync)."""
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over ranks (float64; every rank passes the same number of values)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def destroy() -> None:
    """Destroys the process group, and DeepSpeed's cached groups of it: without that, a later
    ``train()`` in the same process (a notebook, a Slurm task that trains twice, the tests)
    would hand DeepSpeed's engine the destroyed world group."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    for name in (
        "_WORLD_GROUP",
        "_ZERO_PARAM_INTRA_PARALLEL_GROUP",
        "_DATA_PARALLEL_GROUP",
        "_MODEL_PARALLEL_GROUP",
        "_TENSOR_MODEL_PARALLEL_GROUP",
    ):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_DATA_PARALLEL_GROUP", "_ALL_TO_ALL_GROUP"):
        getattr(groups, name, {}).clear()
