"""Noise schedules and samplers between this project and diffusers' schedulers.

A diffusers ``scheduler/scheduler_config.json`` carries the training schedule (betas) and what the
UNet predicts; that is all of :class:`DiffusionConfig`. Which steps to take is a sampler choice
here (``ldm generate --sampler``), so an exported folder gets the scheduler that matches the
default sampler, and :func:`matching_scheduler` builds the diffusers scheduler that takes exactly
the steps of any of our sampler/spacing pairs. Two documented differences remain on diffusers' side:

- DPM-Solver++ with Karras sigmas rounds the timesteps it gives the UNet (the sigmas are not
  rounded); :func:`round_unet_timesteps` makes our UNet do the same.
- Euler and Euler-ancestral with "trailing"/"linspace" spacing start from ``noise * sigma_max``
  instead of ``noise * sqrt(1 + sigma_max**2)`` (the marginal's standard deviation, which we use);
  :func:`diffusers_initial_scale` gives the ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from latent_diffusion.convert.errors import ConversionError
from latent_diffusion.diffusion.consistency import LCM_SIGMA_DATA, ConsistencyConfig
from latent_diffusion.diffusion.schedule import DiffusionConfig, NoiseSchedule

# What a converted latent consistency model samples with: LatentConsistencyModelPipeline's
# defaults (4 steps, guidance 8.5). A diffusers folder does not say which guidance scales the model
# was distilled on (LCM's script draws w + 1 from [4, 16] by default), so every scale from 1 to 16
# is allowed.
LCM_DEFAULT_STEPS, LCM_DEFAULT_GUIDANCE, LCM_GUIDANCE_RANGE = 4, 8.5, (1.0, 16.0)

BETA_SCHEDULES = {"linear_in_sqrt_beta": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SAMPLER_SPACINGS = {
    "ddim": ("leading", "trailing"),
    "ddpm": ("leading", "trailing"),
    "euler": ("leading", "trailing", "linspace", "karras"),
    "euler_ancestral": ("leading", "trailing", "linspace"),
    "dpmpp_2m": ("karras",),
}


def diffusion_from_scheduler_config(cfg: Mapping[str, Any], prediction: str | None = None,
                                    where: str = "scheduler/scheduler_config.json") -> DiffusionConfig:
    """Our :class:`DiffusionConfig` from a diffusers scheduler config (``prediction`` overrides it)."""
    if cfg.get("trained_betas") is not None:
        raise ConversionError(f"{where}: trained_betas (an explicit beta table) is not supported; only "
                              f"the named schedules {sorted(BETA_SCHEDULES.values())}")
    if cfg.get("rescale_betas_zero_snr", False):
        raise ConversionError(f"{where}: rescale_betas_zero_snr=true is not supported")
    names = {v: k for k, v in BETA_SCHEDULES.items()}
    beta_schedule = cfg.get("beta_schedule", "linear")
    if beta_schedule not in names:
        raise ConversionError(f"{where}: beta_schedule={beta_schedule!r} is not supported; choose one of "
                              f"{sorted(names)}")
    if prediction is None:
        kinds = {v: k for k, v in PREDICTIONS.items()}
        theirs = cfg.get("prediction_type", "epsilon")
        if theirs not in kinds:
            raise ConversionError(f"{where}: prediction_type={theirs!r} is not supported; choose one of "
                                  f"{sorted(kinds)}")
        prediction = kinds[theirs]
    try:
        return DiffusionConfig(
            num_timesteps=int(cfg.get("num_train_timesteps", 1000)), schedule=names[beta_schedule],
            beta_start=float(cfg.get("beta_start", 0.0001)), beta_end=float(cfg.get("beta_end", 0.02)),
            prediction=prediction,
        )
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from err


def _common(diffusion: DiffusionConfig) -> dict[str, Any]:
    return {
        "num_train_timesteps": diffusion.num_timesteps,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "beta_schedule": BETA_SCHEDULES[diffusion.schedule],
        "prediction_type": PREDICTIONS[diffusion.prediction],
    }


def scheduler_config_for_export(diffusion: DiffusionConfig) -> dict[str, Any]:
    """``scheduler_config.json`` of an exported folder: DPM-Solver++(2M) with Karras sigmas, which
    is ``ldm generate``'s default sampler (up to the timestep rounding described above)."""
    return {
        "_class_name": "DPMSolverMultistepScheduler",
        "_diffusers_version": "0.30.0",
        **_common(diffusion),
        **_dpmpp_2m_options(),
    }


