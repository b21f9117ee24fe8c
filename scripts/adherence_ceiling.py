"""What prompt adherence could a text-to-image model folder reach if its UNet were perfect?

``ldm eval --metrics adherence`` scores each generated image by whether its nearest gallery
pictures (EfficientNet-Lite0 features) show the prompted emoji. A sample can be no better than
what the model's autoencoder can draw, so this script scores, on the same 100 drawn emoji, the
same gallery and the same embedder, the autoencoder round trip (posterior mode) of the very
training picture each training prompt names in the given style. That is the adherence of a UNet
that reproduced its training latents exactly: the ceiling that the figures of ``ldm eval`` should
be read against. It also scores the pictures themselves, as a check that the prompts, ids and
gallery line up: each is in the gallery, so only pictures drawn identically under another name
(ties count against the item) can miss.

    python scripts/adherence_ceiling.py models/emoji-32 --style twitter
"""

from __future__ import annotations

import argparse
import json

import torch

from latent_diffusion.evaluation.adherence import EfficientNetLiteEmbedder, embed, retrieval_ranks
from latent_diffusion.evaluation.prompts import PROMPT_SET_SEED, build_adherence_prompts, gallery_embeddings
from latent_diffusion.evaluation.runner import EvalSettings, build_eval_dataset, cache_name, load_model


def main() -> None:
    """Print the adherence of the named pictures and of their autoencoder reconstructions as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a text-to-image model folder trained on emoji")
    parser.add_argument("--style", default="twitter", choices=("twitter", "google"),
                        help="which drawing of each emoji stands for the model's output")
    parser.add_argument("--count", type=int, default=100, help="emoji drawn (ldm eval's --adherence-prompts)")
    args = parser.parse_args()

    model = load_model(args.model)
    channels = model.autoencoder.config.in_channels
    settings = EvalSettings(model=args.model, data="emoji", resolution=model.resolution, adherence_prompts=args.count)
    train = build_eval_dataset(settings, channels, split="train", styles=("google", "twitter"), skin_tones=True)
    gallery = build_eval_dataset(settings, channels, split="all", styles=("google", "twitter"), skin_tones=True)
    prompts = build_adherence_prompts(train, gallery, args.count, PROMPT_SET_SEED)

    index_of = {(r.base, r.style): i for i, r in enumerate(train.records) if r.unified == r.base}
    missing = [code for code in prompts.training.target_ids if (code, args.style) not in index_of]
    if missing:
        raise SystemExit(f"error: no {args.style} picture of {missing[:5]} in the train split; try the other --style")
    pictures = torch.stack([train[index_of[(code, args.style)]]["image"] for code in prompts.training.target_ids])
    with torch.no_grad():
        reconstructions = model.autoencoder(pictures, sample_posterior=False)[0].float().clamp(-1, 1)

    embedder = EfficientNetLiteEmbedder()
    gallery_ids = [record.base for record in gallery.records]
    gallery_features = gallery_embeddings(gallery, embedder, cache_name(settings, channels, "gallery"),
                                          settings.batch_size, None, progress=False)
    result = {"model": args.model, "style": args.style, "n": args.count}
    for name, images in (("pictures", pictures), ("autoencoder_reconstructions", reconstructions)):
        scores = retrieval_ranks(embed(embedder, images, settings.batch_size), prompts.training.target_ids,
                                 gallery_features, gallery_ids)
        result[name] = {"top1": scores.top1, "top5": scores.top5}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
