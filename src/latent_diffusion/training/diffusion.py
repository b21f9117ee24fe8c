"""Stage 2: train the latent diffusion UNet on a frozen autoencoder's latents (paper Sec. 3.2).

Latents (and frozen text encodings) are computed once and cached, so a step costs only the UNet.
Every random draw of a step (posterior sample, timesteps, noise, condition dropout) comes from a
generator seeded by ``(seed, step, micro-batch)`` and is drawn for the *global* batch, of which
each process takes its share. So a run is bit-reproducible, resumes exactly from a checkpoint,
and ``torchrun --nproc_per_node=K`` computes the same batches as one process with K times the
batch (up to the order of floating-point sums in the gradient all-reduce).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from latent_diffusion.autoencoder import Autoencoder, load_autoencoder
from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
from latent_diffusion.conditioning.image import (
    IMAGE_CONDITIONS,
    concat_channels,
    degrade,
    low_res_condition,
    masked_image_condition,
    random_holes,
)
from latent_diffusion.config import Config
from latent_diffusion.data import DataConfig, dataset_from_config
from latent_diffusion.diffusion.objective import diffusion_loss
from latent_diffusion.diffusion.schedule import DiffusionConfig, NoiseSchedule
from latent_diffusion.hardware import resolve_device, resolve_precision
from latent_diffusion.io import file_digest
from latent_diffusion.model.components import DiffusionComponents, check_compatible, decode_images
from latent_diffusion.model.folder import save_components
from latent_diffusion.model.reverse_process import sample_latents
from latent_diffusion.training.checkpoint import CheckpointManager
from latent_diffusion.training.distributed import DistributedContext
from latent_diffusion.training.ema import EMA
from latent_diffusion.training.init_weights import init_unet_from
from latent_diffusion.training.latent_cache import (
    LatentSet,
    TextCache,
    cache_key,
    encode_captions,
    encode_dataset,
)
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
from latent_diffusion.unet import UNet, UNetConfig
from latent_diffusion.validation import check_choice, check_in_range


@dataclass
class PreviewConfig(Config):
    """Fixed prompts (or class names) and seed for the sample grids logged during training."""

    prompts: tuple[str, ...] = ()
    seed: int = 0
    steps: int = 20
    sampler: str = "dpmpp_2m"
    guidance: float = 4.0


@dataclass
class DiffusionTrainingConfig(Config):
    """Everything a stage-2 run needs; saved in every checkpoint."""

    data: DataConfig
    autoencoder: str  # a folder holding autoencoder.json + autoencoder.safetensors
    unet: UNetConfig
    conditioner: ConditionerConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ema_decay: float = 0.999
    cache_text: bool = True
    # Where the latent (and frozen-text) caches live; None: <run_dir>/cache. Their files are named by
    # a digest of the autoencoder's weights and the data settings, so runs on the same data (other
    # UNets, speed modes, a fine-tune) can share one folder and encode the pictures once.
    cache_dir: str | None = None
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    # A model folder whose UNet starts this run (fine-tuning, or a task model made from a
    # text-to-image one); ignored on --resume, where the checkpoint has the weights.
    init_from: str | None = None
    # Conditioning by concatenation (conditioning/image.py): "masked_image" trains an inpainting
    # model on random boxes and strokes, "low_res" a super-resolution model from images
    # downsampled by low_res_factor; unet.concat_channels must match.
    image_condition: Literal["none", "masked_image", "low_res"] = "none"
    low_res_factor: int = 4

    def __post_init__(self) -> None:
        check_in_range("ema_decay", self.ema_decay, 0.0, 1.0)
        check_choice("image_condition", self.image_condition, IMAGE_CONDITIONS)
        if self.image_condition == "low_res" and (self.low_res_factor < 2
                                                  or self.data.resolution % self.low_res_factor):
            raise ValueError(f"low_res_factor={self.low_res_factor} must be >= 2 and divide "
                             f"data.resolution={self.data.resolution}")


def check_image_condition(config: DiffusionTrainingConfig, autoencoder: Autoencoder) -> None:
    """Refuse, before any work, a UNet whose ``concat_channels`` do not fit ``image_condition``."""
    wanted = concat_channels(config.image_condition, autoencoder.latent_channels, autoencoder.config.out_channels)
    if config.unet.concat_channels != wanted:
        raise ValueError(f"image_condition={config.image_condition!r} needs unet.concat_channels={wanted} "
                         f"with this autoencoder, the config has {config.unet.concat_channels}")


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of one micro-batch: a pure function of (seed, step, micro-batch)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + micro)


BATCH_KNOBS = "run.batch_size or optim.grad_accum"


def caption_composer(dataset: torch.utils.data.Dataset, data: DataConfig) -> torch.utils.data.Dataset | None:
    """The dataset itself when ``data.caption_mode`` is ``compose`` (a fresh caption per item and
    step from its caption sampler, so no picture has one fixed caption; the texts are then encoded
    each step), else None; a dataset without a caption sampler is refused."""
    if data.caption_mode != "compose":
        return None
    if not hasattr(dataset, "compose_caption"):
        raise ValueError(f"data.caption_mode=compose needs a dataset with a caption sampler (emoji-styles); "
                         f"{data.name!r} has none: use caption_mode random")
    return dataset


def shared_latents(ctx: DistributedContext, autoencoder: Autoencoder, dataset: torch.utils.data.Dataset,
                   path: Path, *, device: torch.device, num_workers: int = 0, all_variants: bool = False,
                   keep_images: bool = False) -> LatentSet:
    """The dataset's latent cache at ``path``: rank 0 encodes (or reads) it, the others wait and read
    the file, so one process does the encoding whatever the number of ranks."""
    if ctx.is_main:
        latents = encode_dataset(autoencoder, dataset, path, device=device, num_workers=num_workers,
                                 all_variants=all_variants, keep_images=keep_images)
    ctx.barrier()
    if not ctx.is_main:
        latents = encode_dataset(autoencoder, dataset, path, device=device, show_progress=False,
                                 all_variants=all_variants, keep_images=keep_images)
    return latents


def epoch_batch(length: int, per_step: int, step: int, seed: int, knobs: str) -> torch.Tensor:
    """Dataset indices of the global batch of optimizer step ``step``: epoch ``e`` visits the
    permutation seeded by ``seed + e`` in slices of ``per_step`` (``knobs``: what to change when
    the batch does not fit the dataset)."""
    epoch, position = divmod(step, batches_per_epoch(length, per_step, knobs))
    permutation = torch.randperm(length, generator=torch.Generator().manual_seed(seed + epoch))
    return permutation[position * per_step:(position + 1) * per_step]


def draw_captions(composer: torch.utils.data.Dataset | None, latents: LatentSet, index: torch.Tensor,
                  choice: torch.Tensor) -> list[str]:
    """One caption per item: composed afresh by ``composer`` (each item's own generator, seeded by
    its draw ``choice`` of the step generator: the same captions on resume and with any number of
    ranks), else variant ``choice`` of the cached captions."""
    if composer is not None:
        return [composer.compose_caption(i, torch.Generator().manual_seed(c))
                for i, c in zip(index.tolist(), choice.tolist())]
    return latents.pick_captions(index, choice)


class DiffusionTrainer:
    """Builds the models, caches, optimizer and logger of a run; :meth:`train` runs it."""

    def __init__(self, config: DiffusionTrainingConfig, resume: bool = False, overwrite: bool = False) -> None:
        self.config = config
        self.ctx = DistributedContext(resolve_device(config.run.device)).init()
        self.device = self.ctx.device
        self.run_dir = Path(config.run.run_dir)
        # Before anything is written: a fresh run never lands in a folder holding another run.
        stale = check_run_folder(self.run_dir, resume=resume, overwrite=overwrite)
        if self.ctx.is_main:
            clear_run_folder(stale)
        self.ctx.barrier()
        torch.manual_seed(config.run.seed)  # identical initial weights on every rank and every run
        self.autoencoder = load_autoencoder(config.autoencoder).to(self.device)
        self.conditioner = build_conditioner(config.conditioner).to(self.device)
        self.unet = UNet(config.unet)
        if config.init_from and not resume:
            init_unet_from(self.unet, config.init_from)
        self.unet = self.unet.to(self.device, memory_format=memory_format(config.run))
        compile_in_place(self.unet, config.run, self.device)
        # Resolved once, so a resumed run on the same machine keeps the same arithmetic.
        self.precision = resolve_precision(config.run.precision, self.device)
        check_compatible(self.autoencoder, self.unet, self.conditioner)
        check_image_condition(config, self.autoencoder)
        self.schedule = NoiseSchedule.from_config(config.diffusion)
        self.latents, self.text = self._build_caches()
        named = list(self.unet.named_parameters())
        if self.conditioner.trainable:
            named += [(f"conditioner.{n}", p) for n, p in self.conditioner.named_parameters() if p.requires_grad]
        self.trainable = [p for _, p in named]
        self.model = self.ctx.wrap(self.unet)
        self.ema = EMA(self.unet, decay=config.ema_decay)
        groups = scaled_param_groups(named, config.optim.lr_scale, config.optim.lr)
        self.optimizer = build_optimizer(groups, lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                         betas=config.optim.betas)
        self.scheduler = warmup_schedule(self.optimizer, config.optim.warmup_steps, config.run.max_steps,
                                         kind=config.optim.schedule)
        self.accumulator = GradientAccumulator(config.optim.grad_accum)
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=config.run.keep_last)
        self.step = 0
        if resume:
            self._resume()

    # ---- data -------------------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        """Items per optimizer step over all ranks and micro-batches."""
        return self.config.run.batch_size * self.ctx.world_size * self.config.optim.grad_accum

    def _build_caches(self) -> tuple[LatentSet, TextCache | None]:
        config = self.config
        cache_dir = self.run_dir / "cache" if config.cache_dir is None else Path(config.cache_dir)
        weights = Path(config.autoencoder) / "autoencoder.safetensors"
        keep_images = config.image_condition != "none"  # the image conditions are made from pixels
        key = cache_key("latent-cache-v1", file_digest(weights), config.data.to_dict(),
                        *(["with-images"] if keep_images else []))
        dataset = dataset_from_config(config.data, "train")
        batches_per_epoch(len(dataset), self.global_batch, BATCH_KNOBS)  # before any cache is written
        self.composer = caption_composer(dataset, config.data)
        main = self.ctx.is_main
        # caption_mode "random": keep every wording of each item and pick one per step.
        latents = shared_latents(self.ctx, self.autoencoder, dataset, cache_dir / f"latents-{key}.safetensors",
                                 device=self.device, num_workers=config.run.num_workers,
                                 all_variants=config.data.caption_mode == "random", keep_images=keep_images)
        text = None
        frozen_text = self.conditioner.kind in ("minilm", "clip")
        if frozen_text and config.cache_text and self.composer is None:
            text_key = cache_key(key, config.conditioner.to_dict())
            path = cache_dir / f"text-{text_key}.safetensors"
            if main:
                text = encode_captions(self.conditioner, latents.captions, path)
            self.ctx.barrier()
            if not main:
                text = encode_captions(self.conditioner, latents.captions, path, show_progress=False)
        return latents, text

    def _conditions(self, index: torch.Tensor, choice: torch.Tensor, dropped: torch.Tensor) -> dict[str, torch.Tensor]:
        """UNet kwargs for dataset items ``index`` (caption variant ``choice``), ``dropped`` ones unconditional."""
        captions = draw_captions(self.composer, self.latents, index, choice)
        kind = self.conditioner.kind
        if self.text is not None:
            cond = self.text.lookup(captions, dropped)
        elif kind == "none":
            cond = {}
        elif kind == "class":
            labels = self.latents.labels[index]
            labels = torch.where(dropped, self.conditioner.encoder.null_index, labels)
            cond = self.conditioner(labels=labels.to(self.device))
        else:
            prompts = ["" if d else c for c, d in zip(captions, dropped.tolist())]
            cond = self.conditioner(prompts=prompts)
        return {k: v.to(self.device) for k, v in cond.items()}

    # ---- one optimizer step --------------------------------------------------------------------
    def _micro_batch(self, order: torch.Tensor, micro: int) -> torch.Tensor:
        """Loss of one micro-batch; ``order`` holds the global batch's dataset indices."""
        cfg = self.config
        world, rank = self.ctx.world_size, self.ctx.rank
        generator = step_generator(cfg.run.seed, self.draw_step(), micro)
        shape = (len(order), *self.latents.mean.shape[1:])
        # Draw for the global batch, then take this rank's share: results do not depend on K.
        latent_noise = torch.randn(shape, generator=generator)
        timesteps = torch.randint(0, self.schedule.num_timesteps, (len(order),), generator=generator)
        noise = torch.randn(shape, generator=generator)
        dropped = torch.rand(len(order), generator=generator) < cfg.conditioner.dropout_prob
        choice = torch.randint(0, 1 << 30, (len(order),), generator=generator)
        mine = slice(rank, None, world)
        index = order[mine]
        x0 = self.latents.draw(index, latent_noise[mine], self.autoencoder.config.scale_factor).to(self.device)
        cond = self._conditions(index, choice[mine], dropped[mine])
        if cfg.image_condition != "none":  # drawn last: runs without it keep their random streams
            holes = None
            if cfg.image_condition == "masked_image":
                holes = random_holes(len(order), cfg.data.resolution, generator)[mine]
            cond["concat"] = self.image_condition(index, holes).to(self.device)
        with self._autocast():
            loss = diffusion_loss(self.model, x0, self.schedule, cfg.diffusion.prediction, cond=cond,
                                  min_snr_gamma=cfg.diffusion.min_snr_gamma,
                                  timesteps=timesteps[mine].to(self.device), noise=noise[mine].to(self.device))
        return loss

    def image_condition(self, index: torch.Tensor, holes: torch.Tensor | None) -> torch.Tensor:
        """The UNet's ``concat`` input for dataset items ``index`` (and hole masks, inpainting)."""
        pixels = self.latents.images[index].float() / 127.5 - 1.0
        if self.config.image_condition == "masked_image":
            return masked_image_condition(self.autoencoder, pixels.to(self.device), holes.to(self.device))
        latent_size = self.latents.mean.shape[-1]
        return low_res_condition(degrade(pixels, self.config.low_res_factor), latent_size)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def draw_step(self) -> int:
        """The step whose batch and random draws (timesteps, noise, dropout) this step uses: the
        step itself. The seam for overfitting one batch: a subclass returning a constant trains on
        the same items, timesteps and noise every step."""
        return self.step

    def _global_order(self, step: int) -> torch.Tensor:
        """Dataset indices of the global batch(es) of optimizer step ``step`` (all micro-batches)."""
        return epoch_batch(len(self.latents), self.global_batch, step, self.config.run.seed, BATCH_KNOBS)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns logged numbers."""
        cfg = self.config
        accum = cfg.optim.grad_accum
        order = self._global_order(self.draw_step()).view(accum, -1)
        total = 0.0
        for micro in range(accum):
            with self.accumulator.micro_batch(self.model) as batch:  # DDP syncs on the last one only
                loss = self._micro_batch(order[micro], micro)
                batch.backward(loss)
            total += float(loss.detach()) / accum
        if self.conditioner.trainable:
            # The trainable text encoder sits outside the DDP wrapper; average its gradients by hand.
            self.ctx.average_gradients(self.conditioner)
        grad_norm = clip_grad(self.trainable, cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.ema.update(self.unet)
        self.step += 1
        mean_loss = float(self.ctx.all_reduce_mean(torch.tensor(total)))
        return {"loss": mean_loss, "grad_norm": grad_norm, "lr": base_lr(self.optimizer)}

    # ---- checkpoints ---------------------------------------------------------------------------
    def _save(self) -> None:
        if self.ctx.is_main:
            modules = {"unet": (self.unet, self.config.unet)}
            if self.conditioner.trainable:
                modules["conditioner"] = (self.conditioner, self.config.conditioner)
            self.checkpoints.save(
                self.step, modules, optimizers={"optimizer": self.optimizer},
                schedulers={"scheduler": self.scheduler}, ema={"unet": self.ema},
                extra={"config": self.config.to_dict(), "stage": "diffusion"}, overwrite=True,
            )
        self.ctx.barrier()

    def _resume(self) -> None:
        modules = {"unet": self.unet}
        if self.conditioner.trainable:
            modules["conditioner"] = self.conditioner
        self.step = self.checkpoints.resume(modules, optimizers={"optimizer": self.optimizer},
                                            schedulers={"scheduler": self.scheduler}, ema={"unet": self.ema})

    # ---- previews and export -------------------------------------------------------------------
    def components(self) -> DiffusionComponents:
        """The model as it would be exported now (EMA weights in a copy of the UNet)."""
        unet = UNet(self.config.unet).to(self.device)
        unet.load_state_dict(self.unet.state_dict())
        self.ema.copy_to(unet)
        low_res = self.config.image_condition == "low_res"
        return DiffusionComponents(self.autoencoder, unet.eval(), self.conditioner, self.config.diffusion,
                                   resolution=self.config.data.resolution,
                                   image_condition=self.config.image_condition,
                                   low_res_factor=self.config.low_res_factor if low_res else 1)

    def preview(self, logger: TrainingLogger) -> None:
        """Log a grid of samples from the fixed preview prompts (EMA weights)."""
        preview = self.config.preview
        if not self.ctx.is_main or not preview.prompts:
            return
        components = self.components()
        prompts = list(preview.prompts)
        concat = inputs = None
        if self.config.image_condition != "none":
            # The first training items (fixed holes) as inputs; the grid shows inputs over samples.
            index = torch.arange(min(len(prompts), len(self.latents)))
            prompts = prompts[:len(index)]
            holes = random_holes(len(index), self.config.data.resolution,
                                 torch.Generator().manual_seed(preview.seed))
            with torch.no_grad():
                concat = self.image_condition(index, holes).to(self.device)
            inputs = self.preview_inputs(index, holes)
        # Class models read the prompts as class names; for an unconditional one they only count samples.
        cond, uncond = self.conditioner.pair(None if self.conditioner.kind == "none" else prompts, concat=concat)
        self.conditioner.eval()
        latents = sample_latents(components, cond, uncond, batch_size=len(prompts), seed=preview.seed,
                                 steps=preview.steps, sampler=preview.sampler, guidance=preview.guidance)
        self.conditioner.train()
        samples = decode_images(components, latents)
        if inputs is not None:
            samples = torch.cat([inputs, samples])
        logger.log_images(self.step, "samples", samples, nrow=min(8, len(prompts)))

    def preview_inputs(self, index: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        """What an image-conditioned model was given, at full size: masked images, or the low-res
        images enlarged with nearest-neighbour sampling (so their pixels stay visible)."""
        pixels = self.latents.images[index].float() / 127.5 - 1.0
        if self.config.image_condition == "masked_image":
            return pixels * (1 - holes)
        small = degrade(pixels, self.config.low_res_factor)
        return torch.nn.functional.interpolate(small, size=pixels.shape[-2:], mode="nearest")

    def export(self, folder: Path) -> Path:
        """Write the EMA model as a self-describing model folder."""
        return save_components(self.components(), folder, extra={"training_steps": self.step})

    def train(self) -> Path:
        """Run until ``run.max_steps``, checkpointing as configured; returns the exported folder."""
        self.unet.train()
        return run_training(
            ctx=self.ctx, run=self.config.run, desc="diffusion", current_step=lambda: self.step,
            train_step=self.train_step, loss_key="loss", log_images=self.preview, save=self._save,
            export=self.export,
        )


def train_diffusion(config: DiffusionTrainingConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Train stage 2 as configured; returns the exported model folder (``run_dir/final``)."""
    return DiffusionTrainer(config, resume=resume, overwrite=overwrite).train()
