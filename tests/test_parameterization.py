"""eps / x0 / v conversions: exact inverses of each other, consistent with the forward process."""

import itertools

import pytest
import torch

from latent_diffusion.diffusion import DiffusionConfig, NoiseSchedule, convert, target, to_eps, to_v, to_x0

KINDS = ("eps", "x0", "v")


def noisy_batch(seed: int = 0):
    schedule = NoiseSchedule.from_config(DiffusionConfig())
    gen = torch.Generator().manual_seed(seed)
    t = torch.tensor([0, 1, 10, 100, 250, 500, 750, 900, 990, 999])
    x0 = torch.randn(len(t), 3, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    a = schedule.alpha_bar(t)
    return x0, noise, schedule.q_sample(x0, t, noise), a


@pytest.mark.parametrize("kind", KINDS)
def test_the_target_converts_back_to_x0_and_eps(kind):
    x0, noise, xt, a = noisy_batch()
    goal = target(kind, x0, noise, a)
    torch.testing.assert_close(to_x0(goal, xt, a, kind), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(to_eps(goal, xt, a, kind), noise, rtol=0, atol=1e-9)
    torch.testing.assert_close(to_v(goal, xt, a, kind), target("v", x0, noise, a), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("source", "dest"), list(itertools.permutations(KINDS, 2)))
def test_conversions_invert_each_other_for_arbitrary_predictions(source, dest):
    # Not only true targets: any prediction maps to dest and back to itself.
    _, _, xt, a = noisy_batch(1)
    prediction = torch.randn(xt.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    there = convert(prediction, xt, a, source, dest)
    torch.testing.assert_close(convert(there, xt, a, dest, source), prediction, rtol=1e-9, atol=1e-9)


def test_v_definition_and_scalar_alpha_bar():
    x0, noise = torch.tensor([2.0]), torch.tensor([-1.0])
    a = 0.36  # sqrt(a) = 0.6, sqrt(1 - a) = 0.8
    assert target("v", x0, noise, a).item() == pytest.approx(0.6 * -1.0 - 0.8 * 2.0)
    xt = 0.6 * x0 + 0.8 * noise
    assert to_x0(target("v", x0, noise, a), xt, a, "v").item() == pytest.approx(2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_inputs_stay_float32_and_match_float64(kind):
    """A float64 alpha-bar table must neither promote a float32 batch nor cost it accuracy."""
    x0, noise, xt, a = noisy_batch()
    goal = target(kind, x0, noise, a)
    out = to_x0(goal.float(), xt.float(), a, kind)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), x0, rtol=0, atol=1e-3)


def test_bad_kind_and_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"kind='score'.*\['eps', 'x0', 'v'\]"):
        to_x0(x, x, 0.5, "score")
    with pytest.raises(ValueError, match="3 entries but the batch has 2"):
        to_eps(x, x, torch.tensor([0.1, 0.2, 0.3]), "v")
    with pytest.raises(ValueError, match="does not fit"):
        to_v(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3), "eps")
