"""Samplers against closed forms: Gaussian data has an exact denoiser and an exact ODE solution.

For x0 ~ N(mu, S) with S = Q diag(lam) Q^T and x = x0 + sigma * eps, the exact denoiser is
E[x0 | x] = mu + S (S + sigma^2 I)^-1 (x - mu), and the probability-flow ODE scales each coordinate
of x - mu in S's eigenbasis by sqrt(lam + sigma^2). Every sampler here is affine in x for such a
denoiser, so its behaviour can be worked out per eigen-coordinate by hand.
"""

import math

import pytest
import torch

from latent_diffusion.diffusion import DiffusionConfig, NoiseSchedule, convert
from latent_diffusion.sampling import (
    SAMPLERS,
    DiscreteDenoiser,
    get_sampler,
    get_sigmas,
    get_timesteps,
    initial_latent,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
)

SCHEDULE = NoiseSchedule.from_config(DiffusionConfig())
LAM = torch.tensor([2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
MU = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=torch.float64)


class Gaussian:
    """N(MU, Q diag(LAM) Q^T) with a seeded random rotation Q, and its exact denoiser."""

    def __init__(self, dtype=torch.float64):
        q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        self.q, self.lam, self.mu = q.to(dtype), LAM.to(dtype), MU.to(dtype)
        self.cov = self.q @ torch.diag(self.lam) @ self.q.T

    def denoise(self, x, sigma):
        """E[x0 | x] for x of shape [batch, 4] (or [batch, 4, 1, 1]) and sigma of shape [batch]."""
        flat = x.reshape(x.shape[0], 4)
        shrink = self.lam / (self.lam + sigma.to(x.dtype)[:, None] ** 2)
        return (self.mu + ((flat - self.mu) @ self.q * shrink) @ self.q.T).reshape(x.shape)

    def model(self, kind):
        """A discrete-time network that predicts ``kind`` exactly: model(x_t, t) in DDPM coordinates."""
        def net(x_t, t):
            sigma = SCHEDULE.t_to_sigma(t).to(x_t.dtype)
            alpha_bar = (1 / (1 + sigma**2)).view(-1, *([1] * (x_t.ndim - 1)))
            x0 = self.denoise(x_t / alpha_bar.sqrt(), sigma)
            return convert(x0, x_t, 1 / (1 + sigma**2), "x0", kind)
        return net

    def start(self, n, sigma, seed):
        """Exact samples of the noisy marginal N(mu, S + sigma^2 I), so only the sampler is on trial."""
        z = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=self.lam.dtype)
        chol = torch.linalg.cholesky(self.cov + float(sigma) ** 2 * torch.eye(4, dtype=self.lam.dtype))
        return self.mu + z @ chol.T

    def ode(self, x, sigma, sigma_to=0.0):
        """The probability-flow ODE's exact solution from ``sigma`` down to ``sigma_to``."""
        gain = ((self.lam + float(sigma_to) ** 2) / (self.lam + float(sigma) ** 2)).sqrt()
        return self.mu + ((x - self.mu) @ self.q * gain) @ self.q.T


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These tests run thousands of tiny tensor ops, where a second intra-op thread only adds
    synchronisation (50x slower on a shared 2-core machine); restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gauss():
    return Gaussian()


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_discrete_denoiser_is_the_exact_denoiser_for_every_parameterization(gauss, kind):
    denoiser = DiscreteDenoiser(gauss.model(kind), SCHEDULE, kind)
    gen = torch.Generator().manual_seed(1)
    sigma = torch.exp(torch.empty(64, dtype=torch.float64).uniform_(math.log(0.03), math.log(14.6), generator=gen))
    x = gauss.mu + torch.randn(64, 4, generator=gen, dtype=torch.float64) * (1 + sigma[:, None])
    torch.testing.assert_close(denoiser(x, sigma), gauss.denoise(x, sigma), rtol=0, atol=1e-9)
    eps = (x - gauss.denoise(x, sigma)) / sigma[:, None]
    torch.testing.assert_close(denoiser.eps(x, sigma), eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(denoiser(x[:1], sigma[0]), gauss.denoise(x[:1], sigma[:1]), rtol=0, atol=1e-9)


def test_discrete_denoiser_feeds_the_model_scaled_input_and_timesteps():
    seen = {}

    def net(x_t, t, **cond):
        seen.update(x_t=x_t, t=t, cond=cond)
        return torch.zeros_like(x_t)

    x = torch.ones(2, 3)
    sigma = SCHEDULE.sigmas[[10, 500]].float()
    out = DiscreteDenoiser(net, SCHEDULE, "eps")(x, sigma, context="c")
    torch.testing.assert_close(seen["x_t"], x / (sigma[:, None] ** 2 + 1).sqrt())
    torch.testing.assert_close(seen["t"], torch.tensor([10.0, 500.0]), rtol=0, atol=1e-3)
    assert seen["cond"] == {"context": "c"} and out.dtype == torch.float32
    torch.testing.assert_close(out, x)  # eps = 0 means x0 = x
    DiscreteDenoiser(net, SCHEDULE, "eps", quantize=True)(x, SCHEDULE.t_to_sigma(torch.tensor([10.3, 499.6])))
    assert torch.equal(seen["t"], torch.tensor([10.0, 500.0]))


def eta_family_variance(sigmas, eta):
    """Exact output variance per eigen-coordinate of DDIM(eta) / Euler-ancestral(eta), by hand.

    Centred coordinate y with denoised f y, f = lam / (lam + s^2): the step to s' is
    y' = (f + s_down (1 - f) / s) y + s_up z, s_up = eta s' sqrt(s^2 - s'^2) / s,
    s_down = sqrt(s'^2 - s_up^2); the variance follows v' = m^2 v + s_up^2 from v = lam + s0^2.
    """
    v = LAM + sigmas[0] ** 2
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        f = LAM / (LAM + s**2)
        s_up = eta * s_next * (s**2 - s_next**2).sqrt() / s
        s_down = (s_next**2 - s_up**2).clamp(min=0).sqrt()
        v = (f + s_down * (1 - f) / s) ** 2 * v + s_up**2
    return v


def check_moments(samples, gauss, expected_var, extra_rel_tol=0.0):
    """Mean and covariance (in S's eigenbasis) within 4 Monte-Carlo standard errors (+ allowance)."""
    n = samples.shape[0]
    mean_se = (expected_var / n).sqrt()
    assert ((samples.mean(0) - gauss.mu) @ gauss.q).abs().le(4 * mean_se).all()
    cov = gauss.q.T @ torch.cov(samples.T) @ gauss.q
    # SE of a sample covariance entry of Gaussians: sqrt((v_i v_j + [i == j] v_i^2) / n).
    se = ((expected_var[:, None] * expected_var[None, :] + torch.diag(expected_var**2)) / n).sqrt()
    tol = 4 * se + extra_rel_tol * torch.diag(expected_var)
    err = (cov - torch.diag(expected_var)).abs()
    assert bool((err <= tol).all()), f"covariance error {err} exceeds {tol}"


N_SAMPLES = 8000


@pytest.mark.parametrize(("name", "eta"), [
    ("ddim", 0.0), ("euler", 0.0), ("ddim", 0.5), ("euler_ancestral", 0.5), ("euler_ancestral", 1.0), ("ddpm", 1.0),
])
def test_first_order_samplers_match_their_exact_discretized_moments(gauss, name, eta):
    sigmas = get_sigmas(SCHEDULE, 50, "karras")
    options = {"eta": eta} if name in ("ddim", "euler_ancestral") else {}
    denoiser = DiscreteDenoiser(gauss.model("eps"), SCHEDULE, "eps")
    x = gauss.start(N_SAMPLES, sigmas[0], seed=2)
    out = get_sampler(name)(denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), **options)
    expected = eta_family_variance(sigmas, eta)
    check_moments(out, gauss, expected)
    # The first-order discretization bias itself is small at 50 steps, and vanishes with more steps
    # up to the unavoidable final denoise at sigma_min (variance lam^2 / (lam + sigma_min^2)).
    assert ((expected / LAM - 1).abs() < 0.15).all()
    fine = eta_family_variance(get_sigmas(SCHEDULE, 1000, "karras"), eta)
    truncated = LAM**2 / (LAM + SCHEDULE.sigma_min**2)
    assert ((fine / truncated - 1).abs() < 0.01).all()


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m"])
def test_second_order_samplers_reproduce_the_target(gauss, name):
    sigmas = get_sigmas(SCHEDULE, 50, "karras")
    denoiser = DiscreteDenoiser(gauss.model("v"), SCHEDULE, "v")
    out = get_sampler(name)(denoiser, gauss.start(N_SAMPLES, sigmas[0], seed=4), sigmas)
    # An exact solver ends with E[x0 | x] at sigma_min, variance lam^2 / (lam + sigma_min^2).
    # Allowance: at 50 Karras steps their gain error against the exact ODE is < 0.25% per
    # eigen-direction (test_ddim_and_dpmpp_2m_agree_with_the_exact_ode), so < 0.5% in variance.
    check_moments(out, gauss, LAM**2 / (LAM + SCHEDULE.sigma_min**2), extra_rel_tol=0.005)


