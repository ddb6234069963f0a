"""``perceiver glue --slurm``: each task's fine-tuning grid as Slurm job arrays.

``pretrain.glue.cli`` plans the grid and hands each task's runs to a submitter; this is the one
that submits them (the root ``perceiver_cli`` wires it in), so ``pretrain`` never imports Slurm.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.config import save_config
from slurm.cluster import JobRequest
from slurm.launcher import submit_array

if TYPE_CHECKING:
    from pretrain.glue.finetune import GlueRun


class GlueArrays:
    """Submits a task's runs as one job array per batch size (over the learning rates).

    Steps depend on the batch size (epochs -> steps), so a batch size is an array, not an axis.

    Attributes:
        world_size: Ranks of each run (the grid's per-rank batch sizes are planned for it).
        dry_run: Print the batch scripts; submit and write nothing.
    """

    def __init__(self, request: JobRequest, dry_run: bool, max_parallel: int | None) -> None:
        self.request = request
        self.world_size = request.num_tasks
        self.dry_run = dry_run
        self.max_parallel = max_parallel

    def __call__(self, runs: list[GlueRun]) -> list[str]:
        """Submits ``runs`` (one task's grid); returns what to print for each array."""
        lines = []
        by_batch: dict[int, list[GlueRun]] = {}
        for run in runs:
            by_batch.setdefault(run.batch_size, []).append(run)
        for group in by_batch.values():
            base_dir = group[0].run_dir.parent
            cfg = copy.deepcopy(group[0].cfg)
            cfg.trainer.run_dir = str(base_dir)
            grid = ["optimizer.lr=" + ",".join(r.lr for r in group)]
            with tempfile.TemporaryDirectory() as tmp:  # a dry run writes nothing
                config = (Path(tmp) if self.dry_run else base_dir) / "array.yaml"
                save_config(cfg, config)
                sub = submit_array(
                    str(config),
                    [],
                    grid,
                    self.request,
                    dry_run=self.dry_run,
                    max_parallel=self.max_parallel,
                )
            lines.append(sub.describe())
        return lines
