"""Where and how many: Slurm submission, preemption/requeue and status (docs/slurm.md).

* :mod:`slurm.cluster`: the job request, the cluster (``scontrol``), validation.
* :mod:`slurm.launcher`: ``TrainJob`` (what every task runs) and submission with submitit.
* :mod:`slurm.lifecycle`: the batch script's start/end hooks (event log, requeue decisions).
* :mod:`slurm.status`: ``perceiver status``.
* :mod:`slurm.glue`: ``perceiver glue --slurm`` (each task's grid as job arrays).
* :mod:`slurm.cli`: ``perceiver submit`` / ``perceiver status`` and glue's ``--slurm`` options.
* ``slurm/templates/train.sbatch``: plain sbatch + srun + ``perceiver train``.
"""
