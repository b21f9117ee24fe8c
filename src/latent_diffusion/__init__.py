"""latent_diffusion: a small, hackable, fully trainable latent diffusion system.

One module per concept of Rombach et al. 2022: ``autoencoder``, ``unet``, ``attention``,
``conditioning``, ``diffusion`` (schedules, parameterizations, objective), ``sampling``
(samplers as pure functions, guidance as a denoiser wrapper), ``data``, ``losses``, ``training``.
"""

__version__ = "0.1.0"
