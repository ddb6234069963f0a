"""stack_tokens, whole-word MLMMasker (statistics, whole words, determinism) and ARTargets."""

import numpy as np
import pytest
import torch

from data_pipeline.loading.collators import (
    IGNORE_INDEX,
    ARTargets,
    MLMMasker,
    make_batch_transform,
    mix_seed,
    stack_tokens,
)
from data_pipeline.shards.packing import pack_documents
from data_pipeline.sources.demo import iter_stdlib_docstrings
from data_pipeline.sources.records import Document
from data_pipeline.tokenization.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def text_batch():
    """32 x 512 packed tokens of real English text (stdlib docstrings, EOS separators)."""
    records = iter_stdlib_docstrings(max_bytes=40_000)
    samples = [s for _, s in pack_documents(records, TOK, 512, 0.0)][:32]
    assert len(samples) == 32
    return stack_tokens([{"tokens": s} for s in samples])["tokens"]


def reference_words(row):
    """Words of one row as lists of positions, computed the slow obvious way."""
    words, current = [], []
    for pos, token_id in enumerate(row.tolist()):
        is_byte = token_id >= TOK.num_special_tokens
        if is_byte and not bytes([token_id - TOK.num_special_tokens]).isspace():
            current.append(pos)
        elif current:
            words.append(current)
            current = []
    if current:
        words.append(current)
    return words


def test_stack_tokens():
    batch = stack_tokens([{"tokens": np.array([1, 2, 3], np.uint16)}, {"tokens": np.arange(3)}])
    assert batch["tokens"].dtype == torch.long and batch["tokens"].tolist() == [
        [1, 2, 3],
        [0, 1, 2],
    ]
    with pytest.raises(ValueError, match="different shapes"):
        stack_tokens([{"tokens": np.arange(3)}, {"tokens": np.arange(4)}])
    with pytest.raises(ValueError, match="empty"):
        stack_tokens([])


def test_words_are_masked_whole_and_labels_only_on_chosen(text_batch):
    out = MLMMasker(TOK, seed=0)(text_batch, key=1)
    labels, input_ids = out["labels"], out["input_ids"]
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], text_batch[chosen])
    assert torch.equal(input_ids[~chosen], text_batch[~chosen])  # nothing else touched
    assert not chosen[text_batch < TOK.num_special_tokens].any()  # EOS separators never chosen
    for b in range(4):
        words = reference_words(text_batch[b])
        word_states = [chosen[b, w].tolist() for w in words]
        assert all(all(s) or not any(s) for s in word_states), "a word was split"
        covered = {p for w, s in zip(words, word_states) if s[0] for p in w}
        assert covered == set(torch.nonzero(chosen[b]).flatten().tolist())
        assert sum(s[0] for s in word_states) == max(1, round(0.15 * len(words)))


def test_masking_statistics(text_batch):
    tokens = text_batch.repeat(16, 1)  # 512 x 512, every row masked independently
    out = MLMMasker(TOK, mask_prob=0.15, seed=3)(tokens, key=0)
    in_word, word_index = MLMMasker(TOK).find_words(tokens)
    chosen = out["labels"] != IGNORE_INDEX
    # One global id per word; per word: length, chosen, MASK and changed position counts.
    word_id = (torch.arange(len(tokens))[:, None] * tokens.shape[1] + word_index)[in_word]

    def per_word(values):
        return torch.zeros(tokens.numel(), dtype=torch.long).index_add_(0, word_id, values.long())

    length = per_word(in_word[in_word])
    n_chosen = per_word(chosen[in_word])
    n_mask = per_word((out["input_ids"] == TOK.mask_id)[in_word])
    n_changed = per_word((out["input_ids"] != tokens)[in_word])
    words = length > 0
    picked = n_chosen > 0
    assert torch.equal(n_chosen[picked], length[picked])  # chosen words are chosen whole
    assert abs(picked.sum() / words.sum() - 0.15) < 0.002
    masked = picked & (n_mask == length)
    kept = picked & (n_changed == 0)
    randomised = picked & (n_mask == 0) & (n_changed > 0)
    assert not (picked & (n_mask > 0) & (n_mask < length)).any()  # no word half MASK
    total = int(picked.sum())
    assert int(masked.sum() + kept.sum() + randomised.sum()) == total > 5_000
    assert abs(masked.sum() / total - 0.8) < 0.022  # ~4 sigma
    assert abs(randomised.sum() / total - 0.1) < 0.016
    assert abs(kept.sum() / total - 0.1) < 0.016
    replaced = out["input_ids"][chosen & (out["input_ids"] != TOK.mask_id)]
    assert ((replaced >= 6) & (replaced < 262)).all()


def test_determinism_per_key_and_seed(text_batch):
    masker = MLMMasker(TOK, seed=5)
    original = text_batch.clone()
    a, b = masker(text_batch, key=17), masker(text_batch, key=17)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(text_batch, original)  # input untouched
    c = masker(text_batch, key=18)
    d = MLMMasker(TOK, seed=6)(text_batch, key=17)
    assert not torch.equal(a["labels"], c["labels"])
    assert not torch.equal(a["labels"], d["labels"])
    assert mix_seed(0, 1) != mix_seed(1, 0) and mix_seed(0, 1) == mix_seed(0, 1)


