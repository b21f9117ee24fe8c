"""Latent consistency distillation (Luo et al. 2023, LCM): a guided teacher into a few-step student.

The teacher is a trained text-to-image model folder. The student is its UNet with a guidance
input (``time_cond_proj_dim``: the embedding of ``w = scale - 1`` projected onto the timestep
features, starting at zero so the student starts as the teacher's conditional model), and a
target network follows the student as an EMA. One step, for a batch of training latents x0:

1. draw an index ``n`` of the teacher grid (``original_steps`` of the schedule's timesteps,
   ``t_n = (n + 1) k - 1`` with ``k = T / original_steps``), a guidance scale ``w`` from
   ``[guidance_min, guidance_max]`` and noise; ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` at ``t = t_n``;
2. the teacher, with classifier-free guidance at ``w``, takes one DDIM step from ``t`` to
   ``s = t - k`` (``s = 0`` below it): ``x_s = sqrt(a_s) x0_w + sqrt(1 - a_s) eps_w``;
3. the loss is the distance between the student's consistency output at ``(x_t, t)`` and the
   target network's at ``(x_s, s)``, both ``c_skip x + c_out x0_theta``
   (:func:`~latent_diffusion.diffusion.consistency.boundary_scalings`): pseudo-Huber
   ``sqrt(d^2 + c^2) - c`` or L2.

Everything random in a step comes from a generator seeded by ``(seed, step)`` and is drawn for
the global batch, as in stage 2, so runs are bit-reproducible, resume exactly and give the same
batches under ``torchrun``. The exported folder holds the target network and its
``consistency.json`` (how it samples: ``ldm generate`` then needs no flags).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from latent_diffusion.conditioning.conditioner import TEXT_KINDS
from latent_diffusion.config import Config
from latent_diffusion.data import DataConfig, dataset_from_config
from latent_diffusion.diffusion import parameterization
from latent_diffusion.diffusion.consistency import ConsistencyConfig, boundary_scalings
from latent_diffusion.hardware import resolve_device, resolve_precision
from latent_diffusion.io import file_digest, load_state_strict
from latent_diffusion.model.components import DiffusionComponents, decode_images
from latent_diffusion.model.folder import load_components, load_unet, model_hash, read_index, save_components
from latent_diffusion.model.reverse_process import sample_latents
from latent_diffusion.sampling.discretization import lcm_timesteps
from latent_diffusion.sampling.guidance import concat_conditions
from latent_diffusion.training.checkpoint import CheckpointManager
from latent_diffusion.training.diffusion import (
    PreviewConfig,
    caption_composer,
    draw_captions,
    epoch_batch,
    shared_latents,
)
from latent_diffusion.training.distributed import DistributedContext
from latent_diffusion.training.latent_cache import LatentSet, cache_key
from latent_diffusion.training.logging import TrainingLogger
from latent_diffusion.training.loop import autocast, compile_in_place, run_training
from latent_diffusion.training.optim import base_lr, build_optimizer, clip_grad, scaled_param_groups, warmup_schedule
from latent_diffusion.training.run_folder import check_run_folder, clear_run_folder
from latent_diffusion.training.settings import OptimConfig, RunConfig, batches_per_epoch
from latent_diffusion.unet import UNet, UNetConfig
from latent_diffusion.unet.pruning import prune_res_blocks
from latent_diffusion.validation import check_choice, check_in_range, check_positive

LOSSES = ("huber", "l2")


def _lcm_preview() -> PreviewConfig:
    return PreviewConfig(steps=4, sampler="lcm", guidance=5.0)


@dataclass
class DistillTrainingConfig(Config):
    """Everything a distillation run needs; saved in every checkpoint."""

    teacher: str  # a text-to-image model folder (a run's final/ or a shipped model)
    data: DataConfig
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    loss: Literal["huber", "l2"] = "huber"
    huber_c: float = 0.001
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0, schedule="constant"))
    run: RunConfig = field(default_factory=RunConfig)
    ema_decay: float = 0.95  # of the target network (LCM's)
    preview: PreviewConfig = field(default_factory=_lcm_preview)
    # A smaller, faster student: this many residual blocks per level instead of the teacher's, the
    # others removed as BK-SDM does (unet/pruning.py) before training. None keeps the teacher's.
    student_res_blocks: int | None = None
    # Start the student from this consistency model folder (e.g. an earlier distillation of the same
    # teacher) instead of the teacher itself; pruned too if student_res_blocks is set.
    student_init: str | None = None
    # Where the latent cache lives; None: <run_dir>/cache. As in stage 2 its file is named by a digest
    # of the autoencoder's weights and the data settings, so distillations of one teacher (and stage-2
    # runs on its autoencoder) can share one folder and encode the pictures once.
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)
        check_positive("huber_c", self.huber_c)
        check_in_range("ema_decay", self.ema_decay, 0.0, 1.0)
        if self.student_res_blocks is not None:
            check_positive("student_res_blocks", self.student_res_blocks)
        # The previews sample the student as it will be sampled: refused now, not at the first grid.
        if self.preview.sampler != "lcm":
            raise ValueError(f"preview.sampler={self.preview.sampler!r}: a consistency model samples with lcm")
        self.consistency.check_steps(self.preview.steps)
        self.consistency.check_guidance(self.preview.guidance)


def load_teacher(folder: str | Path, device: torch.device) -> DiffusionComponents:
    """The teacher model, refused (one line, what to do) unless it is a text-to-image model."""
    teacher = load_components(folder, device=device)
    if teacher.image_condition != "none" or teacher.conditioner.kind not in TEXT_KINDS:
        raise ValueError(f"teacher={str(folder)!r} is not a text-to-image model (image_condition="
                         f"{teacher.image_condition!r}, conditioner {teacher.conditioner.kind!r}); distil a model "
                         "that `ldm generate \"a prompt\"` runs")
    if teacher.consistency is not None:
        raise ValueError(f"teacher={str(folder)!r} is already a latent consistency model; distil the model it "
                         "was distilled from")
    for module in (teacher.autoencoder, teacher.unet, teacher.conditioner):
        module.requires_grad_(False)
    return teacher


def teacher_grid(num_timesteps: int, original_steps: int) -> torch.Tensor:
    """The ascending teacher timesteps ``(n + 1) k - 1``, ``k = num_timesteps // original_steps``:
    the whole grid the ``lcm`` spacing samples from, as integers."""
    return lcm_timesteps(num_timesteps, original_steps, original_steps).flip(0).long()


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Mean of ``sqrt((a - b)^2 + c^2) - c`` (Song & Dhariwal 2023; LCM's ``huber`` loss), in float32."""
    return (((a.float() - b.float()) ** 2 + c**2).sqrt() - c).mean()


