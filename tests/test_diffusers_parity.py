"""Numerical parity with diffusers (the reference implementation) at the SD 1.x / 2.x structures.

Random weights, converted with our key maps and loaded into diffusers' and transformers' own
classes, must give the same UNet outputs (<= 1e-4), VAE encodings and decodings (<= 1e-4), CLIP
states (<= 1e-5, from identical token ids) and, through the whole text-to-image pipeline with the
matching scheduler, the same pixels (<= 2/255). CI runs scaled-down models of the same structure;
the real SD 1.5 and SD 2.1 sizes run with LDM_SLOW=1.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch
from sd_testing import FULL, TINY, make_components, single_thread, slow  # noqa: F401 (fixture)

from latent_diffusion.convert import save_diffusers
from latent_diffusion.convert.clip_keys import clip_to_hf_state, clip_to_transformers_config
from latent_diffusion.convert.schedulers import diffusers_initial_scale, matching_scheduler, round_unet_timesteps
from latent_diffusion.convert.unet_keys import unet_config_to_diffusers, unet_to_diffusers
from latent_diffusion.convert.vae_keys import vae_config_to_diffusers, vae_to_diffusers
from latent_diffusion.model.reverse_process import DEFAULT_SPACING
from latent_diffusion.pipelines import TextToImage

PROMPTS = ["a red lighthouse at dusk, oil painting", ""]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A tiny random model and its diffusers export."""
    model = make_components(TINY[request.param], seed=11)
    return model, save_diffusers(model, tmp_path_factory.mktemp(request.param) / "diffusers")


