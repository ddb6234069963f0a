"""``perceiver generate``, ``fill-mask`` and ``eval``: the KV-cache stream, invalid UTF-8, mask
filling equal to HF's on an imported model, and eval equal to the trainer's validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.tokenization.tokenizer import ByteTokenizer
from pretrain.export import Pretrained, write_native
from pretrain.inference.api import fill_mask, generate_text, load_for_inference
from pretrain.models.perceiver_ar import PerceiverAR, _sample
from tests.conftest import REPO, clean_env, run_perceiver
from tests.pretrain.test_perceiver_ar import tiny_config as ar_config

TOK = ByteTokenizer()


def refused(args: list[str]) -> subprocess.CompletedProcess:
    """``perceiver ARGS`` expected to fail: its completed process."""
    cmd = [sys.executable, "-m", "pretrain.cli", *args]
    return subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ar_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ar_config(vocab_size=TOK.vocab_size, max_seq_len=32, num_latents=8)
    model = PerceiverAR(cfg)
    model.init_weights()
    fields = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    pretrained = Pretrained("perceiver_ar", fields, model.state_dict(), TOK.config())
    return write_native(pretrained, tmp_path_factory.mktemp("ar") / "export")


def test_generate_streams_the_kv_cache_decoding(ar_export) -> None:
    loaded = load_for_inference(ar_export)
    prompt = "Hello, wor"
    pieces = list(generate_text(loaded, prompt, 40, temperature=0.0, stop_at_eos=False))
    ids = torch.tensor([[TOK.eos_id, *TOK.encode(prompt).tolist()]])
    # the cropping past max_seq_len (32) is part of what is compared
    expected = loaded.model.generate(ids, 40, temperature=0.0)[0, ids.shape[1] :]
    assert "".join(pieces) == TOK.decode(expected)
    assert len(pieces) > 1  # streamed, not returned at the end


def test_generate_with_a_seed_is_reproducible_and_never_crashes_on_invalid_utf8(ar_export):
    loaded = load_for_inference(ar_export)
    runs = [
        "".join(generate_text(loaded, "ab", 60, temperature=1.5, seed=7, stop_at_eos=False))
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    # an untrained byte model samples stray continuation bytes: shown as U+FFFD
    assert "\ufffd" in runs[0]
    other = "".join(generate_text(loaded, "ab", 60, temperature=1.5, seed=8, stop_at_eos=False))
    assert other != runs[0]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    drawn = {int(_sample(logits, 1.0, None, gen, top_p=0.75)) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3
    assert {int(_sample(logits, 1.0, None, gen, top_p=0.1)) for _ in range(50)} == {0}


def test_generate_cli(ar_export) -> None:
    out = run_perceiver(
        ["generate", str(ar_export), "--prompt", "The ", "--max-new-tokens", "20", "--seed", "1"]
    )
    assert out.stdout.startswith("The ")
    bad = refused(["generate", str(ar_export), "--prompt", "x", "--top-p", "0"])
    assert bad.returncode == 2 and "top_p" in bad.stderr


@pytest.fixture(scope="module")
def hf_import(tmp_path_factory) -> tuple[Path, Path]:
    """A randomly initialised HF PerceiverForMaskedLM (built here, no download), imported."""
    from transformers import PerceiverConfig, PerceiverForMaskedLM

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = PerceiverConfig(
        num_latents=8,
        d_latents=32,
        d_model=16,
        num_blocks=1,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        qk_channels=16,
        v_channels=32,
        vocab_size=TOK.vocab_size,
        max_position_embeddings=64,
    )
    PerceiverForMaskedLM(config).eval().save_pretrained(root / "hf")
    run_perceiver(["import-hf", str(root / "hf"), "--output", str(root / "imported")])
    return root / "hf", root / "imported"


def test_fill_mask_equals_hf_on_an_imported_model(hf_import) -> None:
    from transformers import PerceiverForMaskedLM

    hf_dir, imported = hf_import
    text = "This is an incomplete sentence where some words are [MASK]."
    result = fill_mask(load_for_inference(imported), text, span=9)

    # HF's own recipe: pad to max length, mask the span, greedy argmax at the masked positions
    hf = PerceiverForMaskedLM.from_pretrained(hf_dir).eval()
    prefix = TOK.encode("This is an incomplete sentence where some words are ").tolist()
    ids = prefix + [TOK.mask_id] * 9 + TOK.encode(".").tolist()
    input_ids = torch.zeros(1, 64, dtype=torch.long)
    input_ids[0, : len(ids)] = torch.tensor(ids)
    mask = (torch.arange(64) < len(ids))[None]
    with torch.no_grad():
        logits = hf(inputs=input_ids, attention_mask=mask).logits
    expected = logits[0, len(prefix) : len(prefix) + 9].argmax(-1)
    assert result.spans == [TOK.decode(expected)]
    assert result.text == TOK.decode(prefix + expected.tolist() + TOK.encode(".").tolist())
    top = result.candidates[0][0]
    assert len(top) == 5 and top[0][1] >= top[-1][1]

    out = run_perceiver(["fill-mask", str(imported), "--text", "one [MASK:3] three", "--top", "2"])
    assert "[MASK] 0:" in out.stdout and out.stdout.count("position ") == 3
    bad = refused(["fill-mask", str(imported), "--text", "no mask here"])
    assert bad.returncode == 2 and "[MASK]" in bad.stderr


def test_wrong_model_type_is_refused(ar_export, hf_import) -> None:
    with pytest.raises(ValueError, match="perceiver_io_mlm"):
        fill_mask(load_for_inference(ar_export), "a [MASK]")
    with pytest.raises(ValueError, match="perceiver_ar"):
        next(generate_text(load_for_inference(hf_import[1]), "a", 3))


@pytest.mark.slow
def test_eval_reports_what_the_trainers_validation_reported(tmp_path) -> None:
    from data_pipeline.cli import prepare_demo_corpus

    data = tmp_path / "data"
    prepare_demo_corpus(data, seq_len=64, objective="mlm", max_bytes=200_000)
    run = tmp_path / "run"
    run_perceiver(
        [
            "train",
            str(REPO / "configs" / "tiny_mlm.yaml"),
            f"data.dir={data}",
            f"trainer.run_dir={run}",
            "model.max_seq_len=64",
            "trainer.precision=fp32",
            "trainer.zero_stage=0",
            "trainer.max_steps=6",
            "trainer.val_every=6",
            "trainer.val_batches=3",
            "checkpoint.every=6",
            "logging.progress_bar=false",
        ]
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/loss" in r][-1]
    out = tmp_path / "eval.json"
    run_perceiver(["eval", str(run), "--data", str(data), "--max-batches", "3", "--json", str(out)])
    metrics = json.loads(out.read_text())
    assert metrics["eval/step"] == 6
    for key in ("val/loss", "val/accuracy"):
        assert metrics[key] == pytest.approx(val[key], rel=1e-6, abs=1e-9), key
    # the whole split, on 2 ranks: every sample once
    out2 = tmp_path / "eval2.json"
    run_perceiver(
        ["eval", str(run), "--data", str(data), "--nproc-per-node", "2", "--json", str(out2)]
    )
    whole = json.loads(out2.read_text())
    assert whole["val/loss"] > 0 and whole["eval/batches_per_rank"] >= 1
