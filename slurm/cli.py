"""``perceiver submit``, ``perceiver status`` and the Slurm half of ``perceiver glue``: thin
wrappers over :mod:`slurm.launcher`, :mod:`slurm.glue` and :mod:`slurm.status` (the root module
``perceiver_cli`` registers them).

    perceiver submit CONFIG [key=value ...] --nodes N --gpus-per-node G [--tasks-per-node T]
        [--cpus-per-task C --mem M --partition P --account A --qos Q --time HH:MM:SS
         --constraint F --exclude NODES] [--array KEY=V1,V2 ...] [--dry-run]
    perceiver status RUN_DIR [--json]
    perceiver glue ... --slurm [the resources of submit] [--max-parallel N] [--dry-run]
"""

from __future__ import annotations

import argparse
import sys

from slurm.cluster import JobRequest, SlurmUnavailable, SubmitError


def add_resource_options(g: argparse._ActionsContainer, job_name: str) -> None:
    """The resource options of a job (``submit`` and ``glue --slurm`` share them), read back by
    :func:`request_from_args`."""
    g.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    g.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one task each")
    g.add_argument(
        "--tasks-per-node",
        type=int,
        default=None,
        help="CPU ranks per node when --gpus-per-node is 0 (default 1)",
    )
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task")
    g.add_argument("--mem", default=None, help="memory per node, e.g. 256G (0: all)")
    g.add_argument("--partition", default=None, help="partition (default: the cluster's default)")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument(
        "--time",
        default=None,
        help="time limit, HH:MM:SS or D-HH:MM:SS (default: the partition's limit, or 24:00:00)",
    )
    g.add_argument("--constraint", default=None, help="node features, as sbatch --constraint")
    g.add_argument("--exclude", default=None, help="nodes to avoid, e.g. gpu[03-04]")
    g.add_argument("--job-name", default=job_name)
    g.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        help="seconds before the time limit at which USR2 asks the job to checkpoint "
        "and requeue (default 120)",
    )


def request_from_args(args: argparse.Namespace) -> JobRequest:
    """The :class:`JobRequest` described by :func:`add_resource_options`' options."""
    return JobRequest(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        time=args.time,
        constraint=args.constraint,
        exclude=args.exclude,
        job_name=args.job_name,
        signal_delay_s=args.signal_delay,
    )


def cmd_submit(args: argparse.Namespace) -> int:
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from pretrain.config import load_config
    from slurm.launcher import submit, submit_array

    request = request_from_args(args)
    try:
        if args.array:
            sub = submit_array(
                args.config,
                args.overrides,
                args.array,
                request,
                dry_run=args.dry_run,
                max_parallel=args.max_parallel,
            )
        else:
            sub = submit(load_config(args.config, args.overrides), request, dry_run=args.dry_run)
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SlurmUnavailable as e:
        print(f"error: {e} (--dry-run renders the job without a cluster)", file=sys.stderr)
        return 1
    except (FailedJobError, FailedSubmissionError) as e:
        print(f"error: sbatch refused the job: {e}", file=sys.stderr)
        return 1
    print(sub.describe())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from slurm.status import format_status, gather_status

    try:
        st = gather_status(args.run_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(st.to_json() if args.json else format_status(st))
    return 0


def cmd_glue(args: argparse.Namespace) -> int:
    """``perceiver glue``: trains here, or with ``--slurm`` submits the grid as job arrays."""
    from pretrain.glue.cli import cmd_glue as run_glue
    from slurm.glue import GlueArrays

    if not args.slurm:
        return run_glue(args)
    try:
        arrays = GlueArrays(request_from_args(args), args.dry_run, args.max_parallel)
        return run_glue(args, arrays)
    except (SubmitError, SlurmUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def add_glue_slurm_options(p: argparse.ArgumentParser) -> None:
    """Give ``perceiver glue`` (built by ``pretrain.glue.cli``) its ``--slurm`` options."""
    g = p.add_argument_group("Slurm (with --slurm; as perceiver submit)")
    g.add_argument("--slurm", action="store_true", help="submit a job array per task and batch")
    add_resource_options(g, job_name="perceiver-glue")
    g.add_argument("--max-parallel", type=int, default=None, help="at most this many runs at once")
    g.add_argument("--dry-run", action="store_true", help="print the batch scripts only")
    p.set_defaults(func=cmd_glue)


def add_slurm_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``submit`` and ``status`` on the ``perceiver`` parser's subcommands."""
    p = sub.add_parser(
        "submit",
        help="submit training to Slurm (submitit); requeues itself on preemption",
        description="Submit a pretraining job to Slurm: one task per GPU (or --tasks-per-node CPU "
        "ranks), job folder and config snapshot under RUN_DIR/slurm, automatic requeue and exact "
        "resume on preemption or time limit (see docs/slurm.md).",
    )
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100")
    add_resource_options(p.add_argument_group("resources"), job_name="perceiver")
    p.add_argument(
        "--array",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="sweep: one array task per point of the grid of these overrides "
        "(repeatable); run i trains in RUN_DIR/<point>",
    )
    p.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        help="with --array: at most this many runs at once",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the batch script; submit nothing"
    )
    p.set_defaults(func=cmd_submit)

    s = sub.add_parser("status", help="Slurm state, last step, last checkpoint, requeues of a run")
    s.add_argument("run_dir", help="the run's trainer.run_dir")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)
