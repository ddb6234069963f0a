"""LAMB and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.config import OptimizerConfig
from pretrain.train.optim import Lamb, lr_lambda, param_groups


def test_lamb_trust_ratio_scales_update():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = Lamb([p], lr=0.1, eps=1e-12, weight_decay=0.0)
    p.grad = torch.tensor([2.0, 0.0])
    opt.step()
    # u = [1, 0], ||u|| = 1, trust ratio = ||p|| / ||u|| = 5  ->  p - 0.1 * 5 * u
    torch.testing.assert_close(p.detach(), torch.tensor([2.5, 4.0]))


def test_lamb_trust_ratio_is_clamped_and_weight_decay_applies():
    p = torch.nn.Parameter(torch.full((4,), 100.0))  # ||p|| = 200
    opt = Lamb([p], lr=0.01, eps=1e-12, weight_decay=0.0, max_coeff=10.0)
    p.grad = torch.ones(4)
    opt.step()
    # u = 1 per coordinate, ||u|| = 2, ratio 100 clamped to 10  ->  100 - 0.01 * 10
    torch.testing.assert_close(p.detach(), torch.full((4,), 99.9))
    q = torch.nn.Parameter(torch.ones(2))
    opt = Lamb([q], lr=0.1, eps=1e-12, weight_decay=1.0)
    q.grad = torch.zeros(2)
    opt.step()  # u = wd * q = q  ->  ratio 1  ->  q - 0.1 * q
    torch.testing.assert_close(q.detach(), torch.full((2,), 0.9))


def test_lamb_trains_a_regression():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    w_true = torch.randn(8, 1)
    y = x @ w_true
    model = torch.nn.Linear(8, 1)
    opt = Lamb(model.parameters(), lr=0.05)
    first = None
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * first


def test_param_groups_exclude_biases_and_norms_from_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warmup_then_decay(schedule):
    cfg = OptimizerConfig(warmup_steps=10, schedule=schedule, min_lr_ratio=0.1)
    f = lr_lambda(cfg, max_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    end = {"cosine": 0.1, "linear": 0.1, "constant": 1.0}[schedule]
    assert f(110) == pytest.approx(end)
    if schedule == "cosine":
        assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
