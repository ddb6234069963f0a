"""The ``perceiver`` command: thin wrappers that parse, build and run.

perceiver train CONFIG [key.sub=value ...] [--dry-run] [--nproc-per-node N]  (in any order)
perceiver data prepare|inspect ...
perceiver demo [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pretrain.config import Config, ConfigError, check_inputs, load_config


def _describe(cfg: Config, world_size: int) -> str:
    """The resolved config, the generated DeepSpeed config and the model's size."""
    import torch
    import yaml

    from pretrain.ds_config import build_ds_config
    from pretrain.models import build_model

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


def spawn_local(argv: list[str], nproc: int) -> int:
    """Start ``nproc`` local ranks of ``perceiver <argv>`` (like torchrun) and wait for them.

    SIGTERM / SIGUSR1 received by this process are forwarded to every rank so that a preemption
    notice reaches the training loop; if one rank fails the others are terminated.
    """
    from pretrain.distributed import free_port

    port = free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PERCEIVER_SPAWNED_RANK="1",
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "pretrain.cli", *argv], env=env))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                for p in procs:
                    p.wait()
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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
    if args.nproc_per_node and not os.environ.get("PERCEIVER_SPAWNED_RANK"):
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
        return spawn_local(argv, args.nproc_per_node)

    from pretrain.trainer import train

    result = train(cfg, stop_at_step=args.stop_at_step)
    if int(os.environ.get("RANK", "0")) == 0:
        path = Path(result.run_dir) / "summary.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
        tmp.replace(path)
        print(f"{result.status} at step {result.state.step}; checkpoint: {result.checkpoint}")
    return 0


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