def consistency_from_scheduler_config(cfg: Mapping[str, Any], embedding_dim: int,
                                      where: str = "scheduler/scheduler_config.json") -> ConsistencyConfig:
    """The :class:`ConsistencyConfig` of a diffusers latent consistency model (a UNet with
    ``time_cond_proj_dim``; its scheduler an ``LCMScheduler``, whose grid and scaling it keeps)."""
    name = cfg.get("_class_name", "LCMScheduler")
    if name != "LCMScheduler":
        raise ConversionError(f"{where}: the UNet embeds a guidance scale (time_cond_proj_dim={embedding_dim}), which "
                              f"only latent consistency models do, but the scheduler is {name!r}, not LCMScheduler")
    try:
        return ConsistencyConfig(
            embedding_dim=embedding_dim, original_steps=int(cfg.get("original_inference_steps", 50)),
            guidance_min=LCM_GUIDANCE_RANGE[0], guidance_max=LCM_GUIDANCE_RANGE[1], steps=LCM_DEFAULT_STEPS,
            guidance=LCM_DEFAULT_GUIDANCE, timestep_scaling=float(cfg.get("timestep_scaling", 10.0)))
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from err


def lcm_scheduler_config_for_export(diffusion: DiffusionConfig, consistency: ConsistencyConfig) -> dict[str, Any]:
    """``scheduler_config.json`` of an exported latent consistency model: the ``LCMScheduler`` that
    takes the steps of our ``lcm`` sampler (diffusers' scheduler fixes sigma_data at 0.5)."""
    if consistency.sigma_data != LCM_SIGMA_DATA:
        raise ConversionError(f"diffusers' LCMScheduler fixes sigma_data at {LCM_SIGMA_DATA}; this model has "
                              f"{consistency.sigma_data} and cannot be exported")
    return {"_class_name": "LCMScheduler", "_diffusers_version": "0.30.0", **_common(diffusion),
            "original_inference_steps": consistency.original_steps, "timestep_scaling": consistency.timestep_scaling,
            "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0, "timestep_spacing": "leading"}


def _dpmpp_2m_options() -> dict[str, Any]:
    return {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True,
            "final_sigmas_type": "zero", "lower_order_final": True, "timestep_spacing": "linspace",
            "steps_offset": 0}


def matching_scheduler(sampler: str, spacing: str, diffusion: DiffusionConfig) -> Any:
    """The diffusers scheduler that visits the same timesteps and makes the same updates as our
    ``sampler`` with ``spacing`` (needs the diffusers package; see the module doc for the two
    remaining differences)."""
    allowed = SAMPLER_SPACINGS.get(sampler)
    if allowed is None:
        raise ValueError(f"sampler={sampler!r} has no diffusers counterpart here; choose one of "
                         f"{sorted(SAMPLER_SPACINGS)}")
    if spacing not in allowed:
        raise ValueError(f"sampler={sampler!r} with spacing={spacing!r} has no diffusers counterpart; "
                         f"use spacing in {list(allowed)}")
    import diffusers

    common = _common(diffusion)
    if sampler in ("ddim", "ddpm"):
        # set_alpha_to_one: the last step goes to sigma = 0 exactly, as our samplers do.
        extra = {"set_alpha_to_one": True} if sampler == "ddim" else {"variance_type": "fixed_small"}
        cls = diffusers.DDIMScheduler if sampler == "ddim" else diffusers.DDPMScheduler
        return cls(**common, timestep_spacing=spacing, steps_offset=1, clip_sample=False, **extra)
    if sampler in ("euler", "euler_ancestral"):
        cls = diffusers.EulerDiscreteScheduler if sampler == "euler" else diffusers.EulerAncestralDiscreteScheduler
        if spacing == "karras":
            return cls(**common, timestep_spacing="linspace", use_karras_sigmas=True)
        return cls(**common, timestep_spacing=spacing, steps_offset=1)
    return diffusers.DPMSolverMultistepScheduler(**common, **_dpmpp_2m_options())


def diffusers_initial_scale(sampler: str, spacing: str, diffusion: DiffusionConfig, steps: int) -> float:
    """diffusers' initial noise scale divided by ours (1 except Euler-type trailing/linspace/karras)."""
    if sampler not in ("euler", "euler_ancestral") or spacing == "leading":
        return 1.0
    from latent_diffusion.sampling import get_sigmas

    sigma_max = float(get_sigmas(NoiseSchedule.from_config(diffusion), steps, spacing)[0])
    return sigma_max / (1 + sigma_max**2) ** 0.5


__all__ = [
    "diffusers_initial_scale",
    "diffusion_from_scheduler_config",
    "matching_scheduler",
    "round_unet_timesteps",
    "scheduler_config_for_export",
]


def round_unet_timesteps(unet: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make ``unet`` round the timesteps it is called with, as diffusers' DPM-Solver++ with Karras
    sigmas does; ``handle.remove()`` undoes it. (Fractional timesteps, our default, follow the
    sigmas exactly; this is only for image parity with diffusers.)"""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if len(args) >= 2:
            args = (args[0], torch.as_tensor(args[1]).round(), *args[2:])
        elif "timesteps" in kwargs:
            kwargs = {**kwargs, "timesteps": torch.as_tensor(kwargs["timesteps"]).round()}
        return args, kwargs

    return unet.register_forward_pre_hook(hook, with_kwargs=True)
