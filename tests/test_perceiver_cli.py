"""The root module ``perceiver_cli`` (the console script) and ``python -m pretrain.cli``, which is
the same minus the Slurm commands."""

from __future__ import annotations

import pytest
import torch

from perceiver_cli import build_parser, main
from pretrain.export import Pretrained, write_native
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM
from tests.conftest import REPO
from tests.pretrain.test_export import _tiny
from tests.pretrain.test_glue_tasks import write_glue_fixture

COMMANDS = [
    "train", "data", "demo", "submit", "status", "export", "import-hf", "glue",
    "generate", "fill-mask", "eval", "flow",
]  # fmt: skip


def test_every_command_in_the_order_of_perceiver_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == COMMANDS
    glue = sub.choices["glue"].format_help()
    assert "--slurm" in glue and "--max-parallel" in glue and "--job-name" in glue


def test_console_script_and_module_are_installed():
    """``pip install -e .`` maps ``perceiver_cli`` beside the packages (editable finder)."""
    lines = (REPO / "pyproject.toml").read_text().splitlines()  # tomllib needs Python 3.11
    assert 'perceiver = "perceiver_cli:main"' in lines
    assert any(line.startswith('py-modules = ["perceiver_cli"]') for line in lines)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["submit", "c.yaml", "--dry-run"], "perceiver submit"),
        (["status", "runs/x"], "perceiver status"),
        (["glue", "--checkpoint", "x", "--slurm"], "perceiver glue --slurm"),
    ],
)
def test_pretrain_cli_refuses_slurm_commands_naming_perceiver(capsys, argv, named):
    from pretrain.cli import main as pretrain_main

    with pytest.raises(SystemExit) as e:
        pretrain_main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err


def test_glue_slurm_dry_run_prints_one_array_per_batch_size(capsys, tmp_path, monkeypatch):
    """The grid planned by ``pretrain.glue.cli``, submitted by ``slurm.glue`` (a dry run writes
    nothing: no cluster is needed)."""
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-cluster.conf"))
    torch.manual_seed(0)
    mlm = PerceiverMLM(PerceiverIOConfig(**_tiny()))
    mlm.init_weights()
    source = write_native(
        Pretrained("perceiver_io_mlm", _tiny(), mlm.state_dict(), {"name": "byte"}, {}),
        tmp_path / "export",
    )
    out = tmp_path / "glue"
    code = main(
        [
            "glue", "--checkpoint", str(source), "--glue-dir", str(write_glue_fixture(tmp_path)),
            "--out", str(out), "--tasks", "rte", "--lrs", "1e-4,5e-5", "--batch-sizes", "8,16",
            "--max-steps", "3", "--slurm", "--tasks-per-node", "2", "--dry-run",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("#SBATCH --array=0-1") == 2  # two learning rates, per batch size
    assert "#SBATCH --ntasks-per-node=2" in printed
    assert "#   optimizer.lr=1e-4" in printed and "#   optimizer.lr=5e-5" in printed
    assert "when the jobs are done: perceiver glue --collect" in printed
    assert not out.exists()
