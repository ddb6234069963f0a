"""Config loading: presets, overrides, refusal of bad input naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import ConfigError, apply_overrides, config_from_dict, load_config, save_config
from pretrain.models import MODEL_TYPES
from pretrain.train.ds_config import build_ds_config

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
        assert isinstance(cfg.model, MODEL_TYPES[cfg.model_type][0]), path
        assert cfg.model.type == cfg.model_type and cfg.to_dict()["model"]["type"] == cfg.model_type
        assert cfg.model_type in cfg.objective.model_types  # its objective trains it


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
    assert cfg.model.num_latents == 16
    assert cfg.logging.tensorboard is False


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_stepz=3", "trainer.max_stepz"),
        ("trainer.max_steps=three", "trainer.max_steps"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("trainer.zero_stage=4", "trainer.zero_stage"),
        ("objective.mask_unit=span", "objective.mask_unit"),
        ("objective.mask_prob=1.5", "objective.mask_prob"),
        ("objective.mask_probz=0.1", "objective.mask_probz"),
        ("objective.name=ar", "objective.name"),
        ("objective.name=nope", "objective.name"),
        ("optimizer.betas=[0.9]", "optimizer.betas"),
        ("model.num_latentz=3", "model.num_latentz"),
        ("model.type=gpt", "model.type"),
        ("bogus.key=1", "bogus"),
        ("trainer.activation_checkpointing=3", "trainer.activation_checkpointing"),
        ("trainer.nonfinite_skip_limit=-1", "trainer.nonfinite_skip_limit"),
        ("trainer.nonfinite_skip_limit=1.5", "trainer.nonfinite_skip_limit"),
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


@pytest.fixture(scope="module")
def c4_2048(tmp_path_factory, shared_data) -> Path:
    """Real C4 sample shards of 2048 bytes (the paper model's length; not the tiny model's)."""
    from data_pipeline.shards.prepare import prepare

    out = tmp_path_factory.mktemp("c4") / "c4_bytes_2048"
    prepare("c4", [shared_data / "c4"], out, seq_len=2048)
    return out


@pytest.fixture(scope="module")
def shared_data():  # module scope for c4_2048 (conftest's fixture is per test)
    from tests.conftest import SHARED_DATA, skip_unless_ci

    if not SHARED_DATA.is_dir():
        skip_unless_ci(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """``perceiver`` in this process (what the console script calls)."""
    from pretrain.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_prints_config_and_param_count(c4_2048):
    from tests.conftest import run_perceiver

    cfg = REPO / "configs" / "paper_mlm.yaml"
    out = run_perceiver(["train", str(cfg), f"data.dir={c4_2048}", "--dry-run"]).stdout
    assert "# resolved config" in out and "zero_optimization" in out
    assert "201." in out and "parameters" in out


def test_dry_run_refuses_data_that_does_not_fit(capsys, c4_2048, tmp_path):
    """The manifest of every dataset is read against the model; the message names the key."""
    paper, tiny = REPO / "configs" / "paper_mlm.yaml", REPO / "configs" / "tiny_mlm.yaml"
    code, out, err = _main(capsys, "train", str(paper), f"data.dir={tmp_path}", "--dry-run")
    assert code == 2 and err.startswith("error: data.dir: ") and "manifest.json" in err
    assert "# resolved config" not in out
    code, _, err = _main(capsys, "train", str(tiny), f"data.dir={c4_2048}", "--dry-run")
    assert code == 2 and "data.dir: " in err and "2048 tokens" in err and "seq_len=256" in err
    # a mixture names the entry: paper_mlm_c4_wiki reads c4_bytes_2048 and enwiki_bytes_2048
    mix = REPO / "configs" / "paper_mlm_c4_wiki.yaml"
    code, _, err = _main(capsys, "train", str(mix), f"data.dir={c4_2048.parent}", "--dry-run")
    assert code == 2 and "data.mixture[1].dir: " in err and "enwiki_bytes_2048" in err


def _empty_dir(root: Path, name: str) -> Path:
    (root / name).mkdir(parents=True)
    return root / name


@pytest.mark.parametrize(
    "key, make",
    [
        ("checkpoint.resume", lambda d: d / "missing"),
        ("checkpoint.resume", lambda d: _empty_dir(d, "step_00000010")),  # no COMPLETE marker
        ("checkpoint.init_from", lambda d: d / "missing"),
        ("checkpoint.init_from", lambda d: _empty_dir(d, "run/checkpoints").parent),
    ],
    ids=["resume-missing", "resume-incomplete", "init_from-missing", "init_from-no-checkpoint"],
)
def test_resume_and_init_from_paths_refused_before_anything(capsys, c4_2048, tmp_path, key, make):
    """Checked by --dry-run, and by a real start before any rank or file exists."""
    path = make(tmp_path)
    run = tmp_path / "new_run"
    args = [
        "train",
        str(REPO / "configs" / "tiny_mlm.yaml"),
        f"data.dir={c4_2048}",
        "model.max_seq_len=2048",
        f"trainer.run_dir={run}",
        f"{key}={path}",
    ]
    code, out, err = _main(capsys, *args, "--dry-run")
    assert code == 2 and err.startswith(f"error: {key}: ") and str(path) in err, err
    assert "# resolved config" not in out
    code, _, err = _main(capsys, *args, "--nproc-per-node", "2")
    assert code == 2 and err.startswith(f"error: {key}: ") and "Traceback" not in err, err
    assert not run.exists()


def test_check_inputs_accepts_what_exists(c4_2048, tmp_path):
    from pretrain.config import check_inputs

    cfg = config_from_dict(_base(data={"dir": str(c4_2048)}), ["model.max_seq_len=2048"])
    check_inputs(cfg)  # resume: auto with no checkpoint yet, no init_from
    step = tmp_path / "step_00000010"
    step.mkdir()
    (step / "COMPLETE").write_text("{}")
    cfg.checkpoint.resume = cfg.checkpoint.init_from = str(step)
    check_inputs(cfg)
    cfg.checkpoint.init_from = str(tmp_path / "deleted_export")
    check_inputs(cfg)  # what is resumed ignores init_from (as the trainer does)


def test_overrides_after_flags_are_accepted(capsys, c4_2048):
    """`perceiver train CFG --nproc-per-node 2 key=val`: overrides may follow flags."""
    paper = str(REPO / "configs" / "paper_mlm.yaml")
    code, out, err = _main(
        capsys, "train", paper, "--nproc-per-node", "2", f"data.dir={c4_2048}",
        "--dry-run", "trainer.micro_batch_size=3", "optimizer.lr=1e-4",
    )  # fmt: skip
    assert code == 0, err
    assert "micro_batch_size: 3" in out and "lr: 0.0001" in out
    assert "train_batch_size: 6" in out  # --nproc-per-node 2 was read too
    with pytest.raises(SystemExit):  # an unknown flag after an override is still refused
        _main(capsys, "train", paper, f"data.dir={c4_2048}", "--dry-run", "x.y=1", "--bogus")
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


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


@pytest.mark.parametrize(
    "override, new_key",
    [
        ("data.mask_prob=0.2", "objective.mask_prob"),
        ("data.mask_unit=token", "objective.mask_unit"),
    ],
)
def test_moved_data_keys_name_their_new_key(override, new_key):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: moved; set {new_key}"):
        config_from_dict(_base(), [override])


@pytest.mark.parametrize(
    "key",
    [
        "train_video_queries",
        "train_audio_queries",
        "label_mask_prob",
        "video_loss_weight",
        "audio_loss_weight",
        "label_loss_weight",
    ],
)
def test_moved_multimodal_model_keys_name_their_new_key(key):
    tiny = REPO / "configs" / "multimodal_tiny.yaml"
    with pytest.raises(ConfigError, match=rf"model\.{key}: moved; set objective\.{key}"):
        load_config(tiny, ["data.dir=x", f"model.{key}=1"])


def test_objective_section_is_typed_with_a_default_per_model():
    from pretrain.config import ARObjectiveConfig, MLMObjectiveConfig

    cfg = config_from_dict(_base(), ["objective.mask_prob=0.3", "objective.mask_unit=token"])
    assert isinstance(cfg.objective, MLMObjectiveConfig)
    assert (cfg.objective.name, cfg.objective.mask_prob, cfg.objective.mask_unit) == (
        "mlm",
        0.3,
        "token",
    )
    ar = config_from_dict(_base(model={"preset": "perceiver_ar_tiny"}))
    assert isinstance(ar.objective, ARObjectiveConfig) and ar.to_dict()["objective"] == {
        "name": "ar"
    }
    tiny = REPO / "configs" / "multimodal_tiny.yaml"
    with pytest.raises(ConfigError, match="objective.train_audio_queries: must be in"):
        load_config(tiny, ["data.dir=x", "objective.train_audio_queries=100000"])


def test_typed_sections_round_trip_through_yaml(tmp_path):
    for name in ("demo_mlm.yaml", "multimodal_tiny.yaml", "glue_tiny.yaml", "tiny_ar.yaml"):
        cfg = load_config(REPO / "configs" / name, ["data.dir=/tmp/x"])
        save_config(cfg, tmp_path / name)
        again = load_config(tmp_path / name)
        assert again == cfg and again.to_yaml() == cfg.to_yaml(), name
        assert list(cfg.to_dict())[:3] == ["model", "objective", "data"]


def test_objective_registry_matches_the_config_sections():
    """pretrain.objectives and pretrain.config.objectives name the same objectives for the
    same model types (the config does not import the objectives)."""
    from pretrain.config import OBJECTIVE_CONFIGS, default_objective
    from pretrain.objectives.registry import OBJECTIVES, objective_for_model

    assert set(OBJECTIVES) == set(OBJECTIVE_CONFIGS)
    for name, cls in OBJECTIVES.items():
        assert cls.model_types == OBJECTIVE_CONFIGS[name].model_types
    for model_type in MODEL_TYPES:
        assert objective_for_model(model_type) == default_objective(model_type)
    kinds = {name: cls.shard_kind for name, cls in OBJECTIVES.items()}
    assert kinds == {
        "mlm": "text",
        "ar": "text",
        "multimodal_ae": "video",
        "classification": None,
        "image_classification": "image",
        "optical_flow": "flow",
    }
