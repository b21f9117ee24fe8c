"""Vector quantization of the VQ-regularized autoencoder (van den Oord et al. 2017; LDM's VQ-reg).

Each latent vector is replaced by its nearest codebook entry (squared Euclidean distance).
The encoder receives gradients through the straight-through estimator
``z + sg[e - z]``; the codebook and the encoder are pulled together by
``||sg[z] - e||^2 + beta * ||z - sg[e]||^2`` (codebook term + commitment term). This is the
non-"legacy" form of taming-transformers' ``VectorQuantizer2``: its legacy default puts beta on
the codebook term instead, contrary to the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Rows of the [positions, codebook] distance matrix computed at once: bounds peak memory at
# about 64 MiB of float32 whatever the batch size (8192 codes x 64x64 latents x 8 images would
# otherwise need 1 GiB).
_DISTANCE_CHUNK_ELEMENTS = 1 << 24


@dataclass
class QuantizedLatent:
    """The VQ "posterior": a quantized latent plus what the loss and the logs need.

    ``latent`` is the pre-quantization encoder output ``z``, ``quantized`` the straight-through
    quantized latent (values equal to codebook rows, gradients flowing to ``z``), ``indices``
    the chosen codes ``[B, H, W]``, ``loss`` the codebook + commitment loss (scalar, float32),
    ``perplexity`` exp(entropy of the code histogram) and ``usage`` the fraction of codebook
    entries used at least once in the batch.
    """

    latent: torch.Tensor
    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The quantized latent; quantization is deterministic, so ``generator`` is unused."""
        del generator
        return self.quantized

    def mode(self) -> torch.Tensor:
        """The quantized latent (same as :meth:`sample`)."""
        return self.quantized

    def regularization_loss(self) -> torch.Tensor:
        """The codebook + beta * commitment loss."""
        return self.loss

    def stats(self) -> dict[str, float]:
        """Floats for logging: VQ loss, perplexity and codebook usage."""
        return {
            "vq_loss": float(self.loss.detach()),
            "perplexity": float(self.perplexity),
            "usage": float(self.usage),
        }


def code_perplexity(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (perplexity, usage) of a batch of code indices.

    Perplexity is ``exp(-sum_k p_k log p_k)`` with ``p_k`` the fraction of positions using code
    ``k``: ``k`` codes used equally often give exactly ``k``. ``xlogy`` makes unused codes add 0
    without the ``+1e-10`` fudge of the reference code, so the closed form holds exactly.
    """
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum()
    entropy = -torch.special.xlogy(probs, probs).sum()
    usage = (counts > 0).float().mean()
    return torch.exp(entropy), usage


class VectorQuantizer(nn.Module):
    """A codebook ``embedding`` of ``codebook_size`` vectors of size ``dim`` (key ``quantize.embedding``).

    Initialized uniformly in [-1/K, 1/K] like taming-transformers, so freshly built models
    behave like the reference code.
    """

    def __init__(self, codebook_size: int, dim: int, beta: float) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    @torch.no_grad()
    def nearest_codes(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row for each row of ``flat`` ([N, dim], float32).

        Uses ``||z||^2 + ||e||^2 - 2 z.e`` in float32 with autocast off: in bf16 near-ties
        would pick the wrong code.
        """
        codebook = self.embedding.weight.float()
        codebook_sq = codebook.pow(2).sum(dim=1)
        rows = max(1, _DISTANCE_CHUNK_ELEMENTS // self.codebook_size)
        out = []
        with torch.autocast(device_type=flat.device.type, enabled=False):
            for chunk in flat.split(rows):
                dist = chunk.pow(2).sum(dim=1, keepdim=True) + codebook_sq - 2.0 * chunk @ codebook.t()
                out.append(dist.argmin(dim=1))
        return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.long)

    def forward(self, z: torch.Tensor) -> QuantizedLatent:
        """Quantize ``z`` ([B, dim, H, W]) to its nearest codebook rows."""
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(
                f"z has shape {tuple(z.shape)}; the quantizer expects [batch, {self.dim}, height, width]"
            )
        b, c, h, w = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, c)
        indices = self.nearest_codes(flat)
        codes = self.embedding(indices).view(b, h, w, c).permute(0, 3, 1, 2)
        z32 = z.float()
        codebook_loss = F.mse_loss(codes, z32.detach())
        commitment_loss = F.mse_loss(z32, codes.detach())
        loss = codebook_loss + self.beta * commitment_loss
        # Straight-through: forward value is the code, backward is the identity to z. Written as
        # e + (z - sg[z]) rather than the usual z + sg[e - z] because the latter rounds twice and
        # can miss the codebook row by an ulp; z - sg[z] is exactly zero.
        quantized = codes.detach().to(z.dtype) + (z - z.detach())
        perplexity, usage = code_perplexity(indices, self.codebook_size)
        return QuantizedLatent(
            latent=z,
            quantized=quantized,
            indices=indices.view(b, h, w),
            loss=loss,
            perplexity=perplexity,
            usage=usage,
        )
