"""Complete-or-invisible DeepSpeed checkpoints.

Layout (one directory per checkpoint, named by step)::

    <checkpoint_dir>/step_00001000/      # written by engine.save_checkpoint on every rank
        mp_rank_00_model_states.pt ...   # DeepSpeed's files (model, ZeRO partitions, client state)
        rng_rank00000.pt ...             # python/numpy/torch RNG state of each rank
        config.yaml                      # the resolved run config: a checkpoint explains itself
        COMPLETE                         # written last, by rank 0, after every rank finished

A directory without ``COMPLETE`` is invisible: ``resume: auto`` never picks it, so a crash in the
middle of a save cannot produce a checkpoint that looks valid. ``COMPLETE`` is written to a
temporary name, fsynced and renamed (``data_pipeline.files``), so it exists whole or not at all.
It records the size and CRC-32 of every file of the checkpoint (each rank checksums its share of
the files, so the checksums cost about 1/world_size of one extra read of the checkpoint, from the
page cache);
``select_resume`` verifies them and skips a damaged checkpoint, which it marks ``REJECTED``
(a checkpoint whose weights made the loss non-finite is marked the same way, by the trainer).
A saved checkpoint removes what it makes obsolete: checkpoints beyond ``checkpoint.keep`` with
their universal conversions, and older directories without ``COMPLETE`` (killed or rejected).
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
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.files import atomic_write_text

MARKER = "COMPLETE"
REJECTED = "REJECTED"  # replaces COMPLETE in a checkpoint found damaged or non-finite; JSON reason
_MARKER_TMP = f".{MARKER}.tmp"  # atomic_write_text's temporary sibling of the marker
_TAG_RE = re.compile(r"^step_(\d+)$")
_CHUNK = 1 << 24


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
    """Map ``checkpoint.resume`` ("auto", "none" or a path) to a checkpoint directory or None.

    Checks markers only; :func:`select_resume` also verifies the files.
    """
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


def _crc32(path: Path) -> int:
    crc = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


def _files(path: Path) -> list[str]:
    """The checkpoint's files (relative, sorted: every rank lists the same), marker excluded."""

    def listed(p: Path) -> bool:
        return (
            p.is_file() and p.name not in (MARKER, REJECTED) and not p.name.startswith(_MARKER_TMP)
        )

    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if listed(p))


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(local: Any) -> list[Any]:
    import torch.distributed as dist

    if not dist.is_initialized():
        return [local]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, local)
    return out


def verify(
    path: str | Path, checksums: bool = True, rank: int = 0, world_size: int = 1
) -> list[str]:
    """What is wrong with the files of a complete checkpoint (empty: nothing).

    Sizes are checked for every file; CRC-32s (``checksums``) for this rank's share of the files
    (every ``world_size``-th), so ranks that call it together read each file once.
    """
    path = Path(path)
    try:
        recorded = json.loads((path / MARKER).read_text()).get("files")
    except (OSError, json.JSONDecodeError) as e:
        return [f"{MARKER}: unreadable ({e})"]
    if recorded is None:  # written before checkpoints recorded their files
        return []
    problems = []
    for i, (name, (size, crc)) in enumerate(sorted(recorded.items())):
        f = path / name
        try:
            actual = f.stat().st_size
        except OSError:
            problems.append(f"{f}: missing")
            continue
        if actual != size:
            problems.append(f"{f}: {actual} bytes, {MARKER} recorded {size}")
        elif checksums and i % world_size == rank and _crc32(f) != crc:
            problems.append(f"{f}: CRC-32 differs from the one {MARKER} recorded")
    return problems


def reject(path: str | Path, reason: str) -> None:
    """Make a complete checkpoint invisible, keeping the reason in its ``REJECTED`` marker."""
    path = Path(path)
    _write_marker(path / REJECTED, json.dumps({"reason": reason, "time": time.time()}))
    (path / MARKER).unlink(missing_ok=True)


