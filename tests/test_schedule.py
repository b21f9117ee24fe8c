"""Noise schedules and the forward process, against closed forms and diffusers' DDPMScheduler."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from latent_diffusion.diffusion import DiffusionConfig, NoiseSchedule, make_betas

DIFFUSERS_NAMES = {"linear": "linear", "linear_in_sqrt_beta": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def schedule(name: str = "linear_in_sqrt_beta", **kwargs) -> NoiseSchedule:
    return NoiseSchedule.from_config(DiffusionConfig(schedule=name, **kwargs))


@pytest.mark.parametrize("name", ["linear", "linear_in_sqrt_beta"])
def test_beta_endpoints_are_the_configured_values(name):
    s = schedule(name, beta_start=0.0015, beta_end=0.0195)
    assert s.betas[0].item() == pytest.approx(0.0015, rel=1e-14)
    assert s.betas[-1].item() == pytest.approx(0.0195, rel=1e-14)
    assert s.betas.dtype == torch.float64 and s.num_timesteps == 1000


def test_linear_in_sqrt_beta_is_linear_in_sqrt_beta_not_in_beta():
    sqrt_betas = schedule().betas.sqrt()
    steps = sqrt_betas.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()), rtol=1e-9, atol=0)
    assert not torch.allclose(schedule().betas.diff(), schedule().betas.diff()[0].expand(999))


@pytest.mark.parametrize("name", ["linear", "linear_in_sqrt_beta", "cosine"])
def test_alphas_cumprod_decrease_and_sigmas_increase(name):
    s = schedule(name)
    assert bool((s.alphas_cumprod.diff() < 0).all())
    assert bool((s.sigmas.diff() > 0).all())
    torch.testing.assert_close(s.sigmas, ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt())


@pytest.mark.parametrize("name", ["linear", "linear_in_sqrt_beta", "cosine"])
def test_betas_equal_diffusers_ddpm_scheduler(name):
    ours = schedule(name)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule=DIFFUSERS_NAMES[name])
    # diffusers builds its tables in float32; ours are float64.
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=2e-5, atol=1e-9)


def test_cosine_matches_nichol_dhariwal_closed_form():
    s = schedule("cosine", num_timesteps=100)
    f = lambda t: math.cos((t / 100 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 50, 90):  # unclipped region: alpha_bar_t = f(t + 1) / f(0)
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert s.betas.max().item() == pytest.approx(0.999)  # the final beta is clipped


def test_q_sample_moments():
    s = schedule()
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([1.5, -0.7, 0.3], dtype=torch.float64)
    for t in (0, 100, 500, 999):
        noise = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        xt = s.q_sample(x0.expand(n, 3), torch.full((n,), t), noise)
        a = s.alphas_cumprod[t].item()
        mean_tol = 5 * math.sqrt((1 - a) / n)  # 5 Monte-Carlo standard errors
        torch.testing.assert_close(xt.mean(0), math.sqrt(a) * x0, atol=mean_tol, rtol=0)
        var_tol = 5 * (1 - a) * math.sqrt(2 / n)
        torch.testing.assert_close(xt.var(0), torch.full((3,), 1 - a, dtype=torch.float64), atol=var_tol, rtol=0)


def test_q_sample_rejects_bad_input():
    s = schedule()
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="one timestep per sample"):
        s.q_sample(x0, torch.tensor([1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.q_sample(x0, torch.tensor([0, 1000]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="integer"):
        s.q_sample(x0, torch.tensor([0.0, 1.0]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="noise shape"):
        s.q_sample(x0, torch.tensor([0, 1]), torch.zeros(2, 4))


def test_snr_is_inverse_sigma_squared():
    s = schedule()
    t = torch.arange(0, 1000, 37)
    torch.testing.assert_close(s.snr(t), s.sigma(t) ** -2, rtol=1e-12, atol=0)


def test_sigma_to_t_and_t_to_sigma_invert_each_other():
    s = schedule()
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(500, generator=gen, dtype=torch.float64) * 999
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    sigma = torch.exp(torch.empty(500, dtype=torch.float64).uniform_(
        math.log(s.sigma_min), math.log(s.sigma_max), generator=gen))
    torch.testing.assert_close(s.t_to_sigma(s.sigma_to_t(sigma)), sigma, rtol=1e-12, atol=0)
    integers = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(s.t_to_sigma(integers), s.sigmas, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sigma_to_t(s.sigmas), integers, rtol=0, atol=1e-9)


def test_sigma_to_t_matches_diffusers_and_clamps():
    s = schedule()
    sigma = torch.tensor([1e-4, 0.03, 0.5, 1.0, 3.3, 14.0, 100.0], dtype=torch.float64)
    ref = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    expected = ref._sigma_to_t(sigma.numpy(), s.log_sigmas.numpy())
    np.testing.assert_allclose(s.sigma_to_t(sigma).numpy(), expected, rtol=0, atol=1e-9)
    assert s.sigma_to_t(sigma)[0] == 0 and s.sigma_to_t(sigma)[-1] == 999


def test_t_to_sigma_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        schedule().t_to_sigma(torch.tensor([1000.0]))


def test_config_round_trip_and_bad_names(tmp_path):
    cfg = DiffusionConfig(schedule="cosine", prediction="v", min_snr_gamma=5.0)
    cfg.save(tmp_path / "d.yaml")
    assert DiffusionConfig.load(tmp_path / "d.yaml") == cfg
    with pytest.raises(ValueError, match=r"'scaled_linear'.*linear_in_sqrt_beta"):
        DiffusionConfig(schedule="scaled_linear")
    with pytest.raises(ValueError, match=r"'quadratic'.*\['linear', 'linear_in_sqrt_beta', 'cosine'\]"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="scaled_linear"):
        DiffusionConfig.from_dict({"schedule": "scaled_linear"})
    with pytest.raises(ValueError, match=r"prediction='sample'.*\['eps', 'x0', 'v'\]"):
        DiffusionConfig(prediction="sample")


@pytest.mark.parametrize("kwargs", [
    {"beta_start": 0.02, "beta_end": 0.01}, {"beta_start": 0.0}, {"num_timesteps": 1},
    {"min_snr_gamma": 0.0},
])
def test_config_rejects_bad_numbers(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DiffusionConfig(**kwargs)
