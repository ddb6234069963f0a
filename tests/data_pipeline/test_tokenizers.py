"""ByteTokenizer: id layout, round trips, whitespace table, agreement with HF PerceiverTokenizer."""

import numpy as np
import pytest

from data_pipeline.tokenization.tokenizer import (
    ByteTokenizer,
    Tokenizer,
    available_tokenizers,
    get_tokenizer,
)

TEXTS = [
    "Hello, world!",
    "héllo wörld — naïve café",
    "日本語のテキスト and emoji 🎉🚀",
    "tabs\tand\nnewlines\r\n  spaces",
    "",
]


def test_layout():
    tok = ByteTokenizer()
    assert tok.vocab_size == 262
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.cls_id, tok.sep_id) == (
        0,
        1,
        2,
        3,
        4,
        5,
    )
    assert tok.encode("\x00\x7f").tolist() == [6, 127 + 6]
    assert tok.encode("A").tolist() == [ord("A") + 6]
    assert tok.encode("é").tolist() == [0xC3 + 6, 0xA9 + 6]
    assert tok.encode("\U0010ffff").max() == 0xF4 + 6 < tok.vocab_size
    assert tok.encode("abc").dtype == np.uint16
    assert isinstance(tok, Tokenizer)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


def test_bos_eos_and_special_handling():
    tok = ByteTokenizer()
    ids = tok.encode("hi", add_bos=True, add_eos=True)
    assert ids.tolist() == [1, ord("h") + 6, ord("i") + 6, 2]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special_tokens=False) == "[BOS]hi[EOS]"
    mixed = [3, *tok.encode("é").tolist(), 0, 5]
    assert tok.decode(mixed, skip_special_tokens=False) == "[MASK]é[PAD][SEP]"


def test_decode_invalid_utf8_is_replaced_not_raised():
    tok = ByteTokenizer()
    cut = tok.encode("é")[1:]  # a continuation byte without its lead byte
    assert tok.decode(cut) == "\ufffd"
    with pytest.raises(ValueError, match="262"):
        tok.decode([262])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


def test_decode_accepts_tensors():
    import torch

    tok = ByteTokenizer()
    assert tok.decode(torch.tensor(tok.encode("tensor").astype(np.int64))) == "tensor"


def test_whitespace_table():
    tok = ByteTokenizer()
    table = tok.whitespace_table
    assert table.shape == (262,) and table.dtype == bool
    whitespace_ids = sorted(np.flatnonzero(table).tolist())
    assert whitespace_ids == sorted(b + 6 for b in b" \t\n\r\x0b\x0c")
    for b in range(256):
        assert tok.is_whitespace_id(b + 6) == bytes([b]).isspace()
    assert not any(tok.is_whitespace_id(i) for i in range(6))
    assert tok.special_table[:6].all() and not tok.special_table[6:].any()
    with pytest.raises(ValueError):
        table[0] = True  # read-only: shared by every masker


def test_registry():
    assert "byte" in available_tokenizers()
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ValueError, match="known tokenizers"):
        get_tokenizer("nope")


def test_matches_huggingface_perceiver_tokenizer():
    import transformers

    hf = transformers.PerceiverTokenizer()  # needs no files or network
    tok = ByteTokenizer()
    assert len(hf) == tok.vocab_size
    assert [hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.mask_token_id] == [0, 1, 2, 3]
    assert [hf.cls_token_id, hf.sep_token_id] == [4, 5]
    for text in TEXTS:
        expected = hf(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text).tolist() == expected, text
        assert tok.decode(expected) == hf.decode(expected, skip_special_tokens=True)