def rejected(checkpoint_dir: str | Path) -> list[tuple[Path, str]]:
    """Checkpoint directories marked ``REJECTED``, with the reason, oldest first."""
    root = Path(checkpoint_dir)
    out = []
    for p in sorted(root.glob("step_*/" + REJECTED)) if root.is_dir() else []:
        try:
            reason = json.loads(p.read_text())["reason"]
        except (OSError, json.JSONDecodeError, KeyError):
            reason = "(unreadable reason)"
        out.append((p.parent, reason))
    return out


def select_resume(policy: str, checkpoint_dir: str | Path) -> Path | None:
    """Collective :func:`resolve_resume` that verifies the checkpoint's files (sizes, CRC-32).

    With ``auto`` a damaged checkpoint is rejected with a warning and the previous complete one
    is tried; a damaged checkpoint named by path is an error. Every rank gets the same answer.

    Raises:
        ValueError: If the named checkpoint is damaged, or every complete one is.
    """
    if policy == "none":
        return None
    first = resolve_resume(policy, checkpoint_dir)
    if first is None:
        return None
    candidates = [first]
    if policy == "auto":
        candidates = [p for _, p in reversed(list_complete(first.parent))]
    rank, world = _world()
    damaged = []
    for path in candidates:
        problems = sorted({p for ps in _gather(verify(path, True, rank, world)) for p in ps})
        if not problems:
            return path
        reason = "damaged: " + "; ".join(problems)
        if policy != "auto":
            raise ValueError(f"checkpoint.resume: {path}: {reason}")
        damaged.append(path)
        if rank == 0:
            msg = f"{path}: {reason}; rejected, trying the previous complete checkpoint"
            warnings.warn(msg, stacklevel=2)
            reject(path, reason)
    raise ValueError(
        f"checkpoint.resume=auto: every complete checkpoint is damaged "
        f"({', '.join(map(str, damaged))}); set checkpoint.resume=none to start over"
    )


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


def _write_marker(path: Path, text: str) -> None:
    """A marker written atomically, its rename made durable (fsync of the directory) before the
    caller goes on: after COMPLETE, :func:`prune` deletes older checkpoints."""
    atomic_write_text(path, text)
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

    rank, world = _world()
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
    if rank == 0:
        (path / "config.yaml").write_text(config_yaml)
    if dist.is_initialized():
        dist.barrier()  # every rank's files are on disk
    files = _files(path)
    mine = {f: [(path / f).stat().st_size, _crc32(path / f)] for f in files[rank::world]}
    recorded = {k: v for part in _gather(mine) for k, v in part.items()}
    if rank == 0:
        meta = {"step": step, "time": time.time(), "world_size": world, "files": recorded}
        _write_marker(path / MARKER, json.dumps(meta))
        prune(checkpoint_dir, keep)
    if dist.is_initialized():
        dist.barrier()
    return path


def prune(checkpoint_dir: str | Path, keep: int) -> None:
    """Remove what the newest complete checkpoint makes obsolete (rank 0, after a save).

    Complete checkpoints beyond the newest ``keep`` (0: keep all); directories older than the
    newest complete checkpoint without ``COMPLETE`` (a killed save, a rejected checkpoint; a save
    in progress is always newer); universal conversions whose checkpoint is gone; DeepSpeed's
    ``latest_universal`` (it names the temporary directory of the conversion; loads use tags).
    """
    root = Path(checkpoint_dir)
    done = list_complete(root)
    if not done:
        return
    newest = done[-1][0]
    for _, old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for p in root.iterdir():
        m = _TAG_RE.match(p.name)
        if m and int(m.group(1)) < newest and p.is_dir() and not is_complete(p):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.endswith((".universal", ".universal.tmp")):
            if not is_complete(root / p.name.split(".")[0]):
                shutil.rmtree(p, ignore_errors=True)
    (root / "latest_universal").unlink(missing_ok=True)


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
        (out.parent / "latest_universal").unlink(missing_ok=True)  # names tmp; loads use tags
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
