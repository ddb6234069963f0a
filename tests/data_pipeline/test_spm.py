"""SentencePiece: train-spm on a corpus sample, tokenised shards, whole-word masking."""

import json
import logging

import numpy as np
import pytest
import torch

from data_pipeline.cli import main
from data_pipeline.loading.collators import MLMMasker
from data_pipeline.shards.manifest import iter_samples, read_manifest
from data_pipeline.tokenization.tokenizer import (
    SentencePieceTokenizer,
    get_tokenizer,
    tokenizer_from_manifest,
)
from tests.data_pipeline.corpora import c4_documents, write_c4, write_dump


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    docs = c4_documents(400) + ["Ünïcode: 中文, émoji 🙂 and tabs\tand  double  spaces."] * 5
    write_c4(root / "c4", docs, files=2)
    model = root / "models" / "c4.model"
    argv = ["data", "train-spm", "--source", "c4", "--input", str(root / "c4"), "--output",
            str(model), "--vocab-size", "400", "--sample-mb", "1", "--workers", "2"]  # fmt: skip
    assert main(argv) == 0
    return model, root / "c4"


def test_model_layout_and_round_trip(spm_model):
    model, _ = spm_model
    tok = get_tokenizer(f"spm:{model}")
    assert isinstance(tok, SentencePieceTokenizer) and 300 < tok.vocab_size <= 400
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.cls_id, tok.sep_id) == (
        0, 1, 2, 3, 4, 5,
    )  # fmt: skip
    assert tok.sp.id_to_piece(3) == "[MASK]" and tok.sp.id_to_piece(7) == "<0x00>"
    for text in ["  two  spaces\n\nnew\tline", "Ünïcode 中文 🙂 ∑", " lead", "trail  "]:
        assert tok.decode(tok.encode(text)) == text  # byte fallback + identity: exact
    ids = tok.encode_documents(["a b", "c"])
    assert ids.dtype == np.uint16 and ids[-1] == tok.eos_id and (ids == tok.eos_id).sum() == 2
    assert (model.with_suffix(".json")).is_file() and model.with_suffix(".vocab").is_file()


def test_prepare_with_spm(spm_model, tmp_path):
    model, corpus = spm_model
    out = tmp_path / "out"
    argv = ["data", "prepare", "--source", "c4", "--input", str(corpus), "--output", str(out),
            "--tokenizer", f"spm:{model}", "--seq-len", "32", "--val-fraction", "0"]  # fmt: skip
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert manifest["tokenizer"]["name"] == "spm" and manifest["columns"] == {
        "tokens": "ndarray:uint16"
    }
    assert (out / "tokenizer.model").read_bytes() == model.read_bytes()
    tok = tokenizer_from_manifest(out, manifest)
    assert tok.sha256 == manifest["tokenizer"]["model_sha256"]
    samples = np.concatenate(list(iter_samples(out, "train")))
    text = tok.decode(samples, skip_special_tokens=False)
    docs = text.split("[EOS]")
    assert docs[0] == c4_documents(400)[0]  # byte-exact round trip through the shards
    (out / "tokenizer.model").write_bytes(b"x" + model.read_bytes()[1:])
    with pytest.raises(Exception, match="sha256|model"):
        tokenizer_from_manifest(out, manifest)


def test_whole_word_masking_with_spm(spm_model):
    model, _ = spm_model
    tok = get_tokenizer(f"spm:{model}")
    text = " ".join(c4_documents(20))
    ids = torch.from_numpy(tok.encode(text)[:256].astype(np.int64))[None].repeat(8, 1)
    masker = MLMMasker(tok, mask_prob=0.3, seed=0)
    in_word, word_index = masker.find_words(ids)
    starts = [i for i in range(ids.shape[1]) if tok.sp.id_to_piece(int(ids[0, i])).startswith("▁")]
    # Every piece starting with the word marker starts a new word.
    assert all(word_index[0, i] != word_index[0, i - 1] for i in starts if i and in_word[0, i])
    batch = masker(ids, key=5)
    chosen = batch["labels"] != -100
    for row in range(8):  # whole words: a word is either fully chosen or not at all
        for w in set(word_index[row][chosen[row]].tolist()):
            assert chosen[row][word_index[row] == w].all()
    replaced = batch["input_ids"][chosen]
    assert (replaced == tok.mask_id).float().mean() > 0.6
    assert int(batch["input_ids"].max()) < tok.vocab_size
    assert not chosen[ids < tok.num_special_tokens].any()


def test_train_spm_errors(tmp_path):
    write_dump(tmp_path / "d.xml")
    with pytest.raises(SystemExit, match="vocab_size must be at least 300"):
        main(["data", "train-spm", "--source", "wikipedia", "--input", str(tmp_path / "d.xml"),
              "--output", str(tmp_path / "m.model"), "--vocab-size", "100"])  # fmt: skip


@pytest.mark.shared_data
def test_train_spm_warns_when_the_corpus_is_too_small_for_the_vocabulary(
    shared_data, tmp_path, caplog, capsys
):
    model = tmp_path / "c4_32k.model"
    argv = ["data", "train-spm", "--source", "c4", "--input", str(shared_data / "c4"),
            "--output", str(model), "--vocab-size", "32000"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="data_pipeline.tokenization.spm_train"):
        assert main(argv) == 0
    actual = SentencePieceTokenizer(model).vocab_size
    assert actual < 32000
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{actual} pieces instead of the 32000 asked for" in warning
    assert "the corpus is too small: all of it was read" in warning
    assert f"{actual} pieces (of 32000 asked for)" in capsys.readouterr().out
    summary = json.loads(model.with_suffix(".json").read_text())
    assert (summary["vocab_size"], summary["vocab_size_requested"]) == (actual, 32000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_pipeline.tokenization.spm_train"):
        assert main([*argv, "--sample-mb", "0.003"]) == 0
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "instead of the 32000 asked for" in warning and "--sample-mb 0.003" in warning
