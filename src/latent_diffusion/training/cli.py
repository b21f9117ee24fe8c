"""``ldm train autoencoder|diffusion|distill --config FILE [--resume] [key=value ...]``.

Any config field can be overridden on the command line with dotted keys, e.g.
``ldm train diffusion --config configs/emoji-diffusion.yaml run.max_steps=100 optim.lr=2e-4``.
The same command runs under ``torchrun --nproc_per_node=K`` (one process per rank).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latent_diffusion.config import load_text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ldm train`` and its stages."""
    train = subparsers.add_parser("train", help="train an autoencoder (stage 1), a diffusion model (stage 2) or "
                                                "distil one into a few-step consistency model",
                                  description=__doc__.split("\n\n")[0])
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, text in (("autoencoder", "stage 1: the KL/VQ autoencoder with perceptual and GAN losses (or, with "
                                        "train: decoder / tiny_decoder, a new decoder for a trained one)"),
                        ("diffusion", "stage 2: the latent diffusion UNet on a frozen autoencoder"),
                        ("distill", "latent consistency distillation of a trained text-to-image model (teacher) "
                                    "into a 2-8 step student with the guidance scale as an input")):
        parser = stages.add_parser(stage, help=text, description=text)
        parser.add_argument("--config", required=True, type=Path, help="YAML or JSON training config")
        parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace the run already in run.run_dir (without it a used folder is refused)")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="override config fields, e.g. run.max_steps=100 optim.lr=1e-4")
        parser.set_defaults(func=_run, stage_name=stage)


def _run(args: argparse.Namespace) -> int:
    data = load_text(args.config)  # fails early, naming the file, if it is missing or malformed
    del data
    if args.stage_name == "autoencoder":
        from latent_diffusion.training.autoencoder import AutoencoderTrainingConfig, train_autoencoder

        config = AutoencoderTrainingConfig.load(args.config).with_overrides(args.overrides)
        final = train_autoencoder(config, resume=args.resume, overwrite=args.overwrite)
    elif args.stage_name == "distill":
        from latent_diffusion.training.distill import DistillTrainingConfig, train_distill

        config = DistillTrainingConfig.load(args.config).with_overrides(args.overrides)
        final = train_distill(config, resume=args.resume, overwrite=args.overwrite)
    else:
        from latent_diffusion.training.diffusion import DiffusionTrainingConfig, train_diffusion

        config = DiffusionTrainingConfig.load(args.config).with_overrides(args.overrides)
        final = train_diffusion(config, resume=args.resume, overwrite=args.overwrite)
    print(f"model written to {final}")
    return 0
