"""Shared by the conversion and diffusers-parity tests: SD 1.x/2.x-structured models with random
weights (tiny for CI, full size for the slow tests) and SD single-file checkpoints made from them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
from latent_diffusion.conditioning.clip import END_ID
from latent_diffusion.convert.clip_keys import hf_to_openclip
from latent_diffusion.diffusion.schedule import DiffusionConfig, NoiseSchedule
from latent_diffusion.pipelines import DiffusionComponents
from latent_diffusion.unet import UNet, UNetConfig



def slow(test):
    """Mark a full-size test: it takes minutes and GBs, so it runs only with LDM_SLOW=1 (CI runs
    plain ``pytest``); ``-m "not slow"`` deselects it as well."""
    skip = pytest.mark.skipif(os.environ.get("LDM_SLOW") != "1", reason="full-size SD architecture: set LDM_SLOW=1")
    return pytest.mark.slow(skip(test))


# The real architectures (SD 1.5: v1-inference.yaml; SD 2.1: v2-inference-v.yaml).
SD15 = dict(
    unet=UNetConfig(use_scale_shift_norm=False),
    clip=ConditionerConfig(kind="clip"),
    vae=AutoencoderConfig(scale_factor=0.18215),
    resolution=512, prediction="eps",
)
SD21 = dict(
    unet=UNetConfig(use_scale_shift_norm=False, head_dim=64, context_dim=1024, use_linear_projection=True),
    clip=ConditionerConfig(kind="clip", clip_hidden=1024, clip_layers=24, clip_heads=16, clip_intermediate=4096,
                           clip_layer="penultimate", clip_activation="gelu", clip_pad_token_id=0),
    vae=AutoencoderConfig(scale_factor=0.18215),
    resolution=768, prediction="v",
)
# The same structures scaled down (4 levels, 2 ResBlocks, attention at levels 0-2; SD 2's linear
# projections, 64-wide heads, penultimate gelu CLIP with pad id 0), for CI. Heads follow the rules
# a single-file reader must assume (8 heads for SD 1, 64-wide heads for SD 2; CLIP: 64-wide).
TINY_VAE = AutoencoderConfig(base_channels=32, channel_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=32,
                             scale_factor=0.18215)
TINY_SD1 = dict(
    unet=UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), attention_levels=(0, 1, 2), num_heads=8,
                    context_dim=64, use_scale_shift_norm=False),
    clip=ConditionerConfig(kind="clip", max_length=16, clip_hidden=64, clip_layers=2, clip_heads=1,
                           clip_intermediate=128, clip_pad_token_id=END_ID),
    vae=TINY_VAE, resolution=64, prediction="eps",
)
TINY_SD2 = dict(
    unet=UNetConfig(model_channels=64, channel_mult=(1, 2, 2, 2), attention_levels=(0, 1, 2), head_dim=64,
                    context_dim=64, use_linear_projection=True, use_scale_shift_norm=False),
    clip=ConditionerConfig(kind="clip", max_length=16, clip_hidden=64, clip_layers=3, clip_heads=1,
                           clip_intermediate=128, clip_layer="penultimate", clip_activation="gelu",
                           clip_pad_token_id=0),
    vae=TINY_VAE, resolution=64, prediction="v",
)
TINY = {"sd1": TINY_SD1, "sd2": TINY_SD2}
FULL = {"sd15": SD15, "sd21": SD21}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (also where a fresh UNet is zero), scaled so activations stay O(1):
    matrices ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1), biases ~ N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return module


def make_components(spec: dict, seed: int = 0) -> DiffusionComponents:
    """A model of ``spec``'s architecture with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    unet = randomize(UNet(spec["unet"]), seed)
    autoencoder = randomize(Autoencoder(spec["vae"]), seed + 1)
    with torch.no_grad():  # keep decoded pixels inside [-1, 1] so image comparisons see real values
        autoencoder.decoder.conv_out.weight.mul_(0.3)
    conditioner = randomize(build_conditioner(spec["clip"]), seed + 2)
    diffusion = DiffusionConfig(prediction=spec["prediction"])
    return DiffusionComponents(autoencoder, unet, conditioner, diffusion, spec["resolution"],
                               consistency=spec.get("consistency")).eval()


def single_file_state(components: DiffusionComponents, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model as an original SD checkpoint: SD 1.x text in HF layout, SD 2.x text in OpenCLIP layout."""
    state = {"model.diffusion_model." + k: v for k, v in components.unet.state_dict().items()}
    state.update({"first_stage_model." + k: v for k, v in components.autoencoder.state_dict().items()})
    hf = {k.removeprefix("encoder.model."): v for k, v in components.conditioner.state_dict().items()}
    if components.conditioner.config.clip_layer == "last":
        state.update({"cond_stage_model.transformer.text_model." + k: v for k, v in hf.items()})
    else:
        state.update({"cond_stage_model.model." + k: v for k, v in hf_to_openclip(hf).items()})
        width = components.conditioner.config.clip_hidden
        state["cond_stage_model.model.text_projection"] = torch.randn(width, width,
                                                                      generator=torch.Generator().manual_seed(seed))
        state["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    state["alphas_cumprod"] = NoiseSchedule.from_config(DiffusionConfig()).alphas_cumprod.float()
    return {k: v.contiguous() for k, v in state.items()}


def text_states(components: DiffusionComponents, prompts: list[str]) -> torch.Tensor:
    """The conditioner's token states for ``prompts``."""
    with torch.no_grad():
        return components.conditioner(prompts=prompts)["context"]


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Tiny models: a second intra-op thread only adds synchronisation on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
