"""Per-module learning rates (``optim.lr_scale``): grouping, the AdamW step they give, the schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latent_diffusion.training.optim import base_lr, build_optimizer, scaled_param_groups, warmup_schedule
from latent_diffusion.training.settings import OptimConfig


def small_net() -> nn.Module:
    """Names like the UNet's: ``out.*`` beside ``output_blocks.*``, and a nested ``body.1.*``."""
    torch.manual_seed(0)
    net = nn.Module()
    net.body = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    net.output_blocks = nn.Linear(3, 3)
    net.out = nn.Linear(3, 2)
    return net


def names_by_group(net: nn.Module, groups: list[dict]) -> list[tuple[float, list[str]]]:
    ids = {id(p): n for n, p in net.named_parameters()}
    return [(g["lr"], [ids[id(p)] for p in g["params"]]) for g in groups]


def test_prefixes_match_whole_name_parts_and_the_longest_wins() -> None:
    net = small_net()
    groups = scaled_param_groups(net.named_parameters(), {"out": 10, "body": 2, "body.1": 0.5}, lr=1e-3)
    got = names_by_group(net, groups)
    # Unmatched first (the base rate), then the keys in sorted order.
    assert got[0] == (1e-3, ["output_blocks.weight", "output_blocks.bias"])
    assert got[1] == (pytest.approx(2e-3), ["body.0.weight", "body.0.bias"])
    assert got[2] == (pytest.approx(5e-4), ["body.1.weight", "body.1.bias"])
    assert got[3] == (pytest.approx(1e-2), ["out.weight", "out.bias"])
    assert [g["lr_scale"] for g in groups] == [1.0, 2.0, 0.5, 10.0]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_no_scales_is_one_group_in_parameter_order() -> None:
    net = small_net()
    groups = scaled_param_groups(net.named_parameters(), {}, lr=1e-3)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in net.parameters()]


def test_frozen_parameters_are_left_out() -> None:
    net = small_net()
    net.body.requires_grad_(False)
    groups = scaled_param_groups(net.named_parameters(), {"out": 3}, lr=1e-3)
    assert names_by_group(net, groups)[0][1] == ["output_blocks.weight", "output_blocks.bias"]
    with pytest.raises(ValueError, match=r"\['body'\] match\(es\) no trainable parameter"):
        scaled_param_groups(net.named_parameters(), {"body": 3}, lr=1e-3)


@pytest.mark.parametrize("scales, message", [
    ({"outt": 2}, r"\['outt'\] match\(es\) no trainable parameter; names start with one of \['body', 'out', "
                  r"'output_blocks'\]"),
    ({"out": 0}, r"optim.lr_scale\['out'\]=0 must be a finite number > 0"),
    ({"out": -1.0}, "must be a finite number > 0"),
    ({"out": math.inf}, "must be a finite number > 0"),
    ({"out": True}, "must be a finite number > 0"),
    ({"": 2}, "keys must be parameter name prefixes"),
])
def test_bad_scales_are_refused_by_name(scales: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scaled_param_groups(small_net().named_parameters(), scales, lr=1e-3)


def test_the_config_refuses_bad_scales_before_training() -> None:
    with pytest.raises(ValueError, match=r"optim.lr_scale\['out'\]=-2 must be a finite number > 0"):
        OptimConfig(lr=1e-3, lr_scale={"out": -2})
    config = OptimConfig().with_overrides(["lr_scale={context_pool_proj: 10}"])
    assert config.lr_scale == {"context_pool_proj": 10}
    assert OptimConfig.from_dict(config.to_dict()) == config


def test_adamw_first_step_moves_each_group_by_its_own_rate() -> None:
    """Adam's first update is lr * g / (|g| + eps) (bias-corrected moments m = g, v = g^2): with eps
    negligible, every weight moves by its group's lr, against the sign of its gradient."""
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = build_optimizer(scaled_param_groups(net.named_parameters(), {"out": 10}, lr=1e-3), lr=1e-3,
                                eps=1e-12)
    net.out(net.output_blocks(net.body(torch.randn(5, 3)))).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    optimizer.step()
    for name, param in net.named_parameters():
        rate = 1e-2 if name.startswith("out.") else 1e-3
        expected = before[name] - rate * torch.sign(grads[name])
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-7, msg=name)


def test_the_schedule_scales_every_group_and_base_lr_reads_the_base_rate() -> None:
    net = small_net()
    optimizer = build_optimizer(scaled_param_groups(net.named_parameters(), {"out": 10}, lr=1e-3), lr=1e-3)
    scheduler = warmup_schedule(optimizer, warmup_steps=4, total_steps=20, kind="cosine")
    for step in range(20):
        factor = (step + 1) / 4 if step < 4 else 0.5 * (1 + math.cos(math.pi * (step - 4) / 16))
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs == pytest.approx([1e-3 * factor, 1e-2 * factor]), step
        assert base_lr(optimizer) == pytest.approx(1e-3 * factor)
        optimizer.step()
        scheduler.step()
    # Every parameter scaled: base_lr still reads the base rate, not the first group's.
    optimizer = build_optimizer(scaled_param_groups(net.named_parameters(), {"body": 4, "out": 4,
                                                                             "output_blocks": 4}, lr=1e-3), lr=1e-3)
    assert base_lr(optimizer) == pytest.approx(1e-3)
