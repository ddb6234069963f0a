"""The ``perceiver`` command: thin wrappers that parse, build and run.

perceiver train CONFIG [key.sub=value ...] [--dry-run] [--nproc-per-node N]  (in any order)
perceiver data prepare|inspect ...
perceiver demo [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pretrain.config import Config, ConfigError, check_inputs, load_config
from pretrain.train.signals import EXIT_INTERRUPTED, EXIT_PREEMPTED, StopSignal


def _describe(cfg: Config, world_size: int) -> str:
    """The resolved config, the generated DeepSpeed config and the model's size."""
    import torch
    import yaml

    from pretrain.models import build_model
    from pretrain.train.ds_config import build_ds_config

    model_cfg = cfg.model_config()
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
        f"{model_cfg.flops_per_sample() / 1e9:.2f} GFLOP per sample (forward + backward)",
    ]
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
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
        return dist_utils.spawn_local(argv, args.nproc_per_node)

    from pretrain.glue.probes import probe_hooks
    from pretrain.train.trainer import train

    try:
        submit = None
        if cfg.probes.every and cfg.probes.mode == "slurm":  # moves to the root CLI (perceiver_cli)
            from slurm.probes import probe_submitter

            submit = probe_submitter(cfg)
        hooks = probe_hooks(cfg, rank == "0", submit)
        result = train(cfg, hooks=hooks, stop_at_step=args.stop_at_step, stopper=stopper)
    except KeyboardInterrupt:
        print("perceiver: stopped at once (second Ctrl-C), without a checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    if int(os.environ.get("RANK", "0")) == 0:
        path = Path(result.run_dir) / "summary.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
        tmp.replace(path)
        print(f"{result.status} at step {result.state.step}; checkpoint: {result.checkpoint}")
    # No rank exits before the summary is written: a non-zero exit makes `srun
    # --kill-on-bad-exit` (and the local launcher) end the other ranks.
    dist_utils.barrier()
    return EXIT_PREEMPTED if result.status == "preempted" else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceiver", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="pretrain a model described by a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=100")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc-per-node", type=int, default=0, help="spawn N local ranks")
    p.add_argument("--stop-at-step", type=int, default=None, help="checkpoint and stop early")
    p.set_defaults(func=cmd_train)

    from data_pipeline.cli import add_data_subcommands

    data = sub.add_parser("data", help="build and inspect datasets")
    add_data_subcommands(data.add_subparsers(dest="data_command", required=True))

    from pretrain.demo import add_demo_subcommand

    add_demo_subcommand(sub)
    from slurm.cli import add_slurm_subcommands

    add_slurm_subcommands(sub)
    from pretrain.glue.cli import add_glue_subcommands  # export, import-hf, glue

    add_glue_subcommands(sub)
    from pretrain.inference.cli import add_inference_subcommands  # generate, fill-mask, eval

    add_inference_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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


if __name__ == "__main__":
    sys.exit(main())
