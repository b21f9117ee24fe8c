"""Classifier-free guidance as a denoiser wrapper: exact combination, rescale, context padding."""

import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg

from latent_diffusion.diffusion import DiffusionConfig, NoiseSchedule
from latent_diffusion.sampling import CFGDenoiser, concat_conditions, get_sigmas, sample_euler


class ToyDenoiser:
    """D(x, sigma) = x / (1 + sigma^2) + masked mean of the context tokens (one value per channel).

    Padding tokens that the mask hides must not change the result, so this checks the padding.
    """

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, context, context_mask=None, class_labels=None):
        self.batches.append(x.shape[0])
        mask = torch.ones(context.shape[:2]) if context_mask is None else context_mask.to(context.dtype)
        pooled = (context * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # [batch, channels]
        shift = pooled[:, :, None, None] + (0 if class_labels is None else class_labels[:, None, None, None])
        return x / (1 + sigma[:, None, None, None] ** 2) + shift


def inputs(seed=0, cond_tokens=5, uncond_tokens=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 6, 6, generator=gen)
    sigma = torch.tensor([0.5, 2.0, 9.0])
    cond = {"context": torch.randn(3, cond_tokens, 4, generator=gen)}
    uncond = {"context": torch.randn(3, uncond_tokens, 4, generator=gen)}
    return x, sigma, cond, uncond


def test_scale_one_is_exactly_the_conditional_denoiser():
    x, sigma, cond, uncond = inputs()
    toy = ToyDenoiser()
    guided = CFGDenoiser(toy, 1.0)(x, sigma, cond=cond, uncond=uncond)
    assert torch.equal(guided, ToyDenoiser()(x, sigma, **cond))
    assert toy.batches == [3]  # no unconditional pass
    assert torch.equal(CFGDenoiser(toy, 1.0)(x, sigma, cond=cond), guided)


@pytest.mark.parametrize("scale", [0.0, 1.5, 7.5])
def test_guided_estimate_is_uncond_plus_scale_times_difference_in_one_batched_call(scale):
    x, sigma, cond, uncond = inputs(1)
    toy = ToyDenoiser()
    guided = CFGDenoiser(toy, scale)(x, sigma, cond=cond, uncond=uncond)
    assert toy.batches == [6]  # cond and uncond in one call
    d_cond, d_uncond = ToyDenoiser()(x, sigma, **cond), ToyDenoiser()(x, sigma, **uncond)
    torch.testing.assert_close(guided, d_uncond + scale * (d_cond - d_uncond))
    # The same combination in eps space: eps = (x - D) / sigma is affine in D.
    s = sigma[:, None, None, None]
    eps_c, eps_u = (x - d_cond) / s, (x - d_uncond) / s
    torch.testing.assert_close((x - guided) / s, eps_u + scale * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rescale", [0.3, 0.7, 1.0])
def test_rescale_matches_diffusers_rescale_noise_cfg(rescale):
    x, sigma, cond, uncond = inputs(2)
    guided = CFGDenoiser(ToyDenoiser(), 7.5, rescale=rescale)(x, sigma, cond=cond, uncond=uncond)
    s = sigma[:, None, None, None]
    eps_c, eps_u = (x - ToyDenoiser()(x, sigma, **cond)) / s, (x - ToyDenoiser()(x, sigma, **uncond)) / s
    eps_ref = rescale_noise_cfg(eps_u + 7.5 * (eps_c - eps_u), eps_c, guidance_rescale=rescale)
    torch.testing.assert_close(guided, x - s * eps_ref, rtol=1e-5, atol=1e-5)
    plain = CFGDenoiser(ToyDenoiser(), 7.5)(x, sigma, cond=cond, uncond=uncond)
    assert not torch.allclose(guided, plain)  # rescale actually changed something


@pytest.mark.parametrize(("cond_tokens", "uncond_tokens"), [(5, 2), (2, 7)])
def test_contexts_of_different_lengths_are_padded_with_masked_tokens(cond_tokens, uncond_tokens):
    x, sigma, cond, uncond = inputs(3, cond_tokens, uncond_tokens)
    merged = concat_conditions(cond, uncond)
    length = max(cond_tokens, uncond_tokens)
    assert merged["context"].shape == (6, length, 4)
    expected_mask = torch.zeros(6, length, dtype=torch.bool)
    expected_mask[:3, :cond_tokens] = True
    expected_mask[3:, :uncond_tokens] = True
    assert torch.equal(merged["context_mask"], expected_mask)
    assert torch.equal(merged["context"][:3, :cond_tokens], cond["context"])
    assert merged["context"][~expected_mask].abs().sum() == 0
    # Hidden padding leaves the guided estimate equal to separate, unpadded evaluations.
    guided = CFGDenoiser(ToyDenoiser(), 3.0)(x, sigma, cond=cond, uncond=uncond)
    d_cond, d_uncond = ToyDenoiser()(x, sigma, **cond), ToyDenoiser()(x, sigma, **uncond)
    torch.testing.assert_close(guided, d_uncond + 3.0 * (d_cond - d_uncond))
    assert "context_mask" not in cond  # the caller's dicts are left alone


def test_existing_masks_are_kept_and_padded():
    _, _, cond, uncond = inputs(4, 4, 2)
    cond["context_mask"] = torch.tensor([[1, 1, 0, 0]] * 3)
    uncond["context_mask"] = torch.tensor([[1, 0]] * 3)
    merged = concat_conditions(cond, uncond)
    assert merged["context_mask"].tolist() == [[1, 1, 0, 0]] * 3 + [[1, 0, 0, 0]] * 3
    # Same length, mask on one side only: the other side gets an all-visible mask.
    _, _, cond, uncond = inputs(5, 3, 3)
    cond["context_mask"] = torch.tensor([[True, True, False]] * 3)
    assert concat_conditions(cond, uncond)["context_mask"][3:].all()


def test_other_conditions_are_batched_and_checked():
    x, sigma, cond, uncond = inputs(6)
    cond["class_labels"], uncond["class_labels"] = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    merged = concat_conditions(cond, uncond)
    assert merged["class_labels"].tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0]
    cond["class_labels"] = uncond["class_labels"] = None
    assert concat_conditions(cond, uncond)["class_labels"] is None
    with pytest.raises(ValueError, match=r"same keys.*\['class_labels', 'context'\].*\['context'\]"):
        concat_conditions(cond, {"context": uncond["context"]})
    with pytest.raises(ValueError, match="cannot be batched"):
        concat_conditions({"concat": torch.zeros(3, 1)}, {"concat": None})
    with pytest.raises(ValueError, match="differ beyond the batch"):
        concat_conditions({"concat": torch.zeros(3, 1, 4, 4)}, {"concat": torch.zeros(3, 2, 4, 4)})


def test_guidance_works_inside_a_sampler_through_extra_args():
    schedule = NoiseSchedule.from_config(DiffusionConfig())
    sigmas = get_sigmas(schedule, 8, "karras").float()
    x, _, cond, uncond = inputs(7)
    guided = sample_euler(CFGDenoiser(ToyDenoiser(), 4.0), x, sigmas, extra_args={"cond": cond, "uncond": uncond})

    def by_hand(x, sigma):
        d_c, d_u = ToyDenoiser()(x, sigma, **cond), ToyDenoiser()(x, sigma, **uncond)
        return d_u + 4.0 * (d_c - d_u)

    torch.testing.assert_close(guided, sample_euler(by_hand, x, sigmas), rtol=1e-5, atol=1e-5)


def test_bad_input():
    x, sigma, cond, _ = inputs()
    with pytest.raises(ValueError, match="scale=-1.0 must be >= 0"):
        CFGDenoiser(ToyDenoiser(), -1.0)
    with pytest.raises(ValueError, match=r"rescale=1.5 must lie in \[0.0, 1.0\]"):
        CFGDenoiser(ToyDenoiser(), 5.0, rescale=1.5)
    with pytest.raises(ValueError, match="uncond is required for guidance scale 5.0"):
        CFGDenoiser(ToyDenoiser(), 5.0)(x, sigma, cond=cond)