def test_padding_and_rows_without_words():
    row = torch.from_numpy(TOK.encode("one two three four five six seven").astype(np.int64))
    tokens = torch.zeros(3, 48, dtype=torch.long)  # PAD everywhere
    tokens[0, : len(row)] = row
    tokens[1, :5] = torch.tensor([TOK.eos_id, 6 + 32, 6 + 10, TOK.eos_id, 6 + 9])  # no words
    out = MLMMasker(TOK, seed=0)(tokens, key=3)
    assert out["attention_mask"].tolist()[0] == [True] * len(row) + [False] * (48 - len(row))
    assert not out["attention_mask"][2].any()
    chosen = out["labels"] != IGNORE_INDEX
    assert chosen[0].any() and not chosen[1:].any()
    assert not chosen[0, len(row) :].any()
    assert torch.equal(out["input_ids"][1:], tokens[1:])


def test_masker_argument_errors():
    with pytest.raises(ValueError, match="mask_prob"):
        MLMMasker(TOK, mask_prob=0.0)
    with pytest.raises(ValueError, match="sum"):
        MLMMasker(TOK, mask_token_frac=0.9, random_token_frac=0.2)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        MLMMasker(TOK)(torch.zeros(5, dtype=torch.long), key=0)
    with pytest.raises(ValueError, match="integer"):
        MLMMasker(TOK)(torch.zeros(2, 5), key=0)


def test_ar_targets():
    tokens = torch.arange(12).view(2, 6)
    out = ARTargets()(tokens, key=123)
    assert out["input_ids"].tolist() == [[0, 1, 2, 3, 4], [6, 7, 8, 9, 10]]
    assert out["labels"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]]
    assert out["input_ids"].is_contiguous() and out["labels"].is_contiguous()
    with pytest.raises(ValueError, match="at least 2"):
        ARTargets()(torch.zeros(2, 1, dtype=torch.long), key=0)


def test_make_batch_transform():
    assert isinstance(make_batch_transform("ar"), ARTargets)
    masker = make_batch_transform("mlm", seed=4, mask_prob=0.3)
    assert isinstance(masker, MLMMasker) and masker.seed == 4 and masker.mask_prob == 0.3
    with pytest.raises(ValueError, match="objective"):
        make_batch_transform("seq2seq")


def test_packed_documents_feed_the_masker():
    docs = [Document("alpha beta gamma delta", "m", "1"), Document("epsilon zeta", "m", "2")]
    [(_, sample)] = pack_documents(docs, TOK, 30, 0.0)
    batch = stack_tokens([{"tokens": sample}])["tokens"]
    out = MLMMasker(TOK, mask_prob=0.5)(batch, key=0)
    chosen = out["labels"][0] != IGNORE_INDEX
    assert int(chosen.sum()) > 0 and not chosen[batch[0] == TOK.eos_id].any()


def test_token_unit_masks_single_bytes_of_words(text_batch):
    masker = MLMMasker(TOK, mask_prob=0.15, seed=2, unit="token")
    out = masker(text_batch, key=4)
    chosen = out["labels"] != IGNORE_INDEX
    in_word, _ = masker.find_words(text_batch)
    assert not chosen[~in_word].any()  # whitespace, EOS and PAD are never labelled
    assert torch.equal(out["labels"][chosen], text_batch[chosen])
    # exactly round(0.15 * word bytes) bytes per row, chosen one by one: most chosen bytes have
    # an unmasked byte of their own word beside them (whole-word masking never does)
    assert chosen.sum(1).tolist() == torch.round(0.15 * in_word.sum(1)).long().tolist()
    left_visible = torch.zeros_like(chosen)
    left_visible[:, 1:] = in_word[:, :-1] & ~chosen[:, :-1]
    assert (left_visible & chosen).sum() / chosen[:, 1:].sum() > 0.5
    whole = MLMMasker(TOK, mask_prob=0.15, seed=2)(text_batch, key=4)
    whole_chosen = whole["labels"] != IGNORE_INDEX
    neighbours = torch.zeros_like(whole_chosen)
    neighbours[:, 1:] = in_word[:, :-1] & ~whole_chosen[:, :-1] & in_word[:, 1:]
    assert not (neighbours & whole_chosen).any()
    # replaced per byte: 80% MASK, 10% random, 10% kept
    is_mask = out["input_ids"][chosen] == TOK.mask_id
    assert abs(is_mask.float().mean() - 0.8) < 0.03
    # deterministic per (seed, key), different for another key
    again = MLMMasker(TOK, mask_prob=0.15, seed=2, unit="token")(text_batch, key=4)
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert not torch.equal(out["labels"], masker(text_batch, key=5)["labels"])
    assert "unit=token" in repr(masker)


def test_mask_unit_is_validated_and_passed_on():
    with pytest.raises(ValueError, match="unit"):
        MLMMasker(TOK, unit="span")
    assert make_batch_transform("mlm", mask_unit="token").unit == "token"
    assert make_batch_transform("mlm").unit == "word"
