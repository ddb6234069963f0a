"""The batch scripts: what submitit is asked to write for given options, the plain template, the
sweep grid, and the CLI's dry run and refusals."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from slurm.cluster import JobRequest, SubmitError, executor_parameters
from slurm.launcher import expand_grid, hook_lines, point_name, sbatch_text
from tests.conftest import REPO
from tests.slurm.conftest import slurm_env

PY = shlex.quote(sys.executable)


def _sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_sbatch_for_a_multi_node_gpu_job(tmp_path):
    folder = tmp_path / "run" / "slurm"
    req = JobRequest(
        nodes=4,
        gpus_per_node=8,
        cpus_per_task=10,
        mem="480G",
        partition="gpu",
        account="proj",
        qos="high",
        time="01:30:00",
        constraint="a100",
        exclude="gpu[07-08]",
        job_name="mlm",
        signal_delay_s=300,
    )
    params = executor_parameters(req, hook_lines(PY, ["--run-dir", str(tmp_path / "run")]))
    text = sbatch_text(params, folder, PY)
    assert _sbatch_lines(text) == [
        "#SBATCH --account=proj",
        "#SBATCH --constraint=a100",
        "#SBATCH --cpus-per-task=10",
        f"#SBATCH --error={folder}/%j_0_log.err",
        "#SBATCH --exclude='gpu[07-08]'",  # shell-quoted by submitit; sbatch unquotes
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --job-name=mlm",
        "#SBATCH --mem=480G",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",  # one task per GPU
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={folder}/%j_0_log.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --qos=high",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@300",  # the warning that makes the job checkpoint and requeue
        "#SBATCH --time=90",
        "#SBATCH --wckey=submitit",
    ]
    body = text[text.index("# setup") :]
    run_dir = shlex.quote(str(tmp_path / "run"))
    unset = next(line for line in body.splitlines() if line.startswith("unset "))
    assert sorted(unset.split()[1:]) == sorted(
        ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
    )
    expected_order = [
        unset,
        f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"{PY} -m slurm.lifecycle start --run-dir {run_dir} || exit 1",
        "export SUBMITIT_EXECUTOR=slurm",
        f"srun --unbuffered --output {folder}/%j_%t_log.out --error {folder}/%j_%t_log.err "
        f"--kill-on-bad-exit=1 {PY} -u -m submitit.core._submit {folder}",
        "PERCEIVER_EXIT=$?",
        f"{PY} -m slurm.lifecycle end --run-dir {run_dir} --exit-code $PERCEIVER_EXIT",
    ]
    positions = [body.index(line) for line in expected_order]
    assert positions == sorted(positions)


def test_sbatch_for_cpu_ranks_and_an_array(tmp_path):
    folder = tmp_path / "slurm"
    req = JobRequest(nodes=2, tasks_per_node=4, time="2-00:00:00")
    params = executor_parameters(req, hook_lines(PY, ["--sweep", str(folder / "sweep.json")]))
    params["array_parallelism"] = 2
    lines = _sbatch_lines(sbatch_text(params, folder, PY, array_size=6))
    assert "#SBATCH --array=0-5%2" in lines
    assert "#SBATCH --ntasks-per-node=4" in lines and "#SBATCH --time=2880" in lines
    assert f"#SBATCH --output={folder}/%A_%a_0_log.out" in lines
    assert not [line for line in lines if "gpus" in line or "partition" in line]


def test_grid_expansion():
    grid = expand_grid(["optimizer.lr=1e-3,3e-4", "trainer.seed=0,1,2"])
    assert len(grid) == 6
    assert grid[0] == ["optimizer.lr=1e-3", "trainer.seed=0"]
    assert grid[-1] == ["optimizer.lr=3e-4", "trainer.seed=2"]
    assert point_name(grid[1]) == "lr=1e-3_seed=1"
    assert point_name(["data.dir=/x/y"]) == "dir=-x-y"
    for bad in (["optimizer.lr"], ["optimizer.lr="], ["=1,2"], ["a=1", "a=2"], ["lr=1,,2"]):
        with pytest.raises(SubmitError, match="^--array:"):
            expand_grid(bad)


def test_template_is_valid_bash_running_srun_perceiver_train():
    template = REPO / "slurm" / "templates" / "train.sbatch"
    subprocess.run(["bash", "-n", str(template)], check=True)
    text = template.read_text()
    assert "#SBATCH --signal=USR2@" in text and "#SBATCH --requeue" in text
    assert 'srun --kill-on-bad-exit=1 $PERCEIVER train "${ARGS[@]:1}"' in text
    assert '-m slurm.lifecycle start "$@"' in text
    assert '-m slurm.lifecycle end --run-dir "$RUN_DIR" --exit-code "$CODE"' in text


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "perceiver_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=slurm_env(),
        cwd=REPO,
        check=False,
    )


def test_cli_dry_run_prints_the_script(tmp_path):
    """Works on a laptop too: without a cluster the script is rendered and the checks noted."""
    run_dir = tmp_path / "run"
    proc = _cli(
        "submit",
        "configs/tiny_mlm.yaml",
        "data.dir=shards",
        f"trainer.run_dir={run_dir}",
        "--nodes",
        "2",
        "--tasks-per-node",
        "2",
        "--time",
        "00:30:00",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --nodes=2" in proc.stdout and "#SBATCH --ntasks-per-node=2" in proc.stdout
    assert "#SBATCH --time=30" in proc.stdout
    assert f"slurm.lifecycle start --run-dir {run_dir}" in proc.stdout
    assert "dry run: 2 node(s) x 2 task(s) on CPU" in proc.stdout
    assert not run_dir.exists()  # a dry run writes nothing


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """``perceiver submit|status`` in this process (the functions the CLI calls)."""
    from perceiver_cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_refuses_more_tasks_than_gpus(capsys):
    code, _, err = _main(
        capsys,
        "submit",
        str(REPO / "configs" / "tiny_mlm.yaml"),
        "data.dir=shards",
        "trainer.device=cuda",
        "--gpus-per-node",
        "2",
        "--tasks-per-node",
        "4",
    )
    assert code == 2
    assert err.startswith("error: --tasks-per-node: 4 tasks per node but only --gpus-per-node 2")


def test_cli_refuses_config_errors_and_bad_grids(capsys):
    config = str(REPO / "configs" / "tiny_mlm.yaml")
    code, _, err = _main(capsys, "submit", config, "trainer.max_stepz=3", "--dry-run")
    assert code == 2 and "trainer.max_stepz: unknown key" in err
    code, _, err = _main(
        capsys, "submit", config, "data.dir=shards", "--array", "optimizer.lr", "--dry-run"
    )
    assert code == 2 and "--array: expected key=v1,v2,..." in err


def test_cli_dry_run_of_a_sweep(capsys, tmp_path):
    code, out, err = _main(
        capsys,
        "submit",
        str(REPO / "configs" / "tiny_mlm.yaml"),
        "data.dir=shards",
        f"trainer.run_dir={tmp_path / 'sweep'}",
        "--array",
        "optimizer.lr=1e-3,3e-4",
        "--array",
        "trainer.seed=0,1",
        "--max-parallel",
        "2",
        "--dry-run",
    )
    assert code == 0, err
    assert "#SBATCH --array=0-3%2" in out
    assert "#   optimizer.lr=3e-4 trainer.seed=1" in out
    assert "slurm.lifecycle start --sweep" in out and not (tmp_path / "sweep").exists()


def test_status_of_a_run_without_slurm(capsys, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000004" / "COMPLETE").write_text("{}")
    (run_dir / "checkpoints" / "step_00000006").mkdir()  # incomplete: invisible
    (run_dir / "metrics.jsonl").write_text('{"step": 5, "train/loss": 2.0}\n{"step": 6, "train/lo')
    code, out, err = _main(capsys, "status", str(run_dir))
    assert code == 0, err
    assert "last step:        5\n" in out
    assert f"last checkpoint:  step 4 ({run_dir}/checkpoints/step_00000004)" in out
    assert "slurm job:        no Slurm job recorded" in out
    assert _main(capsys, "status", str(tmp_path / "nope"))[0] == 2
