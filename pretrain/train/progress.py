"""Training progress on the console: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with a carriage return on every step, which in a log file (a Slurm job,
``make demo > log``) is one unreadable frame per step; there a line every ``every`` steps says
the same.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close``, written as one plain line every ``every``
    steps (and at the last)."""

    def __init__(self, total: int, initial: int, desc: str, every: int, file: TextIO) -> None:
        self.n, self.total, self.desc, self.every, self.file = initial, total, desc, every, file
        self.postfix: dict[str, Any] = {}
        self._start_n, self._start_t = initial, time.monotonic()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            self.file.write(self.line() + "\n")
            self.file.flush()

    def line(self) -> str:
        rate = (self.n - self._start_n) / max(time.monotonic() - self._start_t, 1e-9)
        eta = round((self.total - self.n) / rate) if rate > 0 else 0
        parts = [f"{self.desc}: step {self.n}/{self.total}"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts += [f"{rate:.2f} steps/s", f"eta {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"]
        return ", ".join(parts)

    def close(self) -> None:
        pass


def step_progress(
    total: int, initial: int, desc: str, every: int, file: TextIO | None = None
) -> Any:
    """A tqdm bar over ``total`` steps if ``file`` (default stderr) is a terminal, else a
    :class:`LineProgress` writing every ``every`` steps."""
    file = file or sys.stderr
    if file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="step", file=file)
    return LineProgress(total, initial, desc, every, file)
