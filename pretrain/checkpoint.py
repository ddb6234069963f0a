"""Complete-or-invisible DeepSpeed checkpoints.

Layout (one directory per checkpoint, named by step)::

    <checkpoint_dir>/step_00001000/      # written by engine.save_checkpoint on every rank
        mp_rank_00_model_states.pt ...   # DeepSpeed's files (model, ZeRO partitions, client state)
        rng_rank00000.pt ...             # python/numpy/torch RNG state of each rank
        config.yaml                      # the resolved run config: a checkpoint explains itself
        COMPLETE                         # written last, by rank 0, after every rank finished

A directory without ``COMPLETE`` is invisible: ``resume: auto`` never picks it, so a crash in the
middle of a save cannot produce a checkpoint that looks valid. ``COMPLETE`` is written to a
temporary name, fsynced and renamed, so it exists whole or not at all.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "COMPLETE"
_TAG_RE = re.compile(r"^step_(\d+)$")


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def list_complete(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``checkpoint_dir`` as (step, path), oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _TAG_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    done = list_complete(checkpoint_dir)
    return done[-1][1] if done else None


def resolve_resume(policy: str, checkpoint_dir: str | Path) -> Path | None:
    """Map ``checkpoint.resume`` ("auto", "none" or a path) to a checkpoint directory or None."""
    if policy == "none":
        return None
    if policy == "auto":
        return find_latest(checkpoint_dir)
    path = Path(policy)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint.resume: {path} is not a directory")
    if not is_complete(path):
        raise ValueError(f"checkpoint.resume: {path} is not a complete checkpoint (no {MARKER})")
    return path


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(
    engine: Any,
    checkpoint_dir: str | Path,
    step: int,
    client_state: dict[str, Any],
    config_yaml: str,
    keep: int,
) -> Path:
    """Collective save: every rank must call this at the same step."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_for_step(step)
    path = Path(checkpoint_dir) / tag
    if rank == 0 and path.exists():  # a stale partial save of the same step (crash before COMPLETE)
        shutil.rmtree(path)
    if dist.is_initialized():
        dist.barrier()
    engine.save_checkpoint(
        str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False
    )
    torch.save(rng_state(), path / f"rng_rank{rank:05d}.pt")
    if dist.is_initialized():
        dist.barrier()  # every rank's files are on disk
    if rank == 0:
        (path / "config.yaml").write_text(config_yaml)
        meta = {
            "step": step,
            "time": time.time(),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        }
        _write_atomic(path / MARKER, json.dumps(meta))
        if keep > 0:
            for _, old in list_complete(checkpoint_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return path


def saved_partitions(path: str | Path) -> int:
    """How many data-parallel partitions of optimizer state the checkpoint holds (0: none)."""
    return len(list(Path(path).glob("*optim_states.pt")))


def universal_path(path: str | Path) -> Path:
    return Path(path).with_name(Path(path).name + ".universal")


def ensure_universal(path: str | Path, is_main: bool) -> Path:
    """A DeepSpeed *universal* checkpoint of ``path`` (converted once, by the main rank).

    ZeRO (and DeepSpeed's bf16 optimizer) partition optimizer state by data-parallel rank, so a
    checkpoint written by N ranks cannot be loaded by M != N ranks directly. DeepSpeed's
    ``ds_to_universal`` rewrites it per parameter; the result loads on any world size. It is
    written under a temporary name and renamed, so a crash leaves no half-converted directory.
    """
    import torch.distributed as dist

    path = Path(path)
    out = universal_path(path)
    if is_main and not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(path),
            "--output_folder",
            str(tmp),
            "--inject_missing_state",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{path}: conversion to a universal checkpoint failed:\n{proc.stderr[-3000:]}"
            )
        tmp.replace(out)
    if dist.is_initialized():
        dist.barrier()
    return out


def load(
    engine: Any, path: str | Path, load_rng: bool = True, universal: Path | None = None
) -> dict[str, Any]:
    """Load a complete checkpoint into ``engine``; returns the client state saved with it.

    Args:
        engine: the DeepSpeed engine (built with ``checkpoint.load_universal`` if ``universal``).
        path: the checkpoint directory (``.../step_XXXXXXXX``).
        load_rng: restore this rank's RNG state if the checkpoint has one for it.
        universal: load the engine state from this universal conversion of ``path`` instead.
    """
    import torch.distributed as dist

    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"{path}: not a complete checkpoint (no {MARKER})")
    src = universal or path
    load_path, client_state = engine.load_checkpoint(
        str(src.parent), tag=src.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"{path}: DeepSpeed could not load this checkpoint")
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = path / f"rng_rank{rank:05d}.pt"
    if load_rng and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state or {}