class DistillTrainer:
    """Builds teacher, student, target, caches and optimizer; :meth:`train` runs the distillation."""

    def __init__(self, config: DistillTrainingConfig, resume: bool = False, overwrite: bool = False) -> None:
        self.config = config
        if config.optim.grad_accum != 1:
            raise ValueError(f"optim.grad_accum={config.optim.grad_accum}: distillation takes one batch per step; "
                             "raise run.batch_size instead")
        self.ctx = DistributedContext(resolve_device(config.run.device)).init()
        self.device = self.ctx.device
        self.run_dir = Path(config.run.run_dir)
        self.teacher = load_teacher(config.teacher, self.device)  # before anything is written
        stale = check_run_folder(self.run_dir, resume=resume, overwrite=overwrite)
        if self.ctx.is_main:
            clear_run_folder(stale)
        self.ctx.barrier()
        self.schedule = self.teacher.schedule
        self.grid = teacher_grid(self.schedule.num_timesteps, config.consistency.original_steps)
        self.precision = resolve_precision(config.run.precision, self.device)
        unet_config, state, source = self._student_start()
        self.student = UNet(unet_config).to(self.device)
        with torch.no_grad():
            load_state_strict(self.student, state, source=source)
        self.target = copy.deepcopy(self.student).requires_grad_(False).eval()
        compile_in_place(self.student, config.run, self.device)  # after the copy: the target stays eager
        self.latents = self._build_latents()
        self.model = self.ctx.wrap(self.student)
        groups = scaled_param_groups(self.student.named_parameters(), config.optim.lr_scale, config.optim.lr)
        self.optimizer = build_optimizer(groups, lr=config.optim.lr,
                                         weight_decay=config.optim.weight_decay, betas=config.optim.betas)
        self.scheduler = warmup_schedule(self.optimizer, config.optim.warmup_steps, config.run.max_steps,
                                         kind=config.optim.schedule)
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=config.run.keep_last)
        self.step = 0
        if resume:
            self._resume()

    def _student_start(self) -> tuple[UNetConfig, dict[str, torch.Tensor], str]:
        """The student's architecture, its first weights and where they came from."""
        config = self.config
        full = self.teacher.unet.config.replace(time_cond_proj_dim=config.consistency.embedding_dim)
        if config.student_init is None:
            # The teacher's weights, and a guidance projection at zero: the student starts as the
            # teacher's conditional model and learns what guidance adds.
            dim = config.consistency.embedding_dim
            state = {**self.teacher.unet.state_dict(),
                     "time_cond_proj.weight": torch.zeros(full.model_channels, dim)}
            unet_config, source = full, str(config.teacher)
        else:
            init = load_unet(config.student_init)
            own = init.config
            distilled = bool(read_index(config.student_init).get("consistency"))
            if not distilled or own.replace(num_res_blocks=full.num_res_blocks) != full:
                raise ValueError(f"student_init={config.student_init!r} is not a consistency model of the teacher's "
                                 f"UNet with consistency.embedding_dim={config.consistency.embedding_dim}; give an "
                                 "earlier distillation of this teacher, or leave student_init out to start from it")
            unet_config, state, source = own, init.state_dict(), str(config.student_init)
        if config.student_res_blocks is not None and config.student_res_blocks != unet_config.num_res_blocks:
            unet_config, state = prune_res_blocks(unet_config, state, config.student_res_blocks)
        return unet_config, state, source

    # ---- data ---------------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        """Items per optimizer step over all ranks."""
        return self.config.run.batch_size * self.ctx.world_size

    def _build_latents(self) -> LatentSet:
        config = self.config
        dataset = dataset_from_config(config.data, "train")
        batches_per_epoch(len(dataset), self.global_batch, "run.batch_size")  # before any cache is written
        self.composer = caption_composer(dataset, config.data)
        weights = Path(config.teacher) / "autoencoder.safetensors"
        key = cache_key("latent-cache-v1", file_digest(weights), config.data.to_dict())
        cache_dir = self.run_dir / "cache" if config.cache_dir is None else Path(config.cache_dir)
        return shared_latents(self.ctx, self.teacher.autoencoder, dataset,
                              cache_dir / f"latents-{key}.safetensors", device=self.device,
                              num_workers=config.run.num_workers, all_variants=config.data.caption_mode == "random")

    def _order(self, step: int) -> torch.Tensor:
        return epoch_batch(len(self.latents), self.global_batch, step, self.config.run.seed, "run.batch_size")

    # ---- one step --------------------------------------------------------------------------------
    def _x0(self, net_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        return parameterization.to_x0(net_output.float(), x_t, alpha_bar, self.teacher.diffusion.prediction)

    def _consistency(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
                     cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """``c_skip(t) x_t + c_out(t) x0_net(x_t, t)`` (float32)."""
        c_skip, c_out = (c.view(-1, 1, 1, 1) for c in boundary_scalings(
            t.float(), self.config.consistency.sigma_data, self.config.consistency.timestep_scaling))
        with self._autocast():
            output = net(x_t, t, **cond)
        return c_skip * x_t + c_out * self._x0(output, x_t, alpha_bar)

    def _teacher_step(self, x_t: torch.Tensor, t: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor,
                      scale: torch.Tensor, cond: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor]) -> torch.Tensor:
        """One guided DDIM step of the teacher from ``t`` (``alpha_bar`` ``a_t``) to the level ``a_s``
        (no gradients)."""
        with self._autocast():
            output = self.teacher.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), **concat_conditions(cond, uncond))
        x0_c, x0_u = self._x0(output, torch.cat([x_t, x_t]), torch.cat([a_t, a_t])).chunk(2)
        w = scale.view(-1, 1, 1, 1)
        x0 = x0_u + w * (x0_c - x0_u)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps

    def loss(self, order: torch.Tensor) -> torch.Tensor:
        """The distillation loss of the global batch ``order`` (this rank's share)."""
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + self.step)
        shape = (len(order), *self.latents.mean.shape[1:])
        latent_noise = torch.randn(shape, generator=generator)
        n = torch.randint(0, len(self.grid), (len(order),), generator=generator)
        noise = torch.randn(shape, generator=generator)
        low, high = cfg.consistency.guidance_min, cfg.consistency.guidance_max
        scale = low + (high - low) * torch.rand(len(order), generator=generator)
        choice = torch.randint(0, 1 << 30, (len(order),), generator=generator)
        mine = slice(self.ctx.rank, None, self.ctx.world_size)
        index, n, noise, scale = order[mine], n[mine], noise[mine].to(self.device), scale[mine].to(self.device)
        x0 = self.latents.draw(index, latent_noise[mine], self.teacher.autoencoder.config.scale_factor).to(self.device)
        t = self.grid[n].to(self.device)
        s = (t - (self.schedule.num_timesteps // cfg.consistency.original_steps)).clamp(min=0)
        alphas = self.schedule.alphas_cumprod.to(self.device, torch.float32)
        a_t, a_s = (alphas[v].view(-1, 1, 1, 1) for v in (t, s))
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        cond, uncond = self.teacher.conditioner.pair(draw_captions(self.composer, self.latents, index, choice[mine]))
        cond, uncond = ({k: v.to(self.device) for k, v in c.items()} for c in (cond, uncond))
        with torch.no_grad():
            guided = {**cond, "timestep_cond": cfg.consistency.guidance_condition(scale, len(index)).to(self.device)}
            x_s = self._teacher_step(x_t, t, a_t, a_s, scale, cond, uncond)
            target = self._consistency(self.target, x_s, s, a_s, guided)
        prediction = self._consistency(self.model, x_t, t, a_t, guided)
        if cfg.loss == "huber":
            return pseudo_huber(prediction, target, cfg.huber_c)
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def train_step(self) -> dict[str, float]:
        """One optimizer step and one target update; returns logged numbers."""
        loss = self.loss(self._order(self.step))
        loss.backward()
        grad_norm = clip_grad(list(self.student.parameters()), self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():  # the target follows the student: theta- <- mu theta- + (1 - mu) theta
            for target, online in zip(self.target.parameters(), self.student.parameters()):
                target.lerp_(online, 1.0 - self.config.ema_decay)
        self.step += 1
        mean_loss = float(self.ctx.all_reduce_mean(loss.detach().cpu()))
        return {"loss": mean_loss, "grad_norm": grad_norm, "lr": base_lr(self.optimizer)}

    # ---- checkpoints, previews, export --------------------------------------------------------
    def _save(self) -> None:
        if self.ctx.is_main:
            self.checkpoints.save(
                self.step, {"unet": (self.student, self.student.config), "target": (self.target, self.target.config)},
                optimizers={"optimizer": self.optimizer}, schedulers={"scheduler": self.scheduler},
                extra={"config": self.config.to_dict(), "stage": "distill"}, overwrite=True)
        self.ctx.barrier()

    def _resume(self) -> None:
        self.step = self.checkpoints.resume({"unet": self.student, "target": self.target},
                                            optimizers={"optimizer": self.optimizer},
                                            schedulers={"scheduler": self.scheduler})

    def components(self) -> DiffusionComponents:
        """The distilled model as it would be exported now (the target network)."""
        t = self.teacher
        return DiffusionComponents(t.autoencoder, self.target, t.conditioner, t.diffusion, resolution=t.resolution,
                                   consistency=self.config.consistency)

    def preview(self, logger: TrainingLogger) -> None:
        """Log a grid of few-step samples of the fixed preview prompts (target network)."""
        preview = self.config.preview
        if not self.ctx.is_main or not preview.prompts:
            return
        components = self.components()
        prompts = list(preview.prompts)
        with torch.no_grad():
            cond = components.conditioner(prompts=prompts)
        latents = sample_latents(components, cond, None, batch_size=len(prompts), seed=preview.seed,
                                 steps=preview.steps, sampler=preview.sampler, guidance=preview.guidance)
        logger.log_images(self.step, "samples", decode_images(components, latents), nrow=min(8, len(prompts)))

    def export(self, folder: Path) -> Path:
        """Write the target network with the teacher's other parts as a model folder."""
        extra = {"training_steps": self.step, "distilled_from": model_hash(self.config.teacher)}
        if self.config.student_init is not None:
            extra["student_init"] = model_hash(self.config.student_init)
        return save_components(self.components(), folder, extra=extra)

    def train(self) -> Path:
        """Run until ``run.max_steps``, checkpointing as configured; returns the exported folder."""
        self.student.train()
        return run_training(ctx=self.ctx, run=self.config.run, desc="distill", current_step=lambda: self.step,
                            train_step=self.train_step, loss_key="loss", log_images=self.preview, save=self._save,
                            export=self.export)


def train_distill(config: DistillTrainingConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Distil ``config.teacher`` into a latent consistency model; returns ``run_dir/final``."""
    return DistillTrainer(config, resume=resume, overwrite=overwrite).train()


__all__ = ["DistillTrainer", "DistillTrainingConfig", "LOSSES", "load_teacher", "pseudo_huber", "teacher_grid",
           "train_distill"]
