"""``perceiver export``, ``perceiver import-hf`` and ``perceiver glue`` (registered in
``pretrain.cli`` by :func:`add_glue_subcommands`).

    perceiver export RUN_DIR[/checkpoints/step_N] --output DIR [--dtype fp32|bf16]
        [--format native|hf] [--tokenizer byte|spm:PATH]
    perceiver import-hf HF_DIR --output DIR [--dtype fp32|bf16]
    perceiver glue --checkpoint PATH --glue-dir DIR [--tasks rte,mrpc,...|all] [--out DIR]
        [--lrs 1e-4,5e-5,2e-5,1e-5] [--batch-sizes 16,32,64] [--epochs 10 | --max-steps N]
        [--nproc-per-node N] [--no-test] [--collect] [--slurm RESOURCES... [--dry-run]]
        [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pretrain.config import CONFIG_ROOT, ConfigError

if TYPE_CHECKING:
    from pretrain.glue.finetune import GlueRun
    from slurm.cluster import JobRequest


def cmd_export(args: argparse.Namespace) -> int:
    """``perceiver export``: a checkpoint or export -> a native or HF directory."""
    from pretrain.export import export

    try:
        out = export(args.source, args.output, args.dtype, args.format, args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.source} -> {out} ({args.format}, {args.dtype})")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    """``perceiver import-hf``: an HF ``PerceiverForMaskedLM`` directory -> a native export."""
    from pretrain.export import read_hf, write_native

    try:
        out = write_native(read_hf(args.source), args.output, args.dtype)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"imported {args.source} -> {out}; fine-tune with perceiver glue --checkpoint {out}")
    return 0


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def cmd_glue(args: argparse.Namespace) -> int:
    """``perceiver glue``: user errors are reported in one line (exit code 2)."""
    from slurm.cluster import SlurmUnavailable, SubmitError

    try:
        return _glue(args)
    except ConfigError:
        raise  # reported by main, naming the key
    except (FileNotFoundError, ValueError, SubmitError, SlurmUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _glue(args: argparse.Namespace) -> int:
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
        world = args.nproc_per_node
        request = None
        if args.slurm:
            from slurm.cli import request_from_args

            request = request_from_args(args)
            world = request.num_tasks
        dry_run = request is not None and args.dry_run
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
            if request is not None:
                for line in submit_runs(runs, request, args.dry_run, args.max_parallel):
                    print(line)
                continue
            for run in runs:
                print(f"{run.task.dir_name}: lr={run.lr} batch={run.batch_size} -> {run.run_dir}")
                F.train_run(run, world)
        if request is not None:
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


def submit_runs(
    runs: list[GlueRun], request: JobRequest, dry_run: bool, max_parallel: int | None
) -> list[str]:
    """One Slurm job array per batch size of a task's grid (over the learning rates).

    Steps depend on the batch size (epochs -> steps), so a batch size is an array, not an axis.
    """
    from pretrain.config import save_config
    from slurm.launcher import submit_array

    lines = []
    by_batch: dict[int, list] = {}
    for run in runs:
        by_batch.setdefault(run.batch_size, []).append(run)
    for group in by_batch.values():
        base_dir = group[0].run_dir.parent
        cfg = copy.deepcopy(group[0].cfg)
        cfg.trainer.run_dir = str(base_dir)
        grid = ["optimizer.lr=" + ",".join(r.lr for r in group)]
        with tempfile.TemporaryDirectory() as tmp:  # a dry run writes nothing
            config = (Path(tmp) if dry_run else base_dir) / "array.yaml"
            save_config(cfg, config)
            sub = submit_array(
                str(config), [], grid, request, dry_run=dry_run, max_parallel=max_parallel
            )
        lines.append(sub.describe())
    return lines


def _add_slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Slurm (with --slurm; as perceiver submit)")
    g.add_argument("--slurm", action="store_true", help="submit a job array per task and batch")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0)
    g.add_argument("--tasks-per-node", type=int, default=None)
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem", default=None)
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--time", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--exclude", default=None)
    g.add_argument("--job-name", default="perceiver-glue")
    g.add_argument("--signal-delay", type=int, default=120)
    g.add_argument("--max-parallel", type=int, default=None)
    g.add_argument("--dry-run", action="store_true", help="print the batch scripts only")


def add_glue_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``export``, ``import-hf`` and ``glue`` on the ``perceiver`` parser."""
    p = sub.add_parser(
        "export",
        help="consolidate a checkpoint into model.safetensors + config.json (or an HF dir)",
    )
    p.add_argument("source", help="a run directory (its newest checkpoint) or a checkpoint")
    p.add_argument("--output", required=True, help="the directory to write")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--format", choices=["native", "hf"], default="native")
    p.add_argument("--tokenizer", default=None, help="override: byte or spm:PATH")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-hf", help="an HF PerceiverForMaskedLM directory -> a native export")
    p.add_argument("source", help="a directory saved by transformers (config.json + weights)")
    p.add_argument("--output", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(func=cmd_import_hf)

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
    _add_slurm_options(p)
    p.set_defaults(func=cmd_glue)


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.glue.cli ...`` (the same as ``perceiver ...``)."""
    from pretrain.cli import main as perceiver_main

    return perceiver_main(argv)


if __name__ == "__main__":
    sys.exit(main())
