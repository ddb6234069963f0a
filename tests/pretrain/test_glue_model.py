"""The classifier model (counts, contract, initialisation from a masked LM) and the GLUE loaders
(exact resumption, every evaluation example once over ranks)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pretrain.export import Pretrained, adapt_state_dict, load_initial_weights, write_native
from pretrain.glue.data import EvalLoader, TrainLoader
from pretrain.glue.tasks import EncodedSplit
from pretrain.models import MODEL_TYPES, build_model
from pretrain.models.classifier import PerceiverClassifier, PerceiverClassifierConfig
from pretrain.models.perceiver_io import PerceiverIOConfig, PerceiverMLM
from tests.pretrain.flop_count import count_matmul_flops
from tests.pretrain.test_perceiver_io import tiny_config

# test_perceiver_io's tiny encoder, with the default MLP widening and a small decoder attention.
ENCODER = dataclasses.asdict(
    tiny_config(
        cross_attention_widening_factor=1,
        self_attention_widening_factor=1,
        num_decoder_heads=2,
        decoder_qk_channels=16,
    )
)


def classifier_config(**overrides) -> PerceiverClassifierConfig:
    return PerceiverClassifierConfig(**{**ENCODER, "head_dropout": 0.0, **overrides})


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[1, 9:] = False
    return torch.randint(0, 30, (3, 16), generator=gen), mask


@pytest.mark.parametrize(
    "overrides", [{}, {"num_classes": 1, "head_hidden_channels": 24}, {"num_classes": 3}]
)
def test_analytic_num_params_equals_numel(overrides):
    cfg = classifier_config(**overrides)
    assert cfg.num_params() == sum(p.numel() for p in PerceiverClassifier(cfg).parameters())


def test_flops_per_sample_matches_flop_counter(batch):
    cfg = classifier_config()
    model = PerceiverClassifier(cfg).eval()
    with count_matmul_flops() as counter:
        model(batch[0])
    assert counter.get_total_flops() == len(batch[0]) * cfg.flops_per_sample() // 3  # forward


@pytest.mark.parametrize(
    "field,value",
    [("num_classes", 0), ("head_hidden_channels", -1), ("head_dropout", 1.0), ("num_latents", 0)],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        classifier_config(**{field: value})


def test_forward_contract_and_padding(batch):
    torch.manual_seed(0)
    model = build_model("perceiver_io_classifier", classifier_config(num_classes=3)).eval()
    model.init_weights()
    assert MODEL_TYPES["perceiver_io_classifier"][1] is PerceiverClassifier
    ids, mask = batch
    logits = model(ids, attention_mask=mask)
    assert logits.shape == (3, 3)
    changed = ids.clone()
    changed[1, 9:] = (changed[1, 9:] + 1) % 30
    torch.testing.assert_close(model(changed, attention_mask=mask), logits)
    assert model(ids[:, :5]).shape == (3, 3)


def _mlm_pretrained(**overrides) -> tuple[PerceiverMLM, Pretrained]:
    torch.manual_seed(3)
    fields = {k: v for k, v in ENCODER.items()} | overrides
    mlm = PerceiverMLM(PerceiverIOConfig(**fields)).eval()
    mlm.init_weights()
    with torch.no_grad():
        for p in mlm.parameters():  # not the init values: layer norms etc. must be copied too
            p.add_(torch.randn_like(p) * 0.01)
    state = {k: v.clone() for k, v in mlm.state_dict().items()}
    return mlm, Pretrained("perceiver_io_mlm", fields, state, {"name": "byte"}, {"path": "mlm"})


def test_classifier_starts_from_the_masked_lm(batch, tmp_path):
    mlm, pretrained = _mlm_pretrained()
    cfg = classifier_config(num_classes=2)
    model = PerceiverClassifier(cfg).eval()
    model.init_weights()
    state, left = adapt_state_dict(pretrained, "perceiver_io_classifier", model)
    assert sorted(left) == ["head_fc1.bias", "head_fc1.weight", "head_fc2.bias", "head_fc2.weight"]
    model.load_state_dict(state, strict=False)
    ids, mask = batch
    torch.testing.assert_close(model.encode(ids, mask), mlm.encode(ids, mask), rtol=0, atol=0)
    # The class query is the output query of position 0, decoded by the MLM's decoder.
    z = mlm.encode(ids, mask)
    expected = mlm.decoder_cross_attention(mlm.output_queries[:1].expand(3, -1, -1), z)[:, 0]
    got = model.decoder_cross_attention(model.class_query.expand(3, -1, -1), z)[:, 0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    # The same through a native export and the trainer's entry point (checkpoint.init_from).
    export = write_native(pretrained, tmp_path / "export")
    run_cfg = _run_config(cfg, str(export))
    fresh = PerceiverClassifier(cfg)
    fresh.init_weights()
    assert load_initial_weights(fresh, run_cfg) == left
    torch.testing.assert_close(fresh.eval().encode(ids, mask), mlm.encode(ids, mask))


def _run_config(model_cfg, init_from: str):
    from pretrain.config import config_from_dict

    model = {"type": "perceiver_io_classifier", **dataclasses.asdict(model_cfg)}
    return config_from_dict(
        {
            "model": model,
            "data": {"dir": "/nonexistent"},
            "optimizer": {"name": "adamw"},
            "checkpoint": {"init_from": init_from},
        }
    )


def test_architecture_mismatch_is_refused(tmp_path):
    _, pretrained = _mlm_pretrained(num_self_attention_blocks=1)
    export = write_native(pretrained, tmp_path / "export")
    cfg = classifier_config()  # 2 blocks: same shapes, another function
    with pytest.raises(ValueError, match="model.num_self_attention_blocks: 2 differs"):
        load_initial_weights(PerceiverClassifier(cfg), _run_config(cfg, str(export)))
    with pytest.raises(ValueError, match="cannot initialise a perceiver_io_mlm from a"):
        adapt_state_dict(
            dataclasses.replace(pretrained, model_type="perceiver_io_classifier"),
            "perceiver_io_mlm",
            PerceiverMLM(PerceiverIOConfig(**ENCODER)),
        )


def _split(n: int) -> EncodedSplit:
    lengths = np.arange(n) % 7 + 3
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.concatenate([np.full(k, i + 6) for i, k in enumerate(lengths)]).astype(np.int32)
    return EncodedSplit(tokens, offsets, np.arange(n) % 2, [str(i) for i in range(n)])


def _rows(batches) -> list[list[int]]:
    return [b["row"].tolist() for b in batches]


def test_train_loader_resumes_exactly_across_epochs():
    split = _split(45)
    world, bs = 2, 4
    reference = [TrainLoader(split, bs, seed=7, rank=r, world_size=world) for r in range(world)]
    full = [[] for _ in range(world)]
    for r, loader in enumerate(reference):
        for _ in range(3):  # 3 epochs of 5 batches (45 // 8)
            full[r] += _rows(loader)
    assert len(full[0]) == 15 and len(set(map(tuple, full[0][:5]))) == 5
    epoch0 = sorted(i for r in range(world) for b in full[r][:5] for i in b)
    assert len(epoch0) == len(set(epoch0)) == 40  # 5 dropped, no repeats within an epoch
    assert full[0][:5] != full[0][5:10]  # a new order every epoch
    for stop in (3, 5, 7):  # mid-epoch, at the boundary, in the second epoch
        for r in range(world):
            first = TrainLoader(split, bs, seed=7, rank=r, world_size=world)
            seen, it = [], iter(first)
            while len(seen) < stop:
                try:
                    seen.append(next(it)["row"].tolist())
                except StopIteration:
                    it = iter(first)
            resumed = TrainLoader(split, bs, seed=7, rank=r, world_size=world)
            resumed.load_state_dict(first.state_dict())
            rest = []
            while len(seen) + len(rest) < 15:
                rest += _rows(resumed)
            assert seen + rest == full[r], (stop, r)
    with pytest.raises(ValueError, match="world_size was 2, is now 1"):
        TrainLoader(split, bs, seed=7, rank=0, world_size=1).load_state_dict(first.state_dict())


def test_batches_are_padded_to_a_multiple_of_8():
    batch = next(iter(TrainLoader(_split(10), 3, shuffle=False, rank=0, world_size=1)))
    assert batch["input_ids"].shape == (3, 8) and batch["attention_mask"].sum(1).tolist() == [
        3,
        4,
        5,
    ]
    assert (batch["input_ids"][~batch["attention_mask"]] == 0).all()


def test_eval_loader_covers_every_example_once_over_ranks():
    split = _split(23)
    seen = []
    lengths = set()
    for r in range(3):
        loader = EvalLoader(split, 4, rank=r, world_size=3)
        batches = list(loader)
        lengths.add(len(batches))
        for b in batches:
            seen += b["row"][b["weight"] > 0].tolist()
            assert b["input_ids"].shape[0] == 4
    assert lengths == {2} and sorted(seen) == list(range(23))
