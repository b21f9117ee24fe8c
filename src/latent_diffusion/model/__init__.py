"""The latent diffusion model itself, below every task, trainer and server that uses it.

- :mod:`~latent_diffusion.model.components`: ``DiffusionComponents`` (autoencoder, UNet,
  conditioner, schedule) and the maps images <-> latents;
- :mod:`~latent_diffusion.model.folder`: the self-describing model folder (save, load, hash);
- :mod:`~latent_diffusion.model.reverse_process`: ``sample_latents``, seeded noise through a
  sampler to latents.

Pipelines (``latent_diffusion.pipelines``), training, evaluation, conversion and serving import
from here; nothing here imports them.
"""

from latent_diffusion.model.components import DiffusionComponents, check_compatible, decode_images, encode_images
from latent_diffusion.model.folder import INDEX_FILE, load_components, model_hash, read_index, save_components
from latent_diffusion.model.reverse_process import DEFAULT_SPACING, sample_latents, sampling_sigmas

__all__ = [
    "DEFAULT_SPACING",
    "INDEX_FILE",
    "DiffusionComponents",
    "check_compatible",
    "decode_images",
    "encode_images",
    "load_components",
    "model_hash",
    "read_index",
    "sample_latents",
    "sampling_sigmas",
    "save_components",
]
