"""GLUE probes as Slurm jobs: the submitter a launcher hands ``pretrain.glue.probes``.

``pretrain`` does not import ``slurm``, so with ``probes.mode=slurm`` whoever launches training
(the ``perceiver`` console script, :class:`slurm.launcher.TrainJob`) builds the submitter here and
passes it on::

    hooks = probe_hooks(cfg, is_main, probe_submitter(cfg) if cfg.probes.mode == "slurm" else None)

Each probe is a one-task job with the resources of ``probes.slurm``, not requeued and not waited
for; it runs without the training job's rank and Slurm variables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pretrain.glue.probes import STRIP_VARS, child_env
from slurm.cluster import JobRequest, executor_parameters


def probe_submitter(cfg: Any) -> Callable[[list[str], Path, int], str]:
    """``submit(command, out_dir, step) -> job id``: submits ``command`` as the probe of ``step``
    (submitit's files under ``out_dir/slurm``).

    Raises (from ``submit``):
        SubmitError: If ``probes.slurm`` is not a valid request (``slurm.cluster.JobRequest``).
    """
    settings = dict(cfg.probes.slurm)

    def submit(command: list[str], out_dir: Path, step: int) -> str:
        import submitit

        request = JobRequest(**{"job_name": f"glue-probe-{step}", **settings})
        request.check()
        root = str(Path(__file__).resolve().parents[1])  # holds the pretrain and slurm packages
        setup = [
            "unset " + " ".join(STRIP_VARS),
            f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}",
        ]
        params = executor_parameters(request, (setup, []))
        params.pop("additional_parameters", None)  # a probe is not requeued
        executor = submitit.SlurmExecutor(folder=Path(out_dir) / "slurm", max_num_timeout=0)
        executor.update_parameters(**params)
        job = executor.submit(submitit.helpers.CommandFunction(command, env=child_env()))
        return job.job_id

    return submit
