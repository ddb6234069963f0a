"""tools/slurm_cluster.sh is private: a second cluster on the same host (its own directory and
ports) touches neither /etc/slurm nor the first cluster's jobs, and ``stop`` undoes its
/etc/hosts lines."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, skip_unless_ci
from tests.slurm.conftest import slurm_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = REPO / "tools" / "slurm_cluster.sh"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


def _free_port_range(n: int = 3) -> int:
    """A base port with ``n`` consecutive free ports (controller, then one per node)."""
    for base in range(26817, 40000, 7):
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def _conf_state() -> tuple[bool, str | None, bytes | None]:
    link = os.readlink(SYSTEM_CONF) if SYSTEM_CONF.is_symlink() else None
    data = SYSTEM_CONF.read_bytes() if SYSTEM_CONF.is_file() else None
    return SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink(), link, data


def _script(cmd: str, cluster: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    proc = subprocess.run(
        [str(SCRIPT), cmd], env={**env, **cluster}, capture_output=True, text=True, timeout=180
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"slurm_cluster.sh {cmd} exited {proc.returncode}\n{proc.stderr}")
    return proc


def _slurm(args: list[str], conf: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env={**slurm_env(), "SLURM_CONF": conf}, capture_output=True, text=True, timeout=60
    )


def test_second_cluster_is_private_and_stop_cleans_up():
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        skip_unless_ci(f"needs root and Slurm ({', '.join(missing) or 'not root'})")
    root = Path(tempfile.mkdtemp(prefix="slurm-b-"))  # short: the munge socket path is limited
    private = {"PERCEIVER_SLURM_DIR": str(root), "PERCEIVER_SLURM_PORT": str(_free_port_range())}
    conf = str(root / "slurm.conf")
    name = f"private-{os.getpid()}"
    hosts_before = Path("/etc/hosts").read_text()
    conf_before = _conf_state()
    first_conf = slurm_env().get("SLURM_CONF")  # the tests' own cluster, if one runs
    try:
        _script("start", private)
        assert _script("env", private).stdout.strip() == f"export SLURM_CONF={conf}"
        assert _conf_state() == conf_before, "start wrote /etc/slurm/slurm.conf"
        assert (
            "127.0.0.1"
            in subprocess.run(["getent", "hosts", "n1"], capture_output=True, text=True).stdout
        )
        job = _slurm(["sbatch", "--parsable", "-J", name, "-N", "2", "--wrap", "sleep 300"], conf)
        assert job.returncode == 0, job.stderr
        assert _slurm(["squeue", "-h", "-n", name, "-o", "%i"], conf).stdout.split() == [
            job.stdout.strip().split(";")[0]
        ]
        if first_conf:  # the first cluster still answers and does not see the job
            jobs = _slurm(["squeue", "-h", "-n", name, "-o", "%i"], first_conf)
            assert jobs.returncode == 0 and jobs.stdout.strip() == "", jobs.stderr
    finally:
        _slurm(["scancel", "-n", name], conf)
        _script("stop", private, check=False)
        shutil.rmtree(root, ignore_errors=True)
    assert _script("status", private, check=False).returncode != 0  # its daemons are gone
    assert Path("/etc/hosts").read_text() == hosts_before, "stop left /etc/hosts lines"
    assert _conf_state() == conf_before
