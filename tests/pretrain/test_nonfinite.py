"""A step skipped for a non-finite loss leaves no trace, on real DeepSpeed engines of 2 ranks."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_distributed

pytestmark = [pytest.mark.distributed]

# (zero stage, precision, optimizer): DeepSpeed's own optimizers (bf16 at stage 0, ZeRO 2 and 3)
# and a plain torch optimizer under the engine (fp32 at stage 0, LAMB with bf16 autocast)
ENGINES = ((0, "fp32", "adamw"), (0, "bf16", "adamw"), (0, "bf16", "lamb"), (2, "bf16", "adamw"))
ENGINES += ((3, "fp32", "adamw"),)


def _skip_changes_nothing(rank: int, world: int) -> None:
    from pretrain.config import config_from_dict
    from pretrain.glue.probes import gather_state_dict
    from pretrain.models.perceiver_io import PerceiverMLM
    from pretrain.train.distributed import any_rank
    from pretrain.train.engine import build_engine, skip_step

    for stage, precision, opt in ENGINES:
        cfg = config_from_dict(
            {
                "model": {"preset": "perceiver_io_mlm_tiny", "max_seq_len": 32},
                "data": {"dir": "/unused"},
                "optimizer": {"name": opt, "lr": 1e-2, "warmup_steps": 0, "schedule": "constant"},
                "trainer": {"zero_stage": stage, "precision": precision, "micro_batch_size": 2},
            }
        )
        gen = torch.Generator().manual_seed(rank)
        batches = [torch.randint(6, 262, (2, 32), generator=gen) for _ in range(3)]
        weights = []
        for skip in (False, True):
            torch.manual_seed(0)
            model = PerceiverMLM(cfg.model)
            model.init_weights()
            engine = build_engine(cfg, model, torch.device("cpu"), world, False)

            def loss_of(ids, engine=engine, precision=precision):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = engine(ids)
                return torch.nn.functional.cross_entropy(
                    logits.float().flatten(0, 1), ids.flatten()
                )

            engine.backward(loss_of(batches[0]))
            engine.step()
            if skip:
                before = gather_state_dict(engine, rank == 0)
                loss = loss_of(batches[1])
                if rank == 1:  # one rank diverges: every rank must skip
                    loss = loss * float("inf")
                flag = (~torch.isfinite(loss.detach())).float()
                assert any_rank(flag)
                skip_step(engine, loss)
                after = gather_state_dict(engine, rank == 0)
                if rank == 0:
                    assert all(torch.equal(before[k], after[k]) for k in before), (stage, opt)
            engine.backward(loss_of(batches[2]))
            engine.step()
            weights.append(gather_state_dict(engine, rank == 0))
        if rank == 0:  # the next step is exactly the step of a run that never saw the bad batch
            plain, skipped = weights
            changed = [k for k in plain if not torch.equal(plain[k], skipped[k])]
            assert not changed, (stage, precision, opt, changed[:3])


def test_skipped_step_changes_no_weight_and_no_optimizer_state():
    run_distributed(_skip_changes_nothing, 2)
