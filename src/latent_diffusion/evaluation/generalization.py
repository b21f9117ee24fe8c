"""Generalization metrics as pure functions: copies of training pictures, seed diversity, a style probe.

They work on features and images and know nothing of models or datasets;
:mod:`latent_diffusion.evaluation.emoji_styles` runs them on generated emoji-styles samples.

* :func:`neighbour_ratios` / :func:`copy_share`: the memorization criterion of Gu et al., "On
  Memorization in Diffusion Models" (TMLR 2025): a sample is a copy when its distance to the
  nearest training picture is under 1/3 of its distance to the second nearest. An exact copy
  has ratio 0; a sample far from everything, or between pictures, has a ratio near 1. Unlike the
  paper, the second nearest may be *grouped*: it is the nearest picture of another group than the
  nearest one, so near-duplicates in the training set (one drawing in five skin tones) do not hide
  a copy of one of them by sitting at almost the same distance.
* :func:`mean_pairwise_distance`: the mean distance over all pairs of a set of images - among the
  samples of one prompt over several seeds (0 when every seed gives the same picture), or among
  real pictures of one concept for comparison.
* :class:`LinearProbe`: multinomial logistic regression on frozen features (full-batch L-BFGS,
  class-balanced, deterministic), e.g. to tell which art style a picture is in.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COPY_RATIO = 1.0 / 3.0  # Gu et al.: nearest / second-nearest distance below this is a copy
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class NeighbourRatios:
    """Per sample: ``ratio`` of the nearest to the second-nearest distance, the ``nearest`` reference
    index and its ``distance`` (all ``[N]``)."""

    ratio: torch.Tensor
    nearest: torch.Tensor
    distance: torch.Tensor


def _matrix(name: str, value: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[0] == 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a non-empty [items, dim] tensor, got {shape}")
    return value.detach().double().cpu()


def neighbour_ratios(samples: torch.Tensor, references: torch.Tensor, groups: Sequence[Hashable] | None = None,
                     chunk: int = 256) -> NeighbourRatios:
    """Euclidean nearest / second-nearest distance ratio of each sample ``[N, D]`` among ``references``
    ``[M, D]`` (see the module docstring). ``groups``: one id per reference; the second nearest is
    then taken among references of another group than the nearest's. A sample at distance 0 from
    its nearest reference has ratio 0 whatever the second distance."""
    queries, refs = _matrix("samples", samples), _matrix("references", references)
    if queries.shape[1] != refs.shape[1]:
        raise ValueError(f"samples have dimension {queries.shape[1]} but references have {refs.shape[1]}")
    if groups is None:
        groups = range(len(refs))
    if len(groups) != len(refs):
        raise ValueError(f"groups has {len(groups)} ids but references has {len(refs)} rows; they must match")
    codes = {group: code for code, group in enumerate(dict.fromkeys(groups))}
    if len(codes) < 2:
        raise ValueError("references must hold at least two groups (pictures) for a second-nearest distance")
    group_of = torch.tensor([codes[g] for g in groups])
    ratios, nearest, distances = [], [], []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start:start + chunk], refs)
        first, index = d.min(dim=1)
        same = group_of.unsqueeze(0) == group_of[index].unsqueeze(1)
        second = d.masked_fill(same, float("inf")).min(dim=1).values
        ratio = torch.where(first == 0, torch.zeros_like(first), first / second)
        ratios.append(ratio)
        nearest.append(index)
        distances.append(first)
    return NeighbourRatios(torch.cat(ratios), torch.cat(nearest), torch.cat(distances))


def copy_share(ratios: torch.Tensor, threshold: float = COPY_RATIO) -> float:
    """The fraction of ratios below ``threshold`` (the samples that count as copies)."""
    if ratios.numel() == 0:
        raise ValueError("ratios is empty; there is nothing to count")
    return float((ratios < threshold).double().mean())


def pixel_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per image pair ``[B]``, in grey levels of 0-255 (images in [-1, 1])."""
    return (x.float() - y.float()).abs().mean(dim=tuple(range(1, x.ndim))) * 127.5


def mean_pairwise_distance(images: torch.Tensor, distance: Distance = pixel_distance, batch_size: int = 32) -> float:
    """The mean of ``distance(a, b)`` over the ``K (K - 1) / 2`` unordered pairs of ``images`` ``[K, ...]``."""
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or images.shape[0] < 2:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must hold at least two images [K >= 2, ...], got {shape}")
    first, second = torch.triu_indices(images.shape[0], images.shape[0], offset=1)
    with torch.no_grad():
        values = [distance(images[first[s:s + batch_size]], images[second[s:s + batch_size]]).double().cpu()
                  for s in range(0, len(first), batch_size)]
    return float(torch.cat(values).mean())


@dataclass
class LinearProbe:
    """A softmax classifier ``features @ weight.T + bias`` over ``classes`` (see :meth:`fit`)."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: tuple[str, ...]

    @classmethod
    def fit(cls, features: torch.Tensor, labels: Sequence[str], weight_decay: float = 1e-3,
            iterations: int = 100) -> "LinearProbe":
        """Multinomial logistic regression on L2-normalized ``features`` ``[N, D]`` (float64, full-batch
        L-BFGS from zero: the same data give the same probe). Each class weighs the same in the loss
        whatever its count, so a rare class is not sacrificed for accuracy on the common ones.
        ``weight_decay``: the L2 penalty on the weights."""
        x = F.normalize(_matrix("features", features), dim=1)
        if len(labels) != len(x):
            raise ValueError(f"labels has {len(labels)} entries but features has {len(x)} rows; they must match")
        classes = tuple(sorted(set(labels)))
        if len(classes) < 2:
            raise ValueError(f"a probe needs at least two classes, got {list(classes)}")
        y = torch.tensor([classes.index(label) for label in labels])
        counts = torch.bincount(y, minlength=len(classes)).double()
        class_weight = counts.sum() / (len(classes) * counts)
        weight = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, y, weight=class_weight) + weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return cls(weight.detach(), bias.detach(), classes)

    def predict(self, features: torch.Tensor) -> list[str]:
        """The most likely class of each row of ``features`` ``[N, D]``."""
        x = F.normalize(_matrix("features", features), dim=1)
        if x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"features have dimension {x.shape[1]} but the probe was fit on {self.weight.shape[1]}")
        return [self.classes[i] for i in (x @ self.weight.T + self.bias).argmax(dim=1).tolist()]

    def accuracy(self, features: torch.Tensor, labels: Sequence[str]) -> float:
        """The fraction of rows whose predicted class is their label."""
        predicted = self.predict(features)
        if len(labels) != len(predicted):
            raise ValueError(f"labels has {len(labels)} entries but features has {len(predicted)} rows")
        return sum(p == t for p, t in zip(predicted, labels)) / len(labels)


__all__ = ["COPY_RATIO", "LinearProbe", "NeighbourRatios", "copy_share", "mean_pairwise_distance",
           "neighbour_ratios", "pixel_distance"]
