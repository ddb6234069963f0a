"""Export and import: consolidation of ZeRO 0/2/3 checkpoints written by 2 processes, the probes'
weight snapshot, native and HF directories (identical logits), bf16, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.export import (
    Pretrained,
    consolidate,
    export,
    find_checkpoint,
    load_pretrained,
    read_hf,
    write_hf,
    write_native,
)
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM
from tests.conftest import run_distributed, run_perceiver

STAGES = ((0, "bf16"), (2, "bf16"), (3, "fp32"))


def _train_and_save(rank: int, world: int, out: str) -> None:
    """Two DeepSpeed steps per ZeRO stage on 2 ranks, a checkpoint, and reference weights taken
    from the live engine by DeepSpeed's own APIs (rank 0 saves them next to the checkpoint)."""
    from deepspeed.utils import safe_get_full_fp32_param

    from pretrain.config import config_from_dict
    from pretrain.glue.probes import gather_state_dict
    from pretrain.train import checkpoint as ckpt
    from pretrain.train.engine import build_engine

    for stage, precision in STAGES:
        cfg = config_from_dict(
            {
                "model": {"preset": "perceiver_io_mlm_tiny", "max_seq_len": 32},
                "data": {"dir": "/unused"},
                "optimizer": {"name": "adamw", "lr": 1e-2, "warmup_steps": 0},
                "trainer": {"zero_stage": stage, "precision": precision, "micro_batch_size": 2},
            }
        )
        torch.manual_seed(0)
        model = PerceiverMLM(cfg.model)
        model.init_weights()
        engine = build_engine(cfg, model, torch.device("cpu"), world, False)
        gen = torch.Generator().manual_seed(rank)
        for _ in range(2):
            ids = torch.randint(6, 262, (2, 32), generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = engine(ids)
            engine.backward(
                torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
            )
            engine.step()
        ckpt.save(engine, f"{out}/stage{stage}", 2, {}, cfg.to_yaml(), keep=0)
        named = dict(engine.module.named_parameters())
        if stage == 0:  # DeepSpeed's bf16 optimizer at stage 0: fp32 masters by identity
            opt = engine.optimizer
            by_id = {
                id(p): m for g, mg in zip(opt.fp16_groups, opt.fp32_groups) for p, m in zip(g, mg)
            }
            reference = {k: by_id[id(p)].detach().clone() for k, p in named.items()}
        else:
            reference = {k: safe_get_full_fp32_param(p).detach().clone() for k, p in named.items()}
        snapshot = gather_state_dict(engine, rank == 0)  # collective under ZeRO-3
        if rank == 0:
            torch.save({"reference": reference, "snapshot": snapshot}, f"{out}/stage{stage}/ref.pt")


@pytest.fixture(scope="module")
def zero_checkpoints(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    run_distributed(_train_and_save, 2, (str(out),))
    return out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage,precision", STAGES)
def test_consolidation_of_every_zero_stage_written_by_2_ranks(zero_checkpoints, stage, precision):
    checkpoint = zero_checkpoints / f"stage{stage}" / "step_00000002"
    assert find_checkpoint(checkpoint) == checkpoint
    assert find_checkpoint(zero_checkpoints / f"stage{stage}") == checkpoint  # newest of a dir
    refs = torch.load(checkpoint.parent / "ref.pt", weights_only=False)
    state = consolidate(checkpoint)
    reference = refs["reference"]
    assert state.keys() == reference.keys()
    for k, v in reference.items():
        assert state[k].dtype == torch.float32
        torch.testing.assert_close(state[k], v.float(), rtol=0, atol=0, msg=k)
    initial = PerceiverMLM(PerceiverIOConfig(**{**_tiny(), "max_seq_len": 32}))
    torch.manual_seed(0)
    initial.init_weights()
    assert not torch.equal(state["latents"], initial.latents.detach())  # it trained
    snapshot = refs["snapshot"]  # what a GLUE probe exports: the weights the forward uses
    for k, v in snapshot.items():
        expected = state[k].to(torch.bfloat16).float() if precision == "bf16" else state[k]
        torch.testing.assert_close(v, expected, rtol=0, atol=0, msg=k)


def _tiny() -> dict:
    import yaml

    from pretrain.config import CONFIG_ROOT

    spec = yaml.safe_load((CONFIG_ROOT / "model" / "perceiver_io_mlm_tiny.yaml").read_text())
    return {k: v for k, v in spec.items() if k != "type"}


@pytest.fixture
def pretrained() -> Pretrained:
    torch.manual_seed(0)
    model = PerceiverMLM(PerceiverIOConfig(**_tiny()))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Pretrained("perceiver_io_mlm", _tiny(), state, {"name": "byte"}, {"kind": "test"})


def _logits(state: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    model = PerceiverMLM(PerceiverIOConfig(**_tiny())).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(ids, attention_mask=mask)


def test_hf_directory_gives_identical_logits_and_imports_back(pretrained, tmp_path):
    import transformers

    out = write_hf(pretrained, tmp_path / "hf")
    hf = transformers.PerceiverForMaskedLM.from_pretrained(str(out)).eval()
    tokenizer = transformers.PerceiverTokenizer.from_pretrained(str(out))
    texts = ["Perceivers read bytes.", "héllo"]  # HF decodes all max_seq_len positions
    encoded = tokenizer(texts, padding="max_length", max_length=256, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    from data_pipeline.tokenization.tokenizer import ByteTokenizer

    ours_ids = ByteTokenizer().encode("héllo").tolist()
    assert ids[1, 1 : 1 + len(ours_ids)].tolist() == ours_ids  # the same byte ids
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
    got = _logits(pretrained.state_dict, ids, mask.bool())
    assert (got - expected).abs().max() < 1e-4
    back = read_hf(out)
    assert back.model == pretrained.model and back.tokenizer["name"] == "byte"
    assert all(torch.equal(back.state_dict[k], v) for k, v in pretrained.state_dict.items())
    # The CLI: import-hf -> native export -> the same weights again.
    run_perceiver(["import-hf", str(out), "--output", str(tmp_path / "native")])
    again = load_pretrained(tmp_path / "native")
    assert again.source["kind"] == "hf" and again.model_type == "perceiver_io_mlm"
    assert all(torch.equal(again.state_dict[k], v) for k, v in pretrained.state_dict.items())


def test_native_export_fp32_bf16_and_refusals(pretrained, tmp_path):
    from safetensors.torch import load_file

    out = write_native(pretrained, tmp_path / "fp32")
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "perceiver-pretrain" and meta["model_type"] == "perceiver_io_mlm"
    assert meta["num_params"] == PerceiverIOConfig(**_tiny()).num_params()
    loaded = load_pretrained(out)
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in pretrained.state_dict.items())
    half = write_native(pretrained, tmp_path / "bf16", dtype="bf16")
    raw = load_file(half / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in raw.values())
    assert torch.equal(raw["latents"], pretrained.state_dict["latents"].to(torch.bfloat16))
    with pytest.raises(ValueError, match="only perceiver_io_mlm has an HF counterpart"):
        write_hf(Pretrained("perceiver_io_classifier", {}, {}, {}, {}), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="without a complete checkpoint"):
        export(tmp_path, tmp_path / "y")
    with pytest.raises(ValueError, match="--dtype"):
        export(out, tmp_path / "z", dtype="fp8")


def test_sentencepiece_tokenizer_travels_with_the_export(pretrained, tmp_path):
    """A run's SentencePiece model (from its shard manifest) is copied into the export, and GLUE
    encodes with it."""
    from data_pipeline.shards.manifest import FORMAT_VERSION
    from data_pipeline.tokenization.spm_train import train_spm
    from pretrain.export import run_tokenizer
    from pretrain.glue.tasks import encode_pair, load_tokenizer

    shards = tmp_path / "shards"
    shards.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i} about cats and dogs" for i in range(300)))
    train_spm("text", [str(corpus)], shards / "tokenizer.model", vocab_size=300)
    info = load_tokenizer(f"spm:{shards / 'tokenizer.model'}").config()
    manifest = {"format_version": FORMAT_VERSION, "tokenizer": info}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    found = run_tokenizer({"data": {"dir": str(shards)}, "model": {"vocab_size": 300}})
    assert found["name"] == "spm" and found["model_file"] == str(shards / "tokenizer.model")
    out = write_native(
        Pretrained(pretrained.model_type, pretrained.model, pretrained.state_dict, found, {}),
        tmp_path / "export",
    )
    (shards / "tokenizer.model").unlink()  # the export is self-contained
    loaded = load_pretrained(out)
    assert loaded.tokenizer_name() == f"spm:{(out / 'tokenizer.model').resolve()}"
    tokenizer = load_tokenizer(loaded.tokenizer_name())
    assert tokenizer.sha256 == info["model_sha256"]
    assert encode_pair(tokenizer, "cats", "dogs", 16)[0] == tokenizer.cls_id
    with pytest.raises(FileNotFoundError, match="pass --tokenizer"):
        run_tokenizer({"data": {"dir": str(tmp_path / "gone")}, "model": {"vocab_size": 300}})


def test_saved_model_sections_drop_the_settings_that_moved_to_objective() -> None:
    from pretrain.export import architecture_only
    from pretrain.models import build_config

    old = {"type": "perceiver_io_multimodal", "label_mask_prob": 0.5, "video_loss_weight": 0.03}
    assert architecture_only(old) == {"type": "perceiver_io_multimodal"}
    with pytest.raises(ValueError, match="unknown"):  # what an old export hit before
        build_config("perceiver_io_multimodal", old)
    build_config("perceiver_io_multimodal", architecture_only(old))
