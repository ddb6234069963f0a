"""``perceiver train``, and the ``perceiver`` commands that need no scheduler.

perceiver train CONFIG [key.sub=value ...] [--dry-run] [--nproc-per-node N]  (in any order)

The console script is the root module ``perceiver_cli`` (every command, Slurm's included).
``python -m pretrain.cli`` is the same minus ``submit``, ``status`` and ``glue --slurm``: it is
what ``torchrun -m pretrain.cli train`` starts on every rank. It cannot submit
``probes.mode=slurm`` probes (that needs ``slurm``): ``perceiver train`` and
``python -m perceiver_cli train`` can.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from data_pipeline.cli import add_data_subcommands
from data_pipeline.files import atomic_write_json
from pretrain.config import Config, ConfigError, check_inputs, load_config
from pretrain.demo import add_demo_subcommand
from pretrain.export_cli import add_export_subcommands
from pretrain.glue.cli import add_glue_subcommand
from pretrain.inference.cli import add_inference_subcommands
from pretrain.train.signals import EXIT_INTERRUPTED, EXIT_PREEMPTED, StopSignal

if TYPE_CHECKING:
    from pretrain.glue.probes import Submitter


def _describe(cfg: Config, world_size: int) -> str:
    """The resolved config, the generated DeepSpeed config and the model's size."""
    import torch
    import yaml

    from pretrain.models import build_model
    from pretrain.train.ds_config import build_ds_config

    model_cfg = cfg.model
    with torch.device("meta"):
        model = build_model(cfg.model_type, model_cfg)
    n = sum(p.numel() for p in model.parameters())
    ds = build_ds_config(cfg, world_size, on_gpu=cfg.trainer.device == "cuda")
    lines = [
        "# resolved config",
        cfg.to_yaml().rstrip(),
        f"# DeepSpeed config (world size {world_size})",
        yaml.safe_dump(ds, sort_keys=False).rstrip(),
        f"# model: {cfg.model_type}, {n:,} parameters ({n / 1e6:.1f}M), "
        f"{cfg.objective.flops_per_sample(model_cfg) / 1e9:.2f} GFLOP per sample "
        "(forward + backward)",
    ]
    return "\n".join(lines)


def cmd_train(
    args: argparse.Namespace,
    probe_submitter: Callable[[Config], Submitter] | None = None,
    module: str = "pretrain.cli",
) -> int:
    """``perceiver train``: check, then spawn ranks or train in this process.

    Args:
        probe_submitter: Builds what starts ``probes.mode=slurm`` probes as Slurm jobs (the
            console script passes ``slurm.probes.probe_submitter``; ``pretrain`` knows no Slurm).
        module: What ``--nproc-per-node`` ranks run (``python -m MODULE train ...``), so that
            they are launched the way this process was and get the same ``probe_submitter``.
    """
    try:
        cfg = load_config(args.config, args.overrides)
        check_inputs(cfg)  # data, resume and init_from paths: before any rank or file exists
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        world = args.nproc_per_node or int(os.environ.get("WORLD_SIZE", "1"))
        print(_describe(cfg, world))
        return 0
    spawn = args.nproc_per_node and not os.environ.get("PERCEIVER_SPAWNED_RANK")
    # A rank owns its stop signals from here on: one arriving during the slow start-up is kept
    # and acted on at the first step boundary (the launcher only forwards them).
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    stopper = None if spawn else StopSignal(announce=rank == "0")
    from pretrain.train import distributed as dist_utils

    if spawn:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "SLURM_PROCID" not in os.environ:
            print(
                "error: --nproc-per-node spawns its own ranks, but this process was already "
                f"started by a launcher (RANK={os.environ['RANK']}, WORLD_SIZE="
                f"{os.environ['WORLD_SIZE']}); drop --nproc-per-node or the launcher",
                file=sys.stderr,
            )
            return 2
        argv = ["train", args.config, *args.overrides]
        if args.stop_at_step is not None:
            argv += ["--stop-at-step", str(args.stop_at_step)]
        return dist_utils.spawn_local(argv, args.nproc_per_node, module=module)

    from pretrain.glue.probes import probe_hooks
    from pretrain.train.trainer import train

    try:
        slurm_probes = cfg.probes.every and cfg.probes.mode == "slurm"
        submit = probe_submitter(cfg) if slurm_probes and probe_submitter else None
        hooks = probe_hooks(cfg, rank == "0", submit)
        result = train(cfg, hooks=hooks, stop_at_step=args.stop_at_step, stopper=stopper)
    except KeyboardInterrupt:
        print("perceiver: stopped at once (second Ctrl-C), without a checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(Path(result.run_dir) / "summary.json", result.to_dict())
        print(f"{result.status} at step {result.state.step}; checkpoint: {result.checkpoint}")
    # No rank exits before the summary is written: a non-zero exit makes `srun
    # --kill-on-bad-exit` (and the local launcher) end the other ranks.
    dist_utils.barrier()
    return EXIT_PREEMPTED if result.status == "preempted" else 0


def new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The bare ``perceiver`` parser and its subcommands, for the groups to register on."""
    description = "The ``perceiver`` command: thin wrappers that parse, build and run."
    parser = argparse.ArgumentParser(prog="perceiver", description=description)
    return parser, parser.add_subparsers(dest="command", required=True)


def add_train_subcommand(
    sub: argparse._SubParsersAction,
    probe_submitter: Callable[[Config], Submitter] | None = None,
    module: str = "pretrain.cli",
) -> None:
    """Register ``train`` on the ``perceiver`` parser (arguments: see :func:`cmd_train`)."""
    p = sub.add_parser("train", help="pretrain a model described by a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc-per-node", type=int, default=0, help="spawn N local ranks")
    p.add_argument("--stop-at-step", type=int, default=None, help="checkpoint and stop early")
    train = functools.partial(cmd_train, probe_submitter=probe_submitter, module=module)
    p.set_defaults(func=train)


def add_data_command(sub: argparse._SubParsersAction) -> None:
    """Register ``data`` (``data_pipeline.cli``'s subcommands) on the ``perceiver`` parser."""
    data = sub.add_parser("data", help="build and inspect datasets")
    add_data_subcommands(data.add_subparsers(dest="data_command", required=True))


def build_parser() -> argparse.ArgumentParser:
    """``perceiver`` without the Slurm commands (``perceiver_cli.build_parser`` has them all)."""
    parser, sub = new_parser()
    add_train_subcommand(sub)
    add_data_command(sub)
    add_demo_subcommand(sub)
    add_export_subcommands(sub)
    add_glue_subcommand(sub)
    add_inference_subcommands(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command; a config error is one line."""
    args, extra = parser.parse_known_args(argv)
    # argparse fills a `nargs="*"` positional from the first run of positionals only, so
    # overrides after a flag (`train CFG --nproc-per-node 2 key=val`) arrive here
    if extra:
        flags = [a for a in extra if a.startswith("-")]
        if flags or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(flags or extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


SLURM_COMMANDS = ("submit", "status")


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.cli ...``: refuses the Slurm commands, naming ``perceiver``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in SLURM_COMMANDS or (command == "glue" and "--slurm" in argv):
        what = f"{command} --slurm" if command == "glue" else command
        parser.error(
            f"`{what}` needs Slurm, which `python -m pretrain.cli` leaves out: "
            f"run `perceiver {what} ...` (or `python -m perceiver_cli {what} ...`)"
        )
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
