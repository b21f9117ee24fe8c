"""Capture and restore every random-number generator, so a resumed run continues bit-exactly.

The state is a flat ``dict[str, torch.Tensor]``: it can be written with safetensors or
``torch.save`` and read back with ``torch.load(weights_only=True)`` (no pickled Python objects).
Keys: ``python.*`` (``random``), ``numpy.*`` (numpy's global legacy generator), ``torch.cpu``,
``torch.cuda.<i>`` for each visible CUDA device, and ``generator.<name>`` for named
``torch.Generator`` objects the training loop owns (e.g. the diffusion noise generator).

In data-parallel runs each process has its own streams; gather them with
``DistributedContext.all_gather_object`` if a checkpoint must hold all of them.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping

import numpy as np
import torch

RngState = dict[str, torch.Tensor]

_GENERATOR_PREFIX = "generator."


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and every CUDA device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy only accepts 32-bit seeds
    torch.manual_seed(seed)


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> RngState:
    """Snapshot all global generators plus the named ``generators``."""
    state: RngState = {}
    version, internal, gauss_next = random.getstate()
    state["python.version"] = torch.tensor(version, dtype=torch.int64)
    state["python.state"] = torch.tensor(internal, dtype=torch.int64)
    # gauss() caches its second value; NaN encodes "no cached value" (gauss never returns NaN).
    state["python.gauss_next"] = torch.tensor(math.nan if gauss_next is None else gauss_next, dtype=torch.float64)

    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    if kind != "MT19937":
        raise ValueError(f"numpy's global generator is {kind!r}; only MT19937 can be captured")
    state["numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    state["numpy.pos"] = torch.tensor(pos, dtype=torch.int64)
    state["numpy.has_gauss"] = torch.tensor(has_gauss, dtype=torch.int64)
    state["numpy.cached_gaussian"] = torch.tensor(cached, dtype=torch.float64)

    state["torch.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch.cuda.{index}"] = cuda_state
    for name, generator in (generators or {}).items():
        state[_GENERATOR_PREFIX + name] = generator.get_state()
    return state


def restore_rng_state(state: Mapping[str, torch.Tensor],
                      generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Put every generator back into the captured state.

    ``generators`` must name exactly the generators that were captured, so a renamed or
    forgotten generator is an error rather than a silently different random stream. CUDA
    states are restored for the devices present; a mismatch in device count only warns,
    because resuming a GPU run on another machine is legitimate.
    """
    generators = dict(generators or {})
    saved = sorted(k[len(_GENERATOR_PREFIX):] for k in state if k.startswith(_GENERATOR_PREFIX))
    if saved != sorted(generators):
        raise ValueError(f"generators {sorted(generators)} do not match the captured generators {saved}")
    _require(state, ("python.version", "python.state", "python.gauss_next", "numpy.keys",
                     "numpy.pos", "numpy.has_gauss", "numpy.cached_gaussian", "torch.cpu"))

    gauss = float(state["python.gauss_next"])
    random.setstate((int(state["python.version"]), tuple(int(v) for v in state["python.state"].tolist()),
                     None if math.isnan(gauss) else gauss))
    np.random.set_state(("MT19937", state["numpy.keys"].numpy().astype(np.uint32), int(state["numpy.pos"]),
                         int(state["numpy.has_gauss"]), float(state["numpy.cached_gaussian"])))
    torch.set_rng_state(state["torch.cpu"].to(device="cpu", dtype=torch.uint8))

    cuda_keys = sorted((k for k in state if k.startswith("torch.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda_keys) != available:
        warnings.warn(f"captured RNG states for {len(cuda_keys)} CUDA devices but {available} are visible; "
                      "restoring those that exist", stacklevel=2)
    for key in cuda_keys:
        index = int(key.rsplit(".", 1)[1])
        if index < available:
            torch.cuda.set_rng_state(state[key].to(device="cpu", dtype=torch.uint8), index)
    for name, generator in generators.items():
        generator.set_state(state[_GENERATOR_PREFIX + name].to(device="cpu", dtype=torch.uint8))


def _require(state: Mapping[str, torch.Tensor], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"RNG state is missing {missing}; it was not made by capture_rng_state")


__all__ = ["RngState", "capture_rng_state", "restore_rng_state", "seed_everything"]
