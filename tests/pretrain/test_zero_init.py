"""ZeRO-3 builds the model partitioned (deepspeed.zero.Init): no rank holds it whole, and the
weights equal the unpartitioned initialisation for any number of ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_distributed

pytestmark = pytest.mark.distributed


def _config(stage: int):
    from pretrain.config import config_from_dict

    return config_from_dict(
        {
            "model": {"preset": "perceiver_io_mlm_tiny"},
            "data": {"dir": "/unused"},
            "optimizer": {"name": "adamw", "lr": 1e-3},
            "trainer": {"zero_stage": stage, "precision": "fp32", "micro_batch_size": 2},
        }
    )


def _build_partitioned(rank: int, world: int, out: str) -> None:
    import deepspeed

    from pretrain.train.ds_config import build_ds_config
    from pretrain.train.parallelize import build_for_training, num_parameters

    deepspeed.init_distributed("gloo")  # joins this process group (as the trainer does)
    cfg = _config(3)
    ds_config = build_ds_config(cfg, world, False)
    model = build_for_training(cfg.model_type, cfg.model, 0, ds_config)
    total = num_parameters(model)
    held = sum(p.numel() for p in model.parameters())  # what this rank's tensors hold now
    partition = sum(p.ds_tensor.numel() for p in model.parameters())
    assert held == 0 and partition <= total / world + 64 * world * len(list(model.parameters()))
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        weights = {k: p.detach().clone() for k, p in model.named_parameters()}
    if rank == 0:
        torch.save({"weights": weights, "total": total}, Path(out) / f"world{world}.pt")


def test_zero3_builds_partitioned_with_the_weights_of_a_whole_build(tmp_path) -> None:
    from pretrain.train.parallelize import build_for_training, num_parameters

    cfg = _config(0)
    whole = build_for_training(cfg.model_type, cfg.model, 0)
    expected = dict(whole.named_parameters())
    for world in (1, 2):
        run_distributed(_build_partitioned, world, (str(tmp_path),))
        saved = torch.load(tmp_path / f"world{world}.pt")
        assert saved["total"] == num_parameters(whole) == cfg.model.num_params()
        assert saved["weights"].keys() == expected.keys()
        for name, value in saved["weights"].items():
            assert torch.equal(value, expected[name]), (world, name)
