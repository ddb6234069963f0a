"""ZeRO-3 with fp32 weights keeps one copy of the rank's partition, not two
(pretrain.train.zero_memory), and trains exactly as with the copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_distributed

pytestmark = pytest.mark.distributed


def _train(rank: int, world: int, out: str) -> None:
    import deepspeed

    from pretrain.train.zero_memory import share_fp32_master

    deepspeed.init_distributed("gloo")
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "gradient_clipping": 1.0,
    }
    results = {}
    for share in (False, True):
        torch.manual_seed(0)
        layers = [torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8)]
        model = torch.nn.Sequential(*layers)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        inner = engine.optimizer
        freed = share_fp32_master(inner) if share else 0
        gen = torch.Generator().manual_seed(rank)
        losses = []
        for _ in range(4):
            x = torch.randn(4, 64, generator=gen)
            loss = engine(x).square().mean()
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        pairs = zip(inner.fp32_partitioned_groups_flat, inner.fp16_partitioned_groups_flat)
        ptr = lambda t: t.untyped_storage().data_ptr()  # noqa: E731
        shared = [ptr(hp) == ptr(lp) for hp, lp in pairs]
        partition = [p.ds_tensor.detach().clone() for p in engine.module.parameters()]
        results[share] = dict(losses=losses, shared=shared, freed=freed, partition=partition)
    torch.save(results, Path(out) / f"rank{rank}.pt")


def test_fp32_zero3_shares_the_master_partition_and_trains_the_same(tmp_path) -> None:
    run_distributed(_train, 2, (str(tmp_path),))
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert not any(r[False]["shared"]), "DeepSpeed shares them itself now: drop the workaround"
        assert all(r[True]["shared"])
        params = 64 * 256 + 256 + 256 * 8 + 8
        assert r[True]["freed"] >= params // 2 * 4 - 4096  # this rank's half of the fp32 weights
        assert r[True]["losses"] == r[False]["losses"]
        for a, b in zip(r[True]["partition"], r[False]["partition"]):
            assert torch.equal(a, b)
