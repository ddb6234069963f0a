"""``trainer.profile=START-END``: a torch profiler trace of training steps START..END.

Every rank writes ``<run_dir>/profile/rank<R>.<...>.pt.trace.json``: a Chrome trace (open it in
``chrome://tracing`` or ui.perfetto.dev) that the PyTorch TensorBoard profiler plugin also reads
(``tensorboard --logdir <run_dir>/profile``). CPU activity is always recorded, CUDA kernels when
the run is on a GPU, with shapes and memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler


def parse_step_range(text: str) -> tuple[int, int]:
    """``"10-12"`` -> (10, 12); ``"7"`` -> (7, 7).

    Raises:
        ValueError: not one or two positive step numbers in order.
    """
    parts = text.split("-")
    try:
        first, last = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        first, last = 0, -1
    if not 1 <= first <= last:
        raise ValueError(f"expected STEP or FIRST-LAST with 1 <= FIRST <= LAST, got {text!r}")
    return first, last


class StepProfiler:
    """Starts the profiler before step ``first`` and writes the trace after step ``last``."""

    def __init__(self, step_range: str, out_dir: str | Path, rank: int, device: torch.device):
        self.first, self.last = parse_step_range(step_range)
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            self.activities.append(ProfilerActivity.CUDA)
        self._prof: profile | None = None

    def before_step(self, step: int) -> None:
        """``step`` is the number of the step about to run (1-based)."""
        if self._prof is None and self.first <= step <= self.last:
            self._prof = profile(
                activities=self.activities,
                record_shapes=True,
                profile_memory=True,
                on_trace_ready=tensorboard_trace_handler(
                    str(self.out_dir), worker_name=f"rank{self.rank}"
                ),
            )
            self._prof.start()

    def after_step(self, step: int) -> None:
        if self._prof is not None and step >= self.last:
            self.close()

    def close(self) -> None:
        """Writes the trace of the steps recorded so far (also when the run stops early)."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()

    def traces(self) -> list[Path]:
        return sorted(self.out_dir.glob(f"rank{self.rank}*.pt.trace.json"))
