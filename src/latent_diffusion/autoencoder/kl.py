"""The KL-regularized posterior q(z|x) = N(mean, diag(exp(logvar))) of the KL autoencoder.

Same maths as LDM's ``DiagonalGaussianDistribution``: the log-variance is clamped to [-30, 20]
so ``exp`` can neither underflow to a zero std nor overflow early in training. Reductions
(KL, NLL) run in float32 even under bf16 autocast, because the per-sample KL sums thousands of
small terms and the training loss weights it by ~1e-6.
"""

from __future__ import annotations

import math

import torch

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class DiagonalGaussian:
    """A diagonal Gaussian over latents shaped ``[B, C, H, W]``.

    Build it from ``mean`` and ``logvar`` of equal shape, or from the stacked encoder output
    with :meth:`from_moments`.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(
                f"mean has shape {tuple(mean.shape)} but logvar has shape {tuple(logvar.shape)}; "
                "they must be equal"
            )
        if mean.ndim != 4:
            raise ValueError(f"mean must be shaped [batch, channels, height, width], got {tuple(mean.shape)}")
        self.mean = mean
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        """Split ``[B, 2C, H, W]`` into mean (first C channels) and logvar (last C), as LDM does."""
        if moments.ndim != 4 or moments.shape[1] % 2 != 0:
            raise ValueError(
                f"moments must be shaped [batch, 2*channels, height, width], got {tuple(moments.shape)}"
            )
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation ``exp(logvar / 2)``."""
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        """Variance ``exp(logvar)``."""
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized draw ``mean + std * eps`` (differentiable in mean and logvar).

        ``eps`` is drawn in float32 and then cast, so a seeded generator gives the same noise
        whatever the posterior's dtype.
        """
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=torch.float32)
        return self.mean + self.std * eps.to(self.mean.dtype)

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """Per-sample KL(q || N(0, I)) summed over C, H, W: ``0.5 * sum(mean^2 + var - 1 - logvar)``."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return 0.5 * torch.sum(mean.pow(2) + logvar.exp() - 1.0 - logvar, dim=(1, 2, 3))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood of ``x`` under q, summed over C, H, W (in nats)."""
        if x.shape != self.mean.shape:
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the posterior has shape {tuple(self.mean.shape)}"
            )
        mean, logvar, x = self.mean.float(), self.logvar.float(), x.float()
        terms = math.log(2.0 * math.pi) + logvar + (x - mean).pow(2) * torch.exp(-logvar)
        return 0.5 * torch.sum(terms, dim=(1, 2, 3))

    def regularization_loss(self) -> torch.Tensor:
        """Batch mean of :meth:`kl` (the KL term of the first-stage loss, before ``kl_weight``)."""
        return self.kl().mean()

    def stats(self) -> dict[str, float]:
        """Floats for logging: batch-mean KL and the mean posterior std."""
        with torch.no_grad():
            return {"kl": float(self.kl().mean()), "posterior_std": float(self.std.float().mean())}
