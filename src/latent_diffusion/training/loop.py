"""The loop both training stages share: steps, logging, image grids, checkpoints, export."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from latent_diffusion.hardware import autocast  # noqa: F401  (the trainers import it from here)
from latent_diffusion.training.distributed import DistributedContext
from latent_diffusion.training.logging import TrainingLogger
from latent_diffusion.training.settings import RunConfig


def memory_format(run: RunConfig) -> torch.memory_format:
    """The trained model's memory format: ``run.channels_last`` or the default contiguous one."""
    return torch.channels_last if run.channels_last else torch.contiguous_format


def compile_in_place(module: torch.nn.Module, run: RunConfig, device: torch.device | str) -> None:
    """``run.compile``: compile ``module``'s forward with torch.compile (inductor), in place, so its
    state-dict keys (which checkpoints, the EMA and exports match) stay the plain module's. Inductor's
    CPU code is C++, so on the CPU a missing compiler is a ValueError here, before the first step."""
    if not run.compile:
        return
    if torch.device(device).type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise ValueError("run.compile=true needs a C++ compiler for torch.compile's CPU kernels and none of "
                         "g++, c++ or clang++ is on PATH; install one (Debian/Ubuntu: apt install g++) or set "
                         "run.compile=false")
    # The autoencoder loss's adaptive weight takes two gradients of one graph (retain_graph=True),
    # which a compiled backward that donates its buffers refuses; without donation both stages run.
    torch._functorch.config.donated_buffer = False
    module.compile()


def run_training(
    *,
    ctx: DistributedContext,
    run: RunConfig,
    desc: str,
    current_step: Callable[[], int],
    train_step: Callable[[], dict[str, float]],
    loss_key: str,
    log_images: Callable[[TrainingLogger], None],
    save: Callable[[], None],
    export: Callable[[Path], Path],
) -> Path:
    """Call ``train_step`` until ``run.max_steps``; log, draw grids and checkpoint on schedule.

    ``train_step`` advances the step counter that ``current_step`` reads. At the end rank 0
    exports the model to ``run_dir/final``; the process group is left in every case.
    """
    logger = TrainingLogger(run.run_dir, total_steps=run.max_steps, enabled=ctx.is_main,
                            initial_step=current_step(), desc=desc)
    started, done_at_start = time.perf_counter(), current_step()
    try:
        while current_step() < run.max_steps:
            logs = train_step()
            step = current_step()
            if not math.isfinite(logs[loss_key]):
                raise FloatingPointError(f"loss is {logs[loss_key]} at step {step}; lower optim.lr or enable "
                                         "optim.grad_clip")
            logger.advance(loss=logs[loss_key])
            if step % run.log_every == 0:
                logs["steps_per_s"] = (step - done_at_start) / max(time.perf_counter() - started, 1e-9)
                logger.log_scalars(step, logs)
            if step % run.image_every == 0 and ctx.is_main:
                log_images(logger)
            if step % run.checkpoint_every == 0 or step == run.max_steps:
                save()
        final = Path(run.run_dir) / "final"
        if ctx.is_main:
            export(final)
        ctx.barrier()
        return final
    finally:
        logger.close()
        ctx.cleanup()
