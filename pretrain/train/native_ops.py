"""DeepSpeed's C++ ops compiled at first use: one cache per environment, said out loud.

On CPU, DeepSpeed's communication backend compiles its shared-memory op (``deepspeed_shm_comm``)
the first time it starts in an environment, for about a minute, printing nothing. PyTorch keeps
such builds under ``~/.cache/torch_extensions`` for every environment of the user, where builds
of different environments wait on each other's lock. Here the cache lives in the environment
(``<sys.prefix>/torch_extensions`` unless ``TORCH_EXTENSIONS_DIR`` is set), a line is printed
before a build and while waiting for another process's build, and a lock that blocks for longer
than ``STALE_AFTER_S`` is removed when nothing holds it (a lock file whose existence blocks, left
by a killed build) or reported with its path when a process does (a hung or stopped build).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import time
from pathlib import Path

STALE_AFTER_S = 900.0
JIT_OPS_AT_START = ("ShareMemCommBuilder",)  # what deepspeed.comm's backend loads on CPU


def extensions_dir() -> Path | None:
    """Where PyTorch builds extensions: ``TORCH_EXTENSIONS_DIR`` if set, else (and then set
    there, for DeepSpeed and spawned ranks) ``<sys.prefix>/torch_extensions`` if the
    environment is writable; None leaves PyTorch's per-user default."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    if not os.access(sys.prefix, os.W_OK):
        return None
    path = Path(sys.prefix) / "torch_extensions"
    os.environ["TORCH_EXTENSIONS_DIR"] = str(path)
    return path


def _lock_is_held(lock: Path) -> bool | None:
    """Whether a live process holds an OS lock (flock) on ``lock``; None without flock."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            return None
        raise
    finally:
        os.close(fd)  # releases the flock if we got it
    return False


def _torch_lock_blocks_by_existence() -> bool:
    """Older PyTorch (FileBaton) waits while the lock file exists; newer ones hold a flock on
    it, which the kernel releases when the holder dies."""
    from torch.utils import cpp_extension

    return not hasattr(cpp_extension, "FileLock")


def _idle_s(directory: Path) -> float:
    """Seconds since anything in ``directory`` (a build's objects, logs, lock) changed."""
    newest = 0.0
    for p in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            newest = max(newest, p.stat().st_mtime)
    return time.time() - newest


def wait_for_build_lock(
    lock: Path,
    what: str,
    announce: bool = True,
    stale_after_s: float = STALE_AFTER_S,
    by_existence: bool | None = None,
    poll_s: float = 0.5,
) -> None:
    """Return once ``lock`` no longer blocks a build of ``what``; never wait in silence.

    Raises:
        RuntimeError: naming the lock when a live process has held it for ``stale_after_s``
            with no change in its build directory (a hung or stopped build).
    """
    if by_existence is None:
        by_existence = _torch_lock_blocks_by_existence()
    started, said = time.monotonic(), False
    while lock.exists():
        held = _lock_is_held(lock)
        if held is False and not by_existence:
            return  # a flock lock file stays after release; only a holder blocks
        idle = _idle_s(lock.parent)
        if not held and idle > stale_after_s:
            print(
                f"warning: removing {lock}: a build lock left {idle / 60:.0f} min ago by a "
                "build that did not finish (no process holds it, nothing changed since)",
                file=sys.stderr,
                flush=True,
            )
            lock.unlink(missing_ok=True)
            return
        if held and min(time.monotonic() - started, idle) > stale_after_s:
            raise RuntimeError(
                f"{lock}: another process has held this build lock of {what} for over "
                f"{stale_after_s / 60:.0f} min with no progress (a hung or stopped build?); "
                f"`fuser -v {lock}` names it; stop it, or remove {lock.parent} to rebuild"
            )
        if announce and not said and time.monotonic() - started > 2.0:  # not a rank's check
            print(
                f"waiting for another process's build of {what} (lock {lock})",
                file=sys.stderr,
                flush=True,
            )
            said = True
        time.sleep(poll_s)


def prepare_jit_ops(announce: bool = True) -> None:
    """Build (or load) the ops DeepSpeed's CPU accelerator compiles at start-up, saying so.

    Call before ``deepspeed.init_distributed`` with DS_ACCELERATOR chosen; DeepSpeed then finds
    the loaded ops in its cache. ``announce`` is for one rank per node.
    """
    extensions_dir()
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import _get_build_directory

    for name in JIT_OPS_AT_START:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or installed_ops.get(builder.name, False):
            continue  # not on this accelerator, or compiled into the installed DeepSpeed
        if not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            continue
        build = Path(_get_build_directory(builder.name, verbose=False))
        fresh = not (build / f"{builder.name}.so").is_file()
        if fresh and announce:  # whichever rank wins the lock builds; the others wait on it
            print(
                f"compiling DeepSpeed's {builder.name} op into {build} (once per environment, "
                "about a minute)",
                file=sys.stderr,
                flush=True,
            )
        started = time.monotonic()
        wait_for_build_lock(build / "lock", builder.name, announce and not fresh)
        if fresh:
            builder.load(verbose=False)  # DeepSpeed finds it loaded
            if announce:
                seconds = time.monotonic() - started
                print(f"compiled {builder.name} in {seconds:.0f} s", file=sys.stderr, flush=True)
