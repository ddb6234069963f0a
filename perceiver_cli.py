"""The ``perceiver`` command: every subcommand, Slurm's included (the console script's module).

This root module sits above ``data_pipeline``, ``pretrain`` and ``slurm`` and is the only place
that joins them: each package registers its own subcommands, and the Slurm half of
``perceiver glue`` (``--slurm``: job arrays) is wired in here, so ``pretrain`` never imports
``slurm``. ``python -m perceiver_cli ...`` is the same as ``perceiver ...``.
"""

from __future__ import annotations

import argparse
import sys

from pretrain.cli import add_data_command, add_train_subcommand, new_parser, run
from pretrain.demo import add_demo_subcommand
from pretrain.export_cli import add_export_subcommands
from pretrain.glue.cli import add_glue_subcommand
from pretrain.inference.cli import add_inference_subcommands
from slurm.cli import add_glue_slurm_options, add_slurm_subcommands


def _probe_submitter(cfg):
    """``slurm.probes.probe_submitter``, imported when a run has Slurm probes (it loads torch)."""
    from slurm.probes import probe_submitter

    return probe_submitter(cfg)


def build_parser() -> argparse.ArgumentParser:
    """The ``perceiver`` parser (subcommands listed in this order by ``perceiver --help``)."""
    parser, sub = new_parser()
    add_train_subcommand(sub, _probe_submitter, module="perceiver_cli")  # train
    add_data_command(sub)  # data prepare|inspect|train-spm|prepare-video
    add_demo_subcommand(sub)  # demo
    add_slurm_subcommands(sub)  # submit, status
    add_export_subcommands(sub)  # export, import-hf
    add_glue_slurm_options(add_glue_subcommand(sub))  # glue [--slurm ...]
    add_inference_subcommands(sub)  # generate, fill-mask, eval, flow
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script ``perceiver``."""
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
