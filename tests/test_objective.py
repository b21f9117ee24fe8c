"""The diffusion training loss: oracle model, hand computation, Min-SNR weights, timestep draws."""

import pytest
import torch

from latent_diffusion.diffusion import DiffusionConfig, NoiseSchedule, diffusion_loss, min_snr_weight, target

KINDS = ("eps", "x0", "v")


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_config(DiffusionConfig())


def data(seed=0, dtype=torch.float32):
    return torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def oracle(x0, schedule, kind):
    """A perfect model: it knows x0, so from x_t it recovers the exact noise and any target."""
    def model(xt, t):
        a = schedule.alpha_bar(t).view(-1, 1, 1, 1)
        noise = (xt.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()
        return target(kind, x0.double(), noise, schedule.alpha_bar(t)).to(xt.dtype)
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_oracle_model_has_zero_loss(schedule, kind):
    x0 = data(dtype=torch.float64)
    loss = diffusion_loss(oracle(x0, schedule, kind), x0, schedule, kind, generator=torch.Generator().manual_seed(1))
    assert loss.item() < 1e-18
    loss = diffusion_loss(oracle(x0, schedule, kind), x0, schedule, kind, min_snr_gamma=5.0,
                          generator=torch.Generator().manual_seed(1))
    assert loss.item() < 1e-18


@pytest.mark.parametrize("kind", KINDS)
def test_loss_matches_hand_computation(schedule, kind):
    x0 = data()
    seen = {}

    def zero_model(xt, t, context=None):
        seen["xt"], seen["t"], seen["context"] = xt, t, context
        return torch.zeros_like(xt)

    losses = diffusion_loss(zero_model, x0, schedule, kind, cond={"context": "c"}, reduction="none",
                            generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # same draws, same order: timesteps then noise
    t = torch.randint(0, 1000, (16,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    assert torch.equal(seen["t"], t) and seen["context"] == "c"
    torch.testing.assert_close(seen["xt"], schedule.q_sample(x0, t, noise))
    expected = target(kind, x0.double(), noise.double(), schedule.alpha_bar(t)).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses, expected.float(), rtol=1e-5, atol=1e-7)
    assert losses.shape == (16,)


def test_min_snr_weights_closed_form():
    snr = torch.tensor([0.01, 1.0, 5.0, 100.0], dtype=torch.float64)
    gamma = 5.0
    clipped = torch.tensor([0.01, 1.0, 5.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(min_snr_weight(snr, "eps", gamma), clipped / snr)
    torch.testing.assert_close(min_snr_weight(snr, "x0", gamma), clipped)
    torch.testing.assert_close(min_snr_weight(snr, "v", gamma), clipped / (snr + 1))
    # Each weight turns its loss into the same x0-space loss weighted by min(snr, gamma):
    # ||eps err||^2 = snr ||x0 err||^2 and ||v err||^2 = (snr + 1) ||x0 err||^2.
    torch.testing.assert_close(min_snr_weight(snr, "eps", gamma) * snr, clipped)
    torch.testing.assert_close(min_snr_weight(snr, "v", gamma) * (snr + 1), clipped)


def test_min_snr_weighting_is_applied_per_sample(schedule):
    x0 = data()
    t = torch.tensor([0, 10, 100, 300, 500, 700, 900, 999] * 2)
    zero = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    plain = diffusion_loss(zero, x0, schedule, "eps", timesteps=t, generator=gen(), reduction="none")
    weighted = diffusion_loss(zero, x0, schedule, "eps", timesteps=t, generator=gen(), reduction="none",
                              min_snr_gamma=5.0)
    snr = schedule.snr(t)
    torch.testing.assert_close(weighted, plain * (snr.clamp(max=5.0) / snr).float())
    assert weighted.mean().isfinite()


def test_timesteps_cover_the_range_uniformly(schedule):
    seen = []
    model = lambda xt, t: (seen.append(t), torch.zeros_like(xt))[1]  # noqa: E731
    diffusion_loss(model, torch.zeros(20000, 1), schedule, "eps", generator=torch.Generator().manual_seed(5))
    t = seen[0].double()
    assert t.min() == 0 and t.max() == 999
    # Uniform on {0..999}: mean 499.5, std 288.7; 5 standard errors of the mean is ~10.
    assert abs(t.mean().item() - 499.5) < 10
    assert abs(t.std().item() - 288.7) < 5


def test_loss_is_finite_and_differentiable_under_bf16_autocast(schedule):
    net = torch.nn.Conv2d(4, 4, 3, padding=1)
    model = lambda xt, t: net(xt)  # noqa: E731
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion_loss(model, data(), schedule, "v", generator=torch.Generator().manual_seed(6))
    assert loss.dtype == torch.float32 and loss.isfinite()
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.isfinite().all()


def test_bad_input(schedule):
    x0 = data()
    zero = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    with pytest.raises(ValueError, match=r"prediction='score'.*\['eps', 'x0', 'v'\]"):
        diffusion_loss(zero, x0, schedule, "score")
    with pytest.raises(ValueError, match=r"reduction='sum'.*\['mean', 'none'\]"):
        diffusion_loss(zero, x0, schedule, "eps", reduction="sum")
    with pytest.raises(ValueError, match=r"timesteps must have shape \[16\]"):
        diffusion_loss(zero, x0, schedule, "eps", timesteps=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="model output shape"):
        diffusion_loss(lambda xt, t: xt[:, :1], x0, schedule, "eps")
