"""make_optimizer: weight decay on conv/linear weights only, none on biases and norm parameters."""

import pytest
import torch
from torch import nn

from kdflow.config import TrainConfig
from kdflow.training.optim import make_optimizer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),  # with bias
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_param_groups_split_by_ndim(optimizer):
    net = _net()
    opt = make_optimizer(net.parameters(), TrainConfig(optimizer=optimizer, weight_decay=0.1))
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    wd_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            assert id(p) not in wd_of, "parameter in two groups"
            wd_of[id(p)] = group["weight_decay"]
    params = dict(net.named_parameters())
    assert set(wd_of) == {id(p) for p in params.values()}  # every parameter, exactly once
    for name, p in params.items():
        assert wd_of[id(p)] == (0.1 if p.ndim > 1 else 0.0), name
    # conv weight and linear weight decay; BN weight/bias and linear bias do not.
    assert {n for n, p in params.items() if wd_of[id(p)] == 0.1} == {"0.weight", "5.weight"}
    assert {n for n, p in params.items() if wd_of[id(p)] == 0.0} == {"1.weight", "1.bias", "5.bias"}


def test_sgd_keeps_nesterov_and_empty_groups_are_dropped():
    conv = nn.Conv2d(3, 4, 3, bias=False)  # no ndim <= 1 parameter at all
    opt = make_optimizer(conv.parameters(), TrainConfig(momentum=0.9, weight_decay=0.1))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[0]["nesterov"] is True
    opt = make_optimizer(nn.BatchNorm2d(4).parameters(), TrainConfig(momentum=0.0, weight_decay=0.1))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.param_groups[0]["nesterov"] is False


def test_zero_gradient_step_decays_only_weights():
    net = _net()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)  # BN weight starts at 1: make it distinctive
        net[1].bias.uniform_(-1, 1)
    lr, wd = 0.5, 0.1
    opt = make_optimizer(net.parameters(), TrainConfig(lr=lr, momentum=0.0, weight_decay=wd))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(net.named_parameters())
    # No decay: a zero gradient leaves BN weight/bias and the linear bias exactly where they were.
    for name in ("1.weight", "1.bias", "5.bias"):
        torch.testing.assert_close(after[name].detach(), before[name], rtol=0, atol=0)
    # Decay: w <- w - lr * wd * w.
    for name in ("0.weight", "5.weight"):
        w = before[name]
        torch.testing.assert_close(after[name].detach(), w - lr * wd * w)
        assert after[name].abs().sum() < w.abs().sum()
