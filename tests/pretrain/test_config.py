"""Config loading: presets, overrides, refusal of bad input naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import ConfigError, apply_overrides, config_from_dict, load_config, save_config
from pretrain.ds_config import build_ds_config
from pretrain.models import MODEL_TYPES

REPO = Path(__file__).resolve().parents[2]


def _base(**extra):
    data = {
        "model": {"preset": "perceiver_io_mlm_tiny"},
        "data": {"dir": "/tmp/somewhere"},
        "optimizer": {"name": "adamw"},
    }
    data.update(extra)
    return data


def test_all_shipped_configs_load():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "no configs shipped"
    for path in configs:
        cfg = load_config(path, ["data.dir=/tmp/x"])
        assert cfg.model["type"] in MODEL_TYPES, path
        assert cfg.objective  # some objective trains every shipped model


def test_overrides_are_typed_and_nested():
    cfg = config_from_dict(
        _base(),
        [
            "trainer.max_steps=7",
            "optimizer.lr=3e-4",
            "trainer.precision=fp32",
            "model.num_latents=16",
            "logging.tensorboard=false",
        ],
    )
    assert cfg.trainer.max_steps == 7
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.trainer.precision == "fp32"
    assert cfg.model["num_latents"] == 16
    assert cfg.logging.tensorboard is False


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_stepz=3", "trainer.max_stepz"),
        ("trainer.max_steps=three", "trainer.max_steps"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("trainer.zero_stage=4", "trainer.zero_stage"),
        ("data.mask_unit=span", "data.mask_unit"),
        ("optimizer.betas=[0.9]", "optimizer.betas"),
        ("model.num_latentz=3", "model.num_latentz"),
        ("model.type=gpt", "model.type"),
        ("bogus.key=1", "bogus"),
        ("trainer.activation_checkpointing=3", "trainer.activation_checkpointing"),
    ],
)
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        config_from_dict(_base(), [override])


def test_lamb_with_zero_is_refused_with_reason():
    with pytest.raises(ConfigError, match="optimizer.name"):
        config_from_dict(_base(), ["optimizer.name=lamb", "trainer.zero_stage=2"])
    cfg = config_from_dict(_base(), ["optimizer.name=lamb", "trainer.zero_stage=0"])
    assert cfg.optimizer.name == "lamb"


def test_missing_data_dir_refused():
    data = _base()
    del data["data"]
    with pytest.raises(ConfigError, match="data.dir"):
        config_from_dict(data)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: x\n trainer: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+"):
        load_config(bad)


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="available: .*perceiver_io_mlm_tiny"):
        config_from_dict(_base(model={"preset": "nope"}))


def test_saved_config_round_trips(tmp_path):
    cfg = config_from_dict(_base(), ["trainer.max_steps=11"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_apply_overrides_does_not_mutate_input():
    data = {"trainer": {"max_steps": 1}}
    out = apply_overrides(data, ["trainer.max_steps=2"])
    assert data["trainer"]["max_steps"] == 1 and out["trainer"]["max_steps"] == 2


def test_ds_config_generated_from_typed_config():
    cfg = config_from_dict(
        _base(),
        [
            "trainer.micro_batch_size=4",
            "trainer.grad_accum_steps=3",
            "trainer.zero_stage=3",
            "trainer.precision=bf16",
            "optimizer.grad_clip=0.5",
        ],
    )
    ds = build_ds_config(cfg, world_size=2, on_gpu=False)
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5


def test_dry_run_prints_config_and_param_count(tmp_path):
    from tests.conftest import run_perceiver

    cfg = REPO / "configs" / "paper_mlm.yaml"
    out = run_perceiver(["train", str(cfg), "data.dir=/tmp/x", "--dry-run"]).stdout
    assert "# resolved config" in out and "zero_optimization" in out
    assert "201." in out and "parameters" in out


def test_cli_refuses_bad_config_before_work(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.cli",
            "train",
            str(REPO / "configs" / "demo_mlm.yaml"),
            f"trainer.run_dir={tmp_path / 'run'}",
            "data.dir=/tmp/x",
            "trainer.max_stepz=3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "trainer.max_stepz" in proc.stderr
    assert not (tmp_path / "run").exists()
