"""Shared fixtures: real data beside the checkout, and a 2-process gloo runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# DeepSpeed must pick its CPU accelerator before it is first imported (tests have no GPU).
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("DS_BIND_CORES_TO_RANK", "0")
# One intra-op thread per process: the tests' tiny models lose more to OpenMP's hand-offs (and to
# spinning threads when the cores are shared with other ranks) than a second thread gains
# (measured: 4 in-process model test files 108 s at 1 thread, 317 s at 2 on a loaded 2-core host).
os.environ.setdefault("OMP_NUM_THREADS", "1")


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


_SESSION_DIST_ENV = {k: os.environ.get(k) for k in DIST_VARS}


def _restore_dist_env() -> None:
    for k, v in _SESSION_DIST_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _isolate_distributed_env():
    """Tests (and module fixtures) that set up streaming write rank variables into this process;
    reset them around every test so no later subprocess inherits a stale RANK/WORLD_SIZE."""
    _restore_dist_env()
    yield
    _restore_dist_env()


def clean_env(extra: dict | None = None) -> dict[str, str]:
    """This process's environment without launcher variables, for starting `perceiver`."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    env.update(extra or {})
    return env


def skip_unless_ci(reason: str) -> None:
    """Skips the test (a user's machine may lack the resource); fails it when ``CI=true``, where
    the resource is part of the set-up and its absence is a broken CI, not a reason to skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real public samples); skipped where absent (a user's machine)."""
    if not SHARED_DATA.is_dir():
        skip_unless_ci(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_perceiver(
    args: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None
):
    """Run the ``perceiver`` CLI in a subprocess; fail the test with its output on error."""
    full_env = clean_env(env)
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver_cli", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"perceiver {' '.join(args)} exited {proc.returncode}"
            f"\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-8000:]}"
        )
    return proc


def _worker(rank: int, world_size: int, port: int, fn, args) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int = 2, args: tuple = ()) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` processes joined by gloo.

    ``fn`` must be importable (a module-level function); an exception in any rank fails the test.
    """
    import torch.multiprocessing as mp

    mp.start_processes(
        _worker,
        args=(world_size, free_port(), fn, args),
        nprocs=world_size,
        start_method="spawn",
        join=True,
    )


class S3Server:
    """A real S3-compatible HTTP endpoint on 127.0.0.1 (moto's server) and its environment."""

    def __init__(self, endpoint: str, env: dict[str, str]) -> None:
        self.endpoint = endpoint
        self.env = env

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def bucket(self, name: str) -> str:
        """Creates bucket `name` (if needed); returns `s3://name`."""
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def objects(self, url: str) -> dict[str, bytes]:
        """`relative key -> bytes` of every object under `url` (`s3://bucket/prefix`)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return {
            k[len(prefix) :].lstrip("/"): client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in keys
        }


@pytest.fixture(scope="module")
def s3_server():
    """moto in server mode on a free port; this process's environment (and so `clean_env`, which
    subprocesses get) points streaming's S3 code at it with dummy credentials. Stopped after the
    module, the environment restored."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": "test-secret-never-logged",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Server(env["S3_ENDPOINT_URL"], env)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
