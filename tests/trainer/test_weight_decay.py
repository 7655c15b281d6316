"""``optim.decay_norm_bias``: weight decay on every parameter (the default, as every study
before the option trained), or timm's recipe that leaves normalisation weights and biases
undecayed."""

from __future__ import annotations

import pytest
import torch
from timm.optim import param_groups_weight_decay
from torch import nn

import trainer
from trainer import OptimConfig, TrainConfig


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_the_default_decays_every_parameter_as_before():
    net = model()
    net(torch.zeros(1, 3, 5, 5))
    opt = trainer.create_optimizer(net, OptimConfig(name="adamw", weight_decay=0.1))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    assert _ids(opt.param_groups[0]["params"]) == _ids(net.parameters())
    # a trial stored before the option (no such key in its config) means the same
    assert TrainConfig.from_flat({"optim.weight_decay": 0.1}).optim.decay_norm_bias is True


@pytest.mark.parametrize("name", ["sgd", "adamw", "sam_sgd"])
def test_off_it_is_timms_groups(name):
    net = model()
    net(torch.zeros(1, 3, 5, 5))
    cfg = OptimConfig(name=name, weight_decay=0.1, decay_norm_bias=False)
    opt = trainer.create_optimizer(net, cfg)
    got = {g["weight_decay"]: _ids(g["params"]) for g in opt.param_groups}
    want = {g["weight_decay"]: _ids(g["params"]) for g in param_groups_weight_decay(net, 0.1)}
    assert got == want
    bn, linear = net[1], net[3]
    assert _ids([bn.weight, bn.bias, net[0].bias, linear.bias]) == got[0.0]
    assert _ids([net[0].weight, linear.weight]) == got[0.1]


def test_a_normalisation_weight_shrinks_only_when_decayed():
    after = {}
    for decay in (True, False):
        net = model()
        net(torch.zeros(1, 3, 5, 5))
        cfg = OptimConfig(name="adamw", lr=0.1, weight_decay=0.5, decay_norm_bias=decay)
        opt = trainer.create_optimizer(net, cfg)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)  # no gradient: only the decay moves anything
        opt.step()
        after[decay] = net[1].weight.detach().clone()
    assert torch.allclose(after[True], torch.full((4,), 1 - 0.1 * 0.5))  # AdamW: w -= lr*wd*w
    assert torch.equal(after[False], torch.ones(4))


def test_bare_parameters_are_grouped_by_shape():
    w, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    opt = trainer.create_optimizer([w, b], OptimConfig(weight_decay=0.1, decay_norm_bias=False))
    assert [(g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [(0.0, 1), (0.1, 1)]


def test_a_run_without_decay_on_norms_and_biases_trains():
    cfg = TrainConfig.from_flat(
        {
            "data.image_size": 8, "model.backbone": "small_cnn", "model.width": 4,
            "optim.name": "sam_adam", "optim.weight_decay": 0.01,
            "optim.decay_norm_bias": False, "train.epochs": 1,
        }
    )  # fmt: skip
    result = trainer.train(cfg)
    assert result.status == "complete" and result.best_val_acc > 0.1
