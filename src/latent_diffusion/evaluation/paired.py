"""Paired comparison of two models' retrieval hits on the same prompts.

Two evaluations with the same prompt sets, seeds and gallery score the same prompts, so a
difference between their top-k rates should be read prompt by prompt, not as two independent
rates: with 100 prompts a top-5 rate near 20% has a standard error of 4 points on its own, but
the prompts both models get right (or both miss) carry no information about which is better.
This module compares on the discordant prompts, the ones that one model gets and the other
does not: an exact McNemar test (a two-sided binomial test of the discordant counts at 1/2) and
a paired bootstrap interval of the difference in rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from latent_diffusion.validation import check_positive


def paired_hits(ranks_a: Sequence[int], ranks_b: Sequence[int], k: int = 5, *, resamples: int = 10_000,
                seed: int = 0) -> dict[str, Any]:
    """Compare model A's and model B's top-``k`` hits on the same items (1-based ranks, item by item).

    Returns ``rate_a``, ``rate_b``, ``difference`` (B - A), ``only_a`` and ``only_b`` (items one model
    hits and the other misses), ``p_value`` (exact two-sided McNemar; 1.0 with no discordant items)
    and ``interval``: the 2.5th and 97.5th percentiles of the difference over ``resamples`` paired
    bootstrap resamples of the items (seeded, so the same inputs give the same interval).
    """
    a, b = np.asarray(ranks_a), np.asarray(ranks_b)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"ranks_a and ranks_b must be non-empty lists of the same length (one rank per item); "
                         f"got {a.shape} and {b.shape}")
    if (a < 1).any() or (b < 1).any():
        raise ValueError("ranks are 1-based (1 = the right picture comes first); got a rank below 1")
    check_positive("k", k)
    check_positive("resamples", resamples)
    hit_a, hit_b = a <= k, b <= k
    only_a, only_b = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_b, discordant, 0.5).pvalue)
    rows = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    differences = (hit_b[rows].astype(np.float64) - hit_a[rows]).mean(axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"k": k, "n": int(a.size), "rate_a": float(hit_a.mean()), "rate_b": float(hit_b.mean()),
            "difference": float(hit_b.mean() - hit_a.mean()), "only_a": only_a, "only_b": only_b,
            "p_value": p_value, "interval": [float(low), float(high)]}


__all__ = ["paired_hits"]