def test_ddim_equals_its_closed_form_map(gauss):
    # DDIM with eta 0 maps y to prod_i (lam + s_i s_{i+1}) / (lam + s_i^2) y per eigen-coordinate.
    sigmas = get_sigmas(SCHEDULE, 20, "leading")
    x = gauss.start(16, sigmas[0], seed=5)
    out = sample_ddim(DiscreteDenoiser(gauss.model("x0"), SCHEDULE, "x0"), x, sigmas)
    gain = torch.ones(4, dtype=torch.float64)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        gain = gain * (LAM + s * s_next) / (LAM + s**2)
    expected = gauss.mu + ((x - gauss.mu) @ gauss.q * gain) @ gauss.q.T
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def ode_errors(gauss, sampler, spacing, steps):
    """Worst relative error, over S's eigen-directions, of a sampler against the exact ODE.

    The reference is the ODE solved exactly to the last nonzero sigma, then the final denoise, as
    every sampler here ends.
    """
    sigmas = get_sigmas(SCHEDULE, steps, spacing)
    x = gauss.mu + (gauss.q * (LAM + sigmas[0] ** 2).sqrt()).T  # one sample along each eigenvector
    reference = gauss.denoise(gauss.ode(x, sigmas[0], sigmas[-2]), sigmas[-2].expand(4))
    out = sampler(DiscreteDenoiser(gauss.model("eps"), SCHEDULE, "eps"), x, sigmas)
    return ((out - reference).norm(dim=1) / (reference - gauss.mu).norm(dim=1)).max().item()


