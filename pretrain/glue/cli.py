"""``perceiver glue`` (registered by :func:`add_glue_subcommand`).

    perceiver glue --checkpoint PATH --glue-dir DIR [--tasks rte,mrpc,...|all] [--out DIR]
        [--lrs 1e-4,5e-5,2e-5,1e-5] [--batch-sizes 16,32,64] [--epochs 10 | --max-steps N]
        [--nproc-per-node N] [--no-test] [--collect] [--slurm RESOURCES... [--dry-run]]
        [key=value ...]

The grid trains here, one run after another, unless a :class:`GridSubmitter` is given: the root
``perceiver_cli`` adds ``--slurm`` and passes ``slurm.glue.GlueArrays``, which submits each
task's grid as job arrays (``pretrain`` does not import the scheduler).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pretrain.config import CONFIG_ROOT, ConfigError

if TYPE_CHECKING:
    from pretrain.glue.finetune import GlueRun


class GridSubmitter(Protocol):
    """Runs a task's grid elsewhere (e.g. as Slurm job arrays) instead of training it here."""

    world_size: int  # ranks of each run: the per-rank batch sizes are planned for it
    dry_run: bool  # show what would be submitted; write nothing

    def __call__(self, runs: list[GlueRun]) -> list[str]:
        """Submits one task's runs; returns the lines to print."""
        ...


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def cmd_glue(args: argparse.Namespace, submit: GridSubmitter | None = None) -> int:
    """``perceiver glue``: user errors are reported in one line (exit code 2)."""
    try:
        return _glue(args, submit)
    except ConfigError:
        raise  # reported by main, naming the key
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _glue(args: argparse.Namespace, submit: GridSubmitter | None) -> int:
    from pretrain.glue import finetune as F
    from pretrain.glue.tasks import TASKS, parse_task_list

    tasks = parse_task_list(args.tasks)
    lrs = _csv(args.lrs)
    for lr in lrs:
        float(lr)  # refuse a typo before anything runs
    batch_sizes = tuple(int(b) for b in _csv(args.batch_sizes))
    out = Path(args.out)
    if not args.collect and (not args.checkpoint or not args.glue_dir):
        print("error: --checkpoint and --glue-dir are required", file=sys.stderr)
        return 2
    missing: dict[str, list[str]] = {}
    if args.glue_dir:  # every task's files, before anything trains
        every = args.tasks.strip().lower() == "all"
        tasks, missing = F.available_tasks(args.glue_dir, tasks, not args.no_test, every)
        for name, files in missing.items():
            print(f"skipping {TASKS[name].dir_name}: missing {', '.join(files)}")
    if not args.collect:
        world = args.nproc_per_node if submit is None else submit.world_size
        dry_run = submit is not None and submit.dry_run
        source, pretrained = F.prepare_source(args.checkpoint, out, write=not dry_run)
        grids = [
            F.plan_task(
                task,
                glue_dir=args.glue_dir,
                out_dir=out,
                init_from=source,
                pretrained=pretrained,
                lrs=lrs,
                batch_sizes=batch_sizes,
                epochs=args.epochs,
                max_steps=args.max_steps,
                world_size=world,
                overrides=args.overrides,
                base_config=args.config,
            )
            for task in tasks
        ]
        for runs in grids:
            if submit is not None:
                for line in submit(runs):
                    print(line)
                continue
            for run in runs:
                print(f"{run.task.dir_name}: lr={run.lr} batch={run.batch_size} -> {run.run_dir}")
                F.train_run(run, world)
        if submit is not None:
            no_test = " --no-test" if args.no_test else ""
            print(
                f"when the jobs are done: perceiver glue --collect --out {out} --tasks {args.tasks}"
                f" --glue-dir {args.glue_dir}{no_test}"
            )
            return 0
    results = F.collect(out, tasks, predict_test=not args.no_test, missing_files=missing)
    print((out / "results.md").read_text())
    if args.probe_of:
        from pretrain.glue.probes import report

        scores = {
            name: {**entry["best"]["metrics"], "score": entry["best"]["score"]}
            for name, entry in results["tasks"].items()
        }
        report(args.probe_of, args.probe_step, scores)
    return 0


def add_glue_subcommand(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``glue`` on the ``perceiver`` parser; returns its parser (the root adds the
    ``--slurm`` options to it)."""
    p = sub.add_parser(
        "glue",
        help="fine-tune a checkpoint on GLUE (paper grid), best dev result per task",
        description="Fine-tune on GLUE through the trainer; see docs/glue.md.",
    )
    p.add_argument("overrides", nargs="*", help="fine-tuning overrides, e.g. glue.max_length=512")
    p.add_argument("--checkpoint", help="export dir, HF Perceiver dir, run dir or checkpoint")
    p.add_argument("--glue-dir", help="the GLUE root (<dir>/<TASK>/{train,dev,test}.tsv)")
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola,sst2", help="comma list, or all")
    p.add_argument("--out", default="runs/glue", help="output directory")
    p.add_argument("--config", default=str(CONFIG_ROOT / "glue.yaml"), help="the recipe")
    p.add_argument("--lrs", default=",".join(("1e-4", "5e-5", "2e-5", "1e-5")))
    p.add_argument("--batch-sizes", default="16,32,64", help="global batch sizes")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None, help="steps instead of epochs")
    p.add_argument("--nproc-per-node", type=int, default=1, help="local ranks per run")
    p.add_argument("--no-test", action="store_true", help="skip test-set predictions")
    p.add_argument("--collect", action="store_true", help="only evaluate finished runs")
    p.add_argument("--probe-of", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe-step", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_glue)
    return p
