"""Stage 1: train the KL/VQ autoencoder with L1 + perceptual + adaptive PatchGAN losses (paper Sec. 3.1).

Each step has two halves, as LDM's ``optimizer_idx`` 0 and 1: the autoencoder minimizes the
generator loss, then (from ``loss.disc_start`` on) the discriminator minimizes the hinge loss on
real images and detached reconstructions. At the end the latent scale factor (1 / std of the
latents of a sample of training images, Stable Diffusion's 0.18215 came from this) is measured
and stored in the exported autoencoder's config.

``train: decoder`` fine-tunes only the decoder of a trained autoencoder (``init_from``): the
encoder is frozen, so the latents, their scale factor and every UNet trained on them stay valid
while reconstructions sharpen (Stable Diffusion's ft-EMA / ft-MSE VAE decoders were made so).
``train: tiny_decoder`` keeps the whole autoencoder frozen and trains a :class:`TinyDecoder`
(``tiny_decoder:``) with the same losses to decode its scaled latents (posterior samples, as the
UNet learns them) into the training images: a fast stand-in decoder (TAESD's recipe on our latents),
exported as ``tiny_decoder.json`` / ``.safetensors`` for ``ldm convert --tiny-decoder``.

Data order is a pure function of ``(seed, step)`` and every random draw of a step comes from a
generator seeded by ``(seed, step, rank)``, so runs are reproducible and resume exactly.
Under ``torchrun`` gradients are averaged across processes by an explicit all-reduce after each
backward: the two-player loss (two backward passes through the discriminator per step, and the
adaptive weight's ``autograd.grad``) does not fit DDP's one-forward-one-backward contract.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig, load_autoencoder
from latent_diffusion.autoencoder.tiny import TinyDecodedAutoencoder, TinyDecoder, TinyDecoderConfig
from latent_diffusion.config import Config
from latent_diffusion.data import DataConfig, dataset_from_config
from latent_diffusion.hardware import resolve_device, resolve_precision
from latent_diffusion.io import atomic_directory, save_module
from latent_diffusion.losses import AutoencoderLoss, AutoencoderLossConfig
from latent_diffusion.training.checkpoint import CheckpointManager
from latent_diffusion.training.distributed import DistributedContext
from latent_diffusion.training.logging import TrainingLogger
from latent_diffusion.training.loop import autocast, compile_in_place, memory_format, run_training
from latent_diffusion.training.optim import (
    GradientAccumulator,
    base_lr,
    build_optimizer,
    clip_grad,
    scaled_param_groups,
    warmup_schedule,
)
from latent_diffusion.training.run_folder import check_run_folder, clear_run_folder
from latent_diffusion.training.settings import OptimConfig, RunConfig, batches_per_epoch
from latent_diffusion.validation import check_choice, check_positive

# What ``train: decoder`` freezes: everything that decides the latents.
ENCODER_SIDE = ("encoder", "quant_conv", "quantize")


@dataclass
class AutoencoderTrainingConfig(Config):
    """Everything a stage-1 run needs; saved in every checkpoint."""

    data: DataConfig
    model: AutoencoderConfig
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, betas=(0.5, 0.9)))
    disc_lr: float | None = None  # None: the autoencoder's learning rate
    run: RunConfig = field(default_factory=RunConfig)
    scale_factor_samples: int = 512
    # A trained autoencoder (a folder with autoencoder.json: a run's final/ or a model folder) whose
    # weights start this run; on --resume the checkpoint's weights replace them.
    init_from: str | None = None
    train: Literal["all", "decoder", "tiny_decoder"] = "all"  # see the module docstring
    tiny_decoder: TinyDecoderConfig | None = None  # the architecture, for train: tiny_decoder

    def __post_init__(self) -> None:
        check_positive("scale_factor_samples", self.scale_factor_samples)
        check_choice("train", self.train, ("all", "decoder", "tiny_decoder"))
        if self.train != "all" and not self.init_from:
            raise ValueError(f"train: {self.train} trains a decoder for a trained autoencoder; set init_from to its "
                             "folder (a run's final/ or a model folder), or use train: all")
        if (self.train == "tiny_decoder") != (self.tiny_decoder is not None):
            raise ValueError("a tiny_decoder: section goes with train: tiny_decoder, and train: tiny_decoder needs "
                             "one (e.g. tiny_decoder: {channels: [64, 64, 64], blocks: [3, 3, 1]} for f=4)")
        if self.tiny_decoder is not None:
            tiny, model = self.tiny_decoder, self.model
            if (tiny.latent_channels, tiny.out_channels, tiny.downsampling_factor) != (
                    model.z_channels, model.out_channels, model.downsampling_factor):
                raise ValueError(
                    f"tiny_decoder (latent_channels={tiny.latent_channels}, out_channels={tiny.out_channels}, "
                    f"{len(tiny.blocks)} levels: f={tiny.downsampling_factor}) must match the autoencoder "
                    f"(z_channels={model.z_channels}, out_channels={model.out_channels}, "
                    f"f={model.downsampling_factor}): give it {len(model.channel_mult)} levels")
        if self.loss.regularizer != self.model.regularizer:
            raise ValueError(
                f"loss.regularizer={self.loss.regularizer!r} must equal model.regularizer="
                f"{self.model.regularizer!r}"
            )
        if self.model.in_channels != self.data.channels or self.loss.disc_in_channels != self.data.channels:
            raise ValueError(
                f"data.channels={self.data.channels} must equal model.in_channels={self.model.in_channels} "
                f"and loss.disc_in_channels={self.loss.disc_in_channels}"
            )


class StepBatches(Sampler[list[int]]):
    """Index lists of this rank's batch for steps ``start..stop-1``: a pure function of the step."""

    def __init__(self, size: int, batch: int, world: int, rank: int, seed: int, start: int, stop: int) -> None:
        self.size, self.batch, self.world, self.rank = size, batch, world, rank
        self.seed, self.start, self.stop = seed, start, stop
        self.per_epoch = batches_per_epoch(size, batch * world)

    def indices(self, step: int) -> list[int]:
        """This rank's share of the global batch of ``step``."""
        epoch, position = divmod(step, self.per_epoch)
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        global_batch = order[position * self.batch * self.world:(position + 1) * self.batch * self.world]
        return global_batch[self.rank::self.world].tolist()

    def __iter__(self):
        return (self.indices(step) for step in range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class AutoencoderTrainer:
    """Builds the autoencoder, loss (with discriminator), optimizers and data; :meth:`train` runs it."""

    def __init__(self, config: AutoencoderTrainingConfig, resume: bool = False, overwrite: bool = False) -> None:
        self.config = config
        self.ctx = DistributedContext(resolve_device(config.run.device)).init()
        self.device = self.ctx.device
        self.run_dir = Path(config.run.run_dir)
        # Before anything is written: a fresh run never lands in a folder holding another run.
        stale = check_run_folder(self.run_dir, resume=resume, overwrite=overwrite)
        if self.ctx.is_main:
            clear_run_folder(stale)
        self.ctx.barrier()
        torch.manual_seed(config.run.seed)  # identical initial weights on every rank
        self.model = Autoencoder(config.model)
        self.source_scale_factor = self._init_from(config.init_from) if config.init_from else None
        if config.train == "decoder":
            for name in ENCODER_SIDE:
                if hasattr(self.model, name):
                    getattr(self.model, name).requires_grad_(False)
        # What learns: the autoencoder, or (train: tiny_decoder) a TinyDecoder beside the frozen one.
        self.tiny = None if config.tiny_decoder is None else TinyDecoder(config.tiny_decoder)
        if self.tiny is not None:
            self.model.requires_grad_(False).eval()
        for module in (self.model, self.tiny):
            if module is not None:
                module.to(self.device, memory_format=memory_format(config.run))  # in place
        self.learner: torch.nn.Module = self.model if self.tiny is None else self.tiny
        compile_in_place(self.learner, config.run, self.device)
        # init_from is required with a tiny decoder; its scale factor is the one the UNets' latents carry.
        self.reconstruct = self.model if self.tiny is None else TinyDecodedAutoencoder(
            self.model, self.tiny, self.source_scale_factor)
        # Resolved once, so a resumed run on the same machine keeps the same arithmetic.
        self.precision = resolve_precision(config.run.precision, self.device)
        named = [(n, p) for n, p in self.learner.named_parameters() if p.requires_grad]
        self.trainable = [p for _, p in named]
        self.loss = AutoencoderLoss(config.loss).to(self.device)
        self.train_set = dataset_from_config(config.data, "train")
        # before any write
        batches_per_epoch(len(self.train_set), config.run.batch_size * config.optim.grad_accum * self.ctx.world_size)
        self.optimizer = build_optimizer(scaled_param_groups(named, config.optim.lr_scale, config.optim.lr),
                                         lr=config.optim.lr,
                                         weight_decay=config.optim.weight_decay, betas=config.optim.betas)
        self.disc_optimizer = build_optimizer(self.loss.discriminator.parameters(),
                                              lr=config.disc_lr or config.optim.lr,
                                              weight_decay=config.optim.weight_decay, betas=config.optim.betas)
        self.scheduler = warmup_schedule(self.optimizer, config.optim.warmup_steps, config.run.max_steps,
                                         kind=config.optim.schedule)
        self.accumulator = GradientAccumulator(config.optim.grad_accum)
        self.disc_accumulator = GradientAccumulator(config.optim.grad_accum)
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=config.run.keep_last)
        self.step = 0
        if resume:
            self._resume()

    def _init_from(self, folder: str | Path) -> float:
        """Load the autoencoder of ``folder`` into the model; returns its scale factor."""
        source = load_autoencoder(folder, setting="init_from")
        if source.config.replace(scale_factor=self.config.model.scale_factor) != self.config.model:
            raise ValueError(f"init_from={str(folder)!r}: its autoencoder differs from the configured one; copy "
                             f"the model section from {str(Path(folder) / 'autoencoder.json')!r}")
        self.model.load_state_dict(source.state_dict())  # fp16 folders load as the model's fp32
        return source.config.scale_factor

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def train_step(self, images: torch.Tensor) -> dict[str, float]:
        """One generator step and (when active) one discriminator step on ``images``, this rank's
        ``optim.grad_accum`` micro-batches of ``run.batch_size`` (gradients summed over them, so a
        step sees their mean gradient; logs are their means)."""
        cfg = self.config
        micro_batches = images.to(self.device).split(cfg.run.batch_size)
        # One stream per step and rank; the micro-batches draw from it in turn.
        generator = torch.Generator().manual_seed((cfg.run.seed * 1_000_003 + self.step) * 1024 + self.ctx.rank)
        discriminator = self.loss.discriminator
        # The discriminator only judges in the generator half; its gradients there are discarded.
        discriminator.requires_grad_(False)
        self.optimizer.zero_grad(set_to_none=True)
        reconstructions, logs = [], []
        for part in micro_batches:
            with self.accumulator.micro_batch(self.learner) as micro:
                with self._autocast():
                    recon, posterior = self.reconstruct(part, sample_posterior=True, generator=generator)
                    g_loss, g_logs = self.loss.generator_loss(part, recon.float(), posterior.regularization_loss(),
                                                              self.learner.last_layer, self.step)
                micro.backward(g_loss)
            reconstructions.append(recon.detach().float())
            logs.append({**g_logs, **{k: float(v) for k, v in posterior.stats().items()}})
        self.ctx.average_gradients(self.learner)
        grad_norm = clip_grad(self.trainable, cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        discriminator.requires_grad_(True)
        if self.loss.discriminator_active(self.step):
            self.disc_optimizer.zero_grad(set_to_none=True)
            for i, (part, recon) in enumerate(zip(micro_batches, reconstructions)):
                with self.disc_accumulator.micro_batch(discriminator) as micro:
                    with self._autocast():
                        d_loss, d_logs = self.loss.discriminator_loss(part, recon, self.step)
                    micro.backward(d_loss)
                logs[i].update(d_logs)
            self.ctx.average_gradients(discriminator)
            clip_grad(discriminator.parameters(), cfg.optim.grad_clip)
            self.disc_optimizer.step()
        mean = {key: sum(log[key] for log in logs) / len(logs) for key in logs[0]}
        mean["grad_norm"] = grad_norm
        mean["lr"] = base_lr(self.optimizer)
        self.step += 1
        mean["total"] = float(self.ctx.all_reduce_mean(torch.tensor(mean["total"])))
        return mean

    def _learner_entry(self) -> tuple[str, torch.nn.Module, object]:
        """Checkpoint name, module and config of what this run trains."""
        if self.tiny is None:
            return "autoencoder", self.model, self.config.model
        return "tiny_decoder", self.tiny, self.config.tiny_decoder

    def _save(self) -> None:
        if self.ctx.is_main:
            name, module, config = self._learner_entry()
            self.checkpoints.save(
                self.step,
                {name: (module, config),
                 "discriminator": (self.loss, self.config.loss)},
                optimizers={"autoencoder": self.optimizer, "discriminator": self.disc_optimizer},
                schedulers={"autoencoder": self.scheduler},
                extra={"config": self.config.to_dict(), "stage": "autoencoder"}, overwrite=True,
            )
        self.ctx.barrier()

    def _resume(self) -> None:
        self.step = self.checkpoints.resume(
            {self._learner_entry()[0]: self.learner, "discriminator": self.loss},
            optimizers={"autoencoder": self.optimizer, "discriminator": self.disc_optimizer},
            schedulers={"autoencoder": self.scheduler})

    def preview_images(self, count: int = 8) -> torch.Tensor:
        """Fixed images for reconstruction grids: validation images when there are any."""
        try:
            dataset: Dataset = dataset_from_config(self.config.data, "validation")
            if len(dataset) == 0:
                raise ValueError("empty validation split")
        except (ValueError, FileNotFoundError):
            dataset = self.train_set
        return torch.stack([dataset[i]["image"] for i in range(min(count, len(dataset)))])

    def log_reconstructions(self, logger: TrainingLogger, images: torch.Tensor) -> None:
        """Inputs above reconstructions, as one grid."""
        if not self.ctx.is_main:
            return
        self.learner.eval()
        with torch.no_grad(), self._autocast():
            reconstructions, _ = self.reconstruct(images.to(self.device), sample_posterior=False)
        self.learner.train()
        grid = torch.cat([images.cpu(), reconstructions.float().clamp(-1, 1).cpu()])
        logger.log_images(self.step, "reconstructions", grid, nrow=len(images))

    def measure_scale_factor(self) -> float:
        """1 / std of posterior samples of the latents of up to ``scale_factor_samples`` train images."""
        count = min(self.config.scale_factor_samples, len(self.train_set))
        generator = torch.Generator().manual_seed(self.config.run.seed)
        order = torch.randperm(len(self.train_set), generator=generator)[:count].tolist()
        loader = DataLoader(torch.utils.data.Subset(self.train_set, order), batch_size=64,
                            num_workers=self.config.run.num_workers)
        latents = []
        self.model.eval()
        with torch.no_grad():
            for batch in loader:
                latents.append(self.model.encode(batch["image"].to(self.device)).sample(generator=generator).float())
        std = float(torch.cat(latents).std())
        if not math.isfinite(std) or std == 0:
            raise FloatingPointError(f"latent std is {std}; the autoencoder did not train")
        return 1.0 / std

    def export(self, folder: Path) -> Path:
        """Write ``autoencoder.json`` (with the scale factor) and its weights to ``folder``
        (``tiny_decoder.json`` and its weights after ``train: tiny_decoder``).

        The scale factor is measured, except after ``train: decoder``: the latents are the
        source's, and UNets trained on them were scaled by the source's factor, so it is kept.
        """
        if self.tiny is not None:
            with atomic_directory(folder) as tmp:
                save_module(self.tiny, self.config.tiny_decoder, tmp, "tiny_decoder")
            return folder
        decoder_only = self.config.train == "decoder"  # then init_from was required and set the source's
        scale = self.source_scale_factor if decoder_only else self.measure_scale_factor()
        config = self.config.model.replace(scale_factor=scale)
        self.model.config = config
        with atomic_directory(folder) as tmp:
            save_module(self.model, config, tmp, "autoencoder")
        return folder

    def train(self) -> Path:
        """Run until ``run.max_steps``; returns the exported folder (``run_dir/final``)."""
        run = self.config.run
        sampler = StepBatches(len(self.train_set), run.batch_size * self.config.optim.grad_accum,
                              self.ctx.world_size, self.ctx.rank, run.seed, self.step, run.max_steps)
        batches = iter(DataLoader(self.train_set, batch_sampler=sampler, num_workers=run.num_workers))
        previews = self.preview_images() if self.ctx.is_main else None
        self.learner.train()
        self.loss.train()
        return run_training(
            ctx=self.ctx, run=run, desc="autoencoder", current_step=lambda: self.step,
            train_step=lambda: self.train_step(next(batches)["image"]), loss_key="total",
            log_images=lambda logger: self.log_reconstructions(logger, previews),
            save=self._save, export=self.export,
        )


def train_autoencoder(config: AutoencoderTrainingConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Train stage 1 as configured; returns the exported autoencoder folder (``run_dir/final``)."""
    return AutoencoderTrainer(config, resume=resume, overwrite=overwrite).train()