def reference_networks(model) -> tuple:
    """diffusers' UNet and VAE and transformers' CLIP text model, built from their configs and
    given our weights through our key maps (in memory: the full-size tests write no files)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg = {k: v for k, v in unet_config_to_diffusers(model.unet.config, model.latent_size).items()
                if not k.startswith("_")}
    unet = UNet2DConditionModel(**unet_cfg)
    unet.load_state_dict(unet_to_diffusers(model.unet.state_dict(), model.unet.config), strict=True)
    vae_cfg = {k: v for k, v in vae_config_to_diffusers(model.autoencoder.config, model.resolution).items()
               if not k.startswith("_")}
    vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(vae_to_diffusers(model.autoencoder.state_dict(), model.autoencoder.config), strict=True)
    config = model.conditioner.config
    text = CLIPTextModel(CLIPTextConfig(**clip_to_transformers_config(config)))
    hf = {k.removeprefix("text_model."): v for k, v in clip_to_hf_state(model.conditioner.state_dict(), config).items()}
    text.load_state_dict(hf, strict=True)
    return unet.eval(), vae.eval(), text.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def check_networks(model, latent: int, image: int, batch: int = 2) -> dict[str, float]:
    """Max abs differences of UNet, VAE encode/decode and CLIP between ours and the references."""
    unet, vae, text = reference_networks(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, latent, latent, generator=g)
    t = torch.tensor([981.0, 21.0][:batch])
    context = torch.randn(batch, model.conditioner.config.max_length, model.unet.config.context_dim, generator=g)
    pixels = torch.rand(1, 3, image, image, generator=g) * 2 - 1
    z = torch.randn(1, 4, image // 8, image // 8, generator=g)
    diffs = {}
    with torch.no_grad():
        diffs["unet"] = max_diff(model.unet(x, t, context=context), unet(x, t, encoder_hidden_states=context).sample)
        posterior, dist = model.autoencoder.encode(pixels), vae.encode(pixels).latent_dist
        diffs["vae_encode"] = max(max_diff(posterior.mean, dist.mean), max_diff(posterior.logvar, dist.logvar))
        diffs["vae_decode"] = max_diff(model.autoencoder.decode(z), vae.decode(z).sample)
        ids, _ = model.conditioner.encoder.tokenizer(PROMPTS)
        diffs["clip"] = max_diff(model.conditioner(prompts=PROMPTS)["context"], text(input_ids=ids).last_hidden_state)
    del unet, vae, text
    gc.collect()
    return diffs


def test_tiny_networks_match_diffusers(exported) -> None:
    model, _ = exported
    diffs = check_networks(model, latent=16, image=64)
    print(f"\nmax abs differences ({model.unet.config.use_linear_projection and 'SD2' or 'SD1'}-tiny): {diffs}")
    assert diffs["unet"] <= 1e-4 and diffs["vae_encode"] <= 1e-4 and diffs["vae_decode"] <= 1e-4
    assert diffs["clip"] <= 1e-5


@pytest.mark.filterwarnings("ignore:CLIP tokenizer")  # the long prompt is truncated on purpose
def test_our_tokenizer_gives_the_exported_tokenizers_ids(exported) -> None:
    from transformers import CLIPTokenizer

    model, folder = exported
    theirs = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    prompts = [*PROMPTS, "A photo of an astronaut riding a horse on Mars", "crème brûlée, 4k", "x " * 40]
    ids, _ = model.conditioner.encoder.tokenizer(prompts)
    expected = theirs(prompts, padding="max_length", max_length=theirs.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
    assert torch.equal(ids, expected)


@pytest.fixture(scope="module")
def diffusers_pipeline(exported):
    from diffusers import StableDiffusionPipeline

    model, folder = exported
    return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)


@pytest.mark.parametrize("sampler", ["ddim", "euler_ancestral", "dpmpp_2m"])
def test_same_pixels_as_diffusers_stable_diffusion_pipeline(exported, diffusers_pipeline, sampler: str) -> None:
    """ldm's TextToImage and diffusers' StableDiffusionPipeline, loaded from the exported folder, with the
    matching scheduler: same seed, prompt, steps and guidance give the same image."""
    model, _ = exported
    steps, guidance, seed, prompt = 10, 7.5, 5, PROMPTS[0]
    spacing = DEFAULT_SPACING[sampler]
    pipe = diffusers_pipeline
    pipe.scheduler = matching_scheduler(sampler, spacing, model.diffusion)
    generator = torch.Generator().manual_seed(seed)
    latents = None
    scale = diffusers_initial_scale(sampler, spacing, model.diffusion, steps)
    if scale != 1.0:  # draw the noise as diffusers does, and undo its different starting scale
        latents = torch.randn(1, 4, model.latent_size, model.latent_size, generator=generator) / scale
    with torch.no_grad():
        theirs = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                      height=model.resolution, width=model.resolution, latents=latents, output_type="np").images
    handle = round_unet_timesteps(model.unet) if sampler == "dpmpp_2m" else None
    try:
        ours = TextToImage(model)(prompt, steps=steps, sampler=sampler, guidance=guidance, seed=seed, progress=False)
    finally:
        if handle is not None:
            handle.remove()
    ours_px = np.asarray(ours.images[0]).astype(np.int16)
    theirs_px = np.round(theirs[0] * 255).astype(np.int16)
    assert ours_px.shape == theirs_px.shape == (model.resolution, model.resolution, 3)
    assert 20 < ours_px.std()  # a real image, not a saturated one
    diff = int(np.abs(ours_px - theirs_px).max())
    print(f"\n{sampler}: max pixel difference {diff}/255")
    assert diff <= 2


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_same_pixels_as_diffusers_latent_consistency_pipeline(tmp_path, steps: int) -> None:
    """A latent consistency model (SD 1 structure, guidance-embedded UNet, random weights) exported as a
    diffusers LatentConsistencyModelPipeline folder: diffusers' pipeline, ours on the model, and ours on
    the folder converted back give the same image; ours needs no sampler, steps or guidance flags."""
    from diffusers import LatentConsistencyModelPipeline

    from latent_diffusion.convert import components_from_diffusers
    from latent_diffusion.diffusion.consistency import ConsistencyConfig

    consistency = ConsistencyConfig(embedding_dim=32, guidance_min=1.0, guidance_max=16.0, steps=steps,
                                    guidance=8.5)
    spec = {**TINY["sd1"], "unet": TINY["sd1"]["unet"].replace(time_cond_proj_dim=32), "consistency": consistency}
    model = make_components(spec, seed=13)
    folder = save_diffusers(model, tmp_path / "lcm")
    pipe = LatentConsistencyModelPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    seed, prompt = 5, PROMPTS[0]
    with torch.no_grad():
        theirs = pipe(prompt, num_inference_steps=steps, guidance_scale=8.5, generator=torch.Generator().manual_seed(seed),
                      height=model.resolution, width=model.resolution, output_type="np").images
    ours = TextToImage(model)(prompt, seed=seed, progress=False)
    assert (ours.metadata[0].sampler, ours.metadata[0].steps) == ("lcm", steps)
    converted = components_from_diffusers(folder)
    assert converted.consistency.embedding_dim == 32 and converted.consistency.original_steps == 50
    again = TextToImage(converted)(prompt, seed=seed, steps=steps, guidance=8.5, progress=False)
    ours_px = np.asarray(ours.images[0]).astype(np.int16)
    theirs_px = np.round(theirs[0] * 255).astype(np.int16)
    assert 20 < ours_px.std()
    diff = int(np.abs(ours_px - theirs_px).max())
    print(f"\nlcm, {steps} steps: max pixel difference {diff}/255")
    assert diff <= 2
    assert int(np.abs(ours_px - np.asarray(again.images[0]).astype(np.int16)).max()) <= 1


@slow
@pytest.mark.parametrize("name", ["sd15", "sd21"])
def test_full_size_networks_match_diffusers(name: str) -> None:
    """The real SD 1.5 / SD 2.1 architectures (UNet 860M parameters), random weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # big matmuls: every core helps
    try:
        model = make_components(FULL[name], seed=1)
        diffs = check_networks(model, latent=32, image=256)
    finally:
        torch.set_num_threads(threads)
    print(f"\n{name}: max abs differences {diffs}")
    assert diffs["unet"] <= 1e-4 and diffs["vae_encode"] <= 1e-4 and diffs["vae_decode"] <= 1e-4
    assert diffs["clip"] <= 1e-5