def test_ddim_and_dpmpp_2m_agree_with_the_exact_ode(gauss):
    ddim = {n: ode_errors(gauss, sample_ddim, "karras", n) for n in (20, 40)}
    dpm = {n: ode_errors(gauss, sample_dpmpp_2m, "karras", n) for n in (20, 40)}
    # Measured at 20 Karras steps: DDIM 8.4%, DPM-Solver++(2M) 1.5%. Doubling the steps halves
    # a first-order error and quarters a second-order one; the tests pin both the size and order.
    assert ddim[20] < 0.10 and dpm[20] < 0.02, (ddim, dpm)
    assert 1.8 < ddim[20] / ddim[40] < 2.2, ddim
    assert dpm[20] / dpm[40] > 3.5, dpm
    # Heun is second order too (and the basis of the allowance in the test above).
    heun = {n: ode_errors(gauss, SAMPLERS["heun"], "karras", n) for n in (25, 50)}
    assert heun[25] < 0.01 and heun[50] < 0.0025, heun
    assert ode_errors(gauss, sample_dpmpp_2m, "karras", 50) < 0.0025


def run(name, denoiser, x, sigmas, seed=7, **kwargs):
    return get_sampler(name)(denoiser, x, sigmas, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_samplers_that_coincide_in_sigma_coordinates_agree(gauss):
    # DDIM(eta=0) is Euler on the probability-flow ODE; DDIM(eta), Euler-ancestral(eta) and (for
    # eta = 1) DDPM's posterior are the same update, drawing the same noise in the same order.
    denoiser = DiscreteDenoiser(gauss.model("eps"), SCHEDULE, "eps")
    sigmas = get_sigmas(SCHEDULE, 15, "trailing")
    x = gauss.start(32, sigmas[0], seed=8)
    close = dict(rtol=0, atol=1e-10)
    torch.testing.assert_close(run("euler", denoiser, x, sigmas), run("ddim", denoiser, x, sigmas), **close)
    torch.testing.assert_close(run("ddpm", denoiser, x, sigmas), run("ddim", denoiser, x, sigmas, eta=1.0), **close)
    torch.testing.assert_close(run("ddpm", denoiser, x, sigmas), run("euler_ancestral", denoiser, x, sigmas), **close)
    torch.testing.assert_close(run("ddim", denoiser, x, sigmas, eta=0.3),
                               run("euler_ancestral", denoiser, x, sigmas, eta=0.3), **close)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_same_samples_and_one_callback_per_step(gauss, name):
    denoiser = DiscreteDenoiser(gauss.model("eps"), SCHEDULE, "eps")
    sigmas = get_sigmas(SCHEDULE, 6, "karras")
    x = gauss.start(8, sigmas[0], seed=9).float()
    calls = []
    first = run(name, denoiser, x, sigmas, callback=calls.append)
    assert torch.equal(first, run(name, denoiser, x, sigmas))
    assert first.dtype == torch.float32 and first.isfinite().all()
    assert [c["i"] for c in calls] == list(range(6))
    assert [float(c["sigma"]) for c in calls] == pytest.approx(sigmas[:-1].tolist(), rel=1e-6)
    assert [float(c["sigma_next"]) for c in calls] == pytest.approx(sigmas[1:].tolist(), rel=1e-6, abs=0)
    assert all(c["denoised"].shape == x.shape and c["x"].shape == x.shape for c in calls)
    stochastic = name in ("ddpm", "euler_ancestral", "lcm")
    assert torch.equal(first, run(name, denoiser, x, sigmas, seed=10)) != stochastic


class Mixture:
    """Three well-separated isotropic 2-D Gaussians ("classes") with unequal weights."""

    means = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    var = 0.25

    def denoise(self, x, sigma):
        """E[x0 | x] = sum_k p(k | x) (mu_k + var / (var + s^2) (x - mu_k))."""
        total = self.var + sigma[:, None] ** 2  # [batch, 1]
        sq = ((x[:, None, :] - self.means) ** 2).sum(-1)  # [batch, 3]
        logp = self.weights.log() - sq / (2 * total) - torch.log(total)  # 2-D: det term is total^1
        post = logp.softmax(dim=1)
        per_class = self.means + (self.var / total)[:, :, None] * (x[:, None, :] - self.means)
        return (post[:, :, None] * per_class).sum(1)

    def start(self, n, sigma, seed):
        gen = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        return self.means[k] + (self.var + float(sigma) ** 2) ** 0.5 * z


@pytest.mark.parametrize(("name", "steps"), [("dpmpp_2m", 20), ("euler_ancestral", 100)])
def test_gaussian_mixture_classes_are_reproduced(name, steps):
    mixture, n = Mixture(), 4000
    sigmas = get_sigmas(SCHEDULE, steps, "karras")
    out = run(name, mixture.denoise, mixture.start(n, sigmas[0], seed=11), sigmas)
    label = torch.cdist(out, mixture.means).argmin(dim=1)
    fractions = torch.bincount(label, minlength=3).double() / n
    # Class frequencies within 4 binomial standard errors of the weights.
    assert ((fractions - mixture.weights).abs() <= 4 * (mixture.weights * (1 - mixture.weights) / n).sqrt()).all()
    for k in range(3):
        members = out[label == k]
        # Class means within 4 standard errors; spread within 4 standard errors (relative SE of a
        # std is 1 / sqrt(2 n)) plus 5% for discretization (euler_ancestral at 100 steps: ~4%).
        assert ((members.mean(0) - mixture.means[k]).abs() <= 4 * (mixture.var / len(members)) ** 0.5).all()
        spread_tol = 4 / (2 * len(members)) ** 0.5 + 0.05
        assert ((members.std(0) / mixture.var**0.5 - 1).abs() < spread_tol).all()


# --- Discretizations and parity with diffusers' schedulers ------------------------------------
# (diffusers' Euler scheduler trips a numpy 2 DeprecationWarning of its own; not ours to fix.)

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 20, 50, 333])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_and_sigmas_equal_diffusers(spacing, steps, offset):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    ours = get_timesteps(SCHEDULE, steps, spacing, steps_offset=offset)
    ddim = DDIMScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=offset)
    ddim.set_timesteps(steps)
    # diffusers' DDIM rounds linspace timesteps to integers; its Euler scheduler keeps them.
    assert torch.equal(ours.round().long(), ddim.timesteps)
    euler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=offset)
    euler.set_timesteps(steps)
    torch.testing.assert_close(ours.float(), euler.timesteps, rtol=0, atol=1e-3)
    sigmas = get_sigmas(SCHEDULE, steps, spacing, steps_offset=offset)
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    # Same timesteps, same sigmas, up to diffusers' float32 tables (5e-5 relative); between integer
    # timesteps diffusers interpolates sigma linearly and we (like k-diffusion) log-linearly, a
    # < 2e-4 relative difference.
    torch.testing.assert_close(sigmas.float(), euler.sigmas, rtol=2e-4 if spacing == "linspace" else 5e-5, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("steps", [5, 30])
def test_karras_sigmas_equal_diffusers(steps):
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace", use_karras_sigmas=True)
    euler.set_timesteps(steps)
    torch.testing.assert_close(get_sigmas(SCHEDULE, steps, "karras").float(), euler.sigmas, rtol=5e-5, atol=0)


def test_initial_latent_has_the_first_noise_level():
    sigmas = get_sigmas(SCHEDULE, 10, "trailing")
    noise = torch.randn(20000, generator=torch.Generator().manual_seed(12))
    assert initial_latent(noise, sigmas).std().item() == pytest.approx((1 + SCHEDULE.sigma_max**2) ** 0.5, rel=0.02)
    torch.testing.assert_close(initial_latent(noise, sigmas), noise * (1 + sigmas[0].item() ** 2) ** 0.5)


def diffusers_loop(scheduler, net, noise, seed, **step_kwargs):
    """The loop of a diffusers pipeline over an eps-predicting ``net`` (float64 sample)."""
    generator = torch.Generator().manual_seed(seed)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = net(scheduler.scale_model_input(x, t), t.double().expand(x.shape[0]))
        x = scheduler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("name", "options"), [
    ("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0}), ("ddpm", {}), ("euler", {}), ("euler_ancestral", {}),
    ("dpmpp_2m", {}),
])
def test_samplers_match_diffusers_schedulers(gauss, name, options):
    import diffusers

    classes = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler",
               "euler_ancestral": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
    extra = {"clip_sample": False} if name in ("ddim", "ddpm") else {}
    scheduler = getattr(diffusers, classes[name])(**SD_BETAS, timestep_spacing="leading", steps_offset=1, **extra)
    scheduler.set_timesteps(20)
    net = gauss.model("eps")
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    reference = diffusers_loop(scheduler, net, noise, seed=14, **options)
    sigmas = get_sigmas(SCHEDULE, 20, "leading", steps_offset=1)
    if name == "dpmpp_2m":  # its "leading" is a spacing of its own: take its sigmas as they are
        sigmas = scheduler.sigmas.double()
    x = initial_latent(noise, sigmas)
    ours = run(name, DiscreteDenoiser(net, SCHEDULE, "eps"), x, sigmas, seed=14, **options)
    # diffusers keeps its tables (and for Euler its sample) in float32: ~1.5e-6 apart here.
    torch.testing.assert_close(ours, reference.double(), rtol=0, atol=1e-5)


def test_bad_input(gauss):
    denoiser = DiscreteDenoiser(gauss.model("eps"), SCHEDULE, "eps")
    x = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sampler='plms'.*\['ddim', 'ddpm', 'dpmpp_2m', 'euler'"):
        get_sampler("plms")
    with pytest.raises(ValueError, match=r"spacing='uniform'.*\['leading', 'trailing', 'linspace', 'karras', 'lcm'\]"):
        get_sigmas(SCHEDULE, 10, "uniform")
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match=rf"steps={steps!r} must be an integer >= 1"):
            get_sigmas(SCHEDULE, steps)
    with pytest.raises(ValueError, match="must not exceed"):
        get_sigmas(SCHEDULE, 1001, "trailing")
    with pytest.raises(ValueError, match="steps_offset=1 with steps=1000"):
        get_sigmas(SCHEDULE, 1000, "leading", steps_offset=1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_euler(denoiser, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2 entries"):
        sample_euler(denoiser, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"eta=1.5 must lie in \[0.0, 1.0\]"):
        sample_ddim(denoiser, x, torch.tensor([1.0, 0.0]), eta=1.5)
    with pytest.raises(ValueError, match=r"prediction='score'"):
        DiscreteDenoiser(gauss.model("eps"), SCHEDULE, "score")
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \[2\]"):
        denoiser(x, torch.ones(3))


@pytest.mark.parametrize("name", ["dpmpp_2m", "euler_ancestral"])
def test_sampling_under_bf16_autocast_and_in_bf16(name):
    net = torch.nn.Conv2d(4, 4, 3, padding=1)
    torch.nn.init.normal_(net.weight, std=0.05)
    model = lambda x_t, t: net(x_t)  # noqa: E731
    denoiser = DiscreteDenoiser(model, SCHEDULE, "eps")
    sigmas = get_sigmas(SCHEDULE, 5, "karras")
    x = initial_latent(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(15)), sigmas)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(name, denoiser, x, sigmas)
    assert out.dtype == torch.float32 and out.isfinite().all()
    reference = run(name, denoiser, x, sigmas)
    assert (out - reference).abs().max() < 0.1 * reference.abs().max()  # bf16 keeps ~3 digits
    out_bf16 = run(name, DiscreteDenoiser(lambda x_t, t: net.to(torch.bfloat16)(x_t), SCHEDULE, "eps"),
                   x.to(torch.bfloat16), sigmas)
    assert out_bf16.dtype == torch.bfloat16 and out_bf16.isfinite().all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("name", "spacing"), [
    ("ddim", "trailing"), ("euler", "trailing"), ("euler", "karras"), ("euler_ancestral", "trailing"),
    ("dpmpp_2m", "karras"),
])
def test_samplers_match_diffusers_at_the_generate_spacings(gauss, name, spacing):
    """``ldm generate``'s default spacings against the diffusers scheduler that
    ``convert.schedulers.matching_scheduler`` picks: same timesteps, same trajectory."""
    from latent_diffusion.convert.schedulers import diffusers_initial_scale, matching_scheduler

    scheduler = matching_scheduler(name, spacing, DiffusionConfig())
    scheduler.set_timesteps(20)
    sigmas = get_sigmas(SCHEDULE, 20, spacing)
    quantize = name == "dpmpp_2m"  # diffusers' DPM-Solver++ rounds its Karras timesteps
    timesteps = SCHEDULE.sigma_to_t(sigmas[:-1])
    torch.testing.assert_close(timesteps.round() if quantize else timesteps, scheduler.timesteps.double(),
                               rtol=0, atol=2e-3)
    net = gauss.model("eps")
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    # Euler-type schedulers start trailing/Karras runs from noise * sigma_max; undo that here.
    reference = diffusers_loop(scheduler, net, noise / diffusers_initial_scale(name, spacing, DiffusionConfig(), 20),
                               seed=17)
    denoiser = DiscreteDenoiser(net, SCHEDULE, "eps", quantize=quantize)
    ours = run(name, denoiser, initial_latent(noise, sigmas), sigmas, seed=17)
    torch.testing.assert_close(ours, reference.double(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_matches_diffusers_lcm_scheduler_step_by_step(gauss, steps):
    """The lcm sampler over the "lcm" spacing, with the consistency boundary condition, against
    diffusers' LCMScheduler on the same network, noise and generator: timesteps, every step's x0
    estimate and the result."""
    from diffusers import LCMScheduler

    from latent_diffusion.sampling import ConsistencyDenoiser, sample_lcm

    scheduler = LCMScheduler(**SD_BETAS, timestep_spacing="leading", steps_offset=1, clip_sample=False)
    scheduler.set_timesteps(steps)
    assert get_timesteps(SCHEDULE, steps, "lcm").tolist() == scheduler.timesteps.tolist()
    net = gauss.model("eps")
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    generator, x, reference_x0 = torch.Generator().manual_seed(14), noise.clone(), []
    for t in scheduler.timesteps:
        out = scheduler.step(net(x, t.double().expand(64)), t, x, generator=generator)
        x = out.prev_sample
        reference_x0.append(out.denoised)
    sigmas = get_sigmas(SCHEDULE, steps, "lcm")
    steps_seen = []
    ours = sample_lcm(ConsistencyDenoiser(DiscreteDenoiser(net, SCHEDULE, "eps")), initial_latent(noise, sigmas),
                      sigmas, generator=torch.Generator().manual_seed(14), callback=steps_seen.append)
    for step, expected in zip(steps_seen, reference_x0):
        torch.testing.assert_close(step["denoised"], expected.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, x.double(), rtol=0, atol=1e-5)


def test_lcm_spacing_refuses_more_steps_than_its_grid():
    with pytest.raises(ValueError, match="distilled on 50 timesteps samples in at most 50 steps"):
        get_timesteps(SCHEDULE, 51, "lcm")
