"""``ldm eval`` end to end on tiny model folders, the exact FID, and the adherence prompt sets.

Most tests replace the InceptionV3 by a 12-d pooled-colour extractor (``runner.default_extractor``
is monkeypatched) and skip the perceptual network, to stay fast; one test runs the real Inception
and perceptual paths on three images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import latent_diffusion.cli as ldm_cli
from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
from latent_diffusion.data import build_dataset, cache, emoji
from latent_diffusion.diffusion.schedule import DiffusionConfig
from latent_diffusion.evaluation import features_cache, prompts, runner
from latent_diffusion.evaluation.fid import feature_statistics, frechet_distance
from latent_diffusion.evaluation.reconstruction import psnr
from latent_diffusion.io import save_module
from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.model.folder import model_hash, save_components
from latent_diffusion.pipelines.base import DEFAULT_SAMPLING
from latent_diffusion.unet import UNet, UNetConfig

COLORS = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 220, 10)]


@pytest.fixture(autouse=True)
def one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Tiny tensors: on a shared 2-core machine extra threads only wait on each other. Also keeps
    the feature cache of any test that forgets ``cache_dir`` out of the user's home."""
    monkeypatch.setattr(features_cache, "default_cache_dir", lambda: tmp_path / "default-feature-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PooledColour(nn.Module):
    """Stand-in FID extractor: 2x2 average-pooled RGB, 12-d (``name`` makes it cacheable)."""

    name = "test-pooled-colour-2x2"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 2).flatten(1)


def write_images(folder: Path, count: int, size: int = 16) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.full((size, size, 3), COLORS[i % 4], np.uint8)
        pixels[rng.integers(0, size // 2):, : rng.integers(4, size)] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"square number {i % 4}")


def tiny_autoencoder(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4,
                                         norm_groups=4, scale_factor=0.8)).eval()


def tiny_text_model(folder: Path, resolution: int) -> Path:
    """A random text-to-image model folder (transformer conditioner) at ``resolution``."""
    torch.manual_seed(1)
    conditioner = build_conditioner(ConditionerConfig(kind="transformer", max_length=16, transformer_width=32,
                                                      transformer_depth=1, transformer_heads=2))
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_levels=(1,), num_heads=2, context_dim=32, norm_groups=8))
    with torch.no_grad():  # random outputs: a zero-initialized final conv would make every prompt alike
        for p in unet.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    components = DiffusionComponents(tiny_autoencoder(), unet, conditioner, DiffusionConfig(), resolution)
    return save_components(components, folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 captioned 16 px images, an autoencoder folder and a text-to-image model folder."""
    root = tmp_path_factory.mktemp("eval")
    write_images(root / "images", 12)
    autoencoder = tiny_autoencoder()
    save_module(autoencoder, autoencoder.config, root / "ae", "autoencoder")
    tiny_text_model(root / "model", 16)
    return root


def ldm(argv: list[str]) -> int:
    """Run ``ldm`` in this process (the eval command is one of its COMMAND_MODULES)."""
    return ldm_cli.main(argv)


def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "default_extractor", lambda device: PooledColour())


def image_args(root: Path) -> list[str]:
    return ["--data", "imagefolder", "--data-path", str(root / "images"), "--split", "all", "--no-progress",
            "--cache-dir", str(root / "features")]


def test_eval_diffusion_model_end_to_end_and_deterministic(workspace, monkeypatch, capsys, tmp_path):
    fast(monkeypatch)
    args = ["eval", str(workspace / "model"), *image_args(workspace), "--metrics", "fid", "reconstruction",
            "--no-perceptual", "--num-samples", "6", "--steps", "2", "--batch-size", "4", "--guidance", "2",
            "--sampler", "euler", "--seed", "3"]
    outputs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outputs:
        assert ldm([*args, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FID" in printed and "PSNR" in printed and f"wrote {outputs[1]}" in printed
    first, second = (json.loads(p.read_text()) for p in outputs)
    assert first["metrics"] == second["metrics"]  # same command, same numbers
    assert first["model"]["hash"] == model_hash(workspace / "model") and first["model"]["kind"] == "diffusion"
    settings = first["settings"]
    assert (settings["num_samples"], settings["steps"], settings["guidance"], settings["sampler"],
            settings["spacing"], settings["seed"]) == (6, 2, 2.0, "euler", "trailing", 3)
    generation = first["metrics"]["generation"]
    assert generation["num_generated"] == 6 and generation["num_reference"] == 12
    assert math.isfinite(generation["fid"]) and generation["fid"] > 0 and generation["kid_subset_size"] == 6
    assert first["feature_extractor"] == PooledColour.name
    assert list((workspace / "features").glob("*.safetensors"))  # reference features were cached
    # Ground truth for the reconstruction numbers: PSNR computed here from the same images.
    dataset = build_dataset("imagefolder", "all", 16, path=str(workspace / "images"))
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        recon = tiny_autoencoder()(images, sample_posterior=False)[0].clamp(-1, 1)
    reconstruction = first["metrics"]["reconstruction"]
    assert reconstruction["num_images"] == 12
    assert reconstruction["psnr"] == pytest.approx(float(psnr(images, recon).mean()), rel=1e-6)
    extractor = PooledColour()
    # Against scipy's sqrtm path (the reference the exact eigen path is tested against).
    expected = frechet_distance(*feature_statistics(extractor(images)), *feature_statistics(extractor(recon)))
    assert reconstruction["rfid"] == pytest.approx(expected, rel=1e-6)


def test_generation_changes_with_the_seed(workspace, monkeypatch, tmp_path):
    fast(monkeypatch)
    results = []
    for seed in ("0", "1"):
        out = tmp_path / f"{seed}.json"
        assert ldm(["eval", str(workspace / "model"), *image_args(workspace), "--num-samples", "4", "--steps", "2",
                    "--seed", seed, "--output", str(out)]) == 0
        results.append(json.loads(out.read_text())["metrics"])
    assert set(results[0]) == {"generation"}  # the default for a text model on a non-emoji dataset
    assert results[0]["generation"]["fid"] != results[1]["generation"]["fid"]


def test_eval_autoencoder_folder_with_real_inception_and_perceptual(workspace, monkeypatch, capsys, tmp_path):
    out = tmp_path / "ae.json"
    write_images(tmp_path / "three", 3)
    code = ldm(["eval", str(workspace / "ae"), "--data", "imagefolder", "--data-path", str(tmp_path / "three"),
                "--split", "all", "--resolution", "16", "--no-progress", "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"]["kind"] == "autoencoder" and result["model"]["hash"] == model_hash(workspace / "ae")
    assert result["feature_extractor"].startswith("fid-inception")
    m = result["metrics"]["reconstruction"]
    assert set(result["metrics"]) == {"reconstruction"} and m["num_images"] == 3
    assert math.isfinite(m["rfid"]) and m["rfid"] > 0
    assert 0 < m["perceptual"] < 4 and -1 <= m["ssim"] <= 1 and m["codebook_usage"] is None
    assert "rFID" in capsys.readouterr().out


def test_vq_autoencoder_reports_codebook_use(tmp_path, monkeypatch):
    fast(monkeypatch)
    torch.manual_seed(0)
    config = AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, norm_groups=4,
                               regularizer="vq", codebook_size=16)
    save_module(Autoencoder(config), config, tmp_path / "vq", "autoencoder")
    write_images(tmp_path / "images", 4)
    result = runner.evaluate(runner.EvalSettings(model=str(tmp_path / "vq"), data="imagefolder",
                                                 data_path=str(tmp_path / "images"), split="all", resolution=16,
                                                 perceptual=False))
    m = result["metrics"]["reconstruction"]
    assert 0 < m["codebook_usage"] <= 1 and 1 <= m["codebook_perplexity"] <= 16


@pytest.mark.parametrize("kind", ["class", "none"])
def test_class_and_unconditional_models(tmp_path, monkeypatch, kind):
    fast(monkeypatch)
    for label in ("red", "blue"):  # two subfolders: the imagefolder's labels
        write_images(tmp_path / "images" / label, 3)
    torch.manual_seed(2)
    config = (ConditionerConfig(kind="class", num_classes=2, class_embed_dim=32) if kind == "class"
              else ConditionerConfig(kind="none"))
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_levels=(1,), num_heads=2, context_dim=32 if kind == "class" else None,
                           norm_groups=8))
    model = save_components(DiffusionComponents(tiny_autoencoder(), unet, build_conditioner(config),
                                                DiffusionConfig(), 16), tmp_path / "model")
    settings = runner.EvalSettings(model=str(model), data="imagefolder", data_path=str(tmp_path / "images"),
                                   split="all", num_samples=4, steps=2, batch_size=4)
    result = runner.evaluate(settings, cache_dir=tmp_path / "features")
    assert result["model"]["conditioner"] == kind and result["metrics"]["generation"]["num_generated"] == 4
    assert result["settings"]["guidance"] == (runner.DEFAULT_GUIDANCE if kind == "class" else 1.0)
    # Unless told, a conditional model is evaluated as `ldm generate` samples it.
    assert (result["settings"]["sampler"], runner.DEFAULT_STEPS, runner.DEFAULT_GUIDANCE) == (
        DEFAULT_SAMPLING["sampler"], DEFAULT_SAMPLING["steps"], DEFAULT_SAMPLING["guidance"])
    loaded = runner.load_model(model)
    dataset = build_dataset("imagefolder", "all", 16, path=str(tmp_path / "images"))
    conditions = runner.split_conditions(loaded.components, dataset, [0, 5])
    assert conditions.labels == ([0, 1] if kind == "class" else None) and conditions.prompts is None
    if kind == "none":
        with pytest.raises(ValueError, match="needs a conditional model"):
            runner.evaluate(settings.replace(guidance=3.0), cache_dir=tmp_path / "features")


# ----------------------------------------------------------------------------- exact FID


def test_eigen_frechet_equals_scipy_sqrtm():
    rng = np.random.default_rng(0)
    # Full-rank covariances (N > D): the eigen route against scipy's sqrtm, to round-off.
    a = rng.normal(size=(500, 48))
    b = rng.normal(size=(400, 48)) @ rng.normal(size=(48, 48)) * 0.3 + 0.2
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    scipy_fid = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    assert runner.frechet_distance_eigh(mu1, s1, mu2, s2) == pytest.approx(scipy_fid, rel=1e-10)
    assert runner.fid_exact(a, b) == pytest.approx(scipy_fid, rel=1e-10)
    # Fewer images than dimensions (singular covariances): the nuclear-norm route.
    a, b = a[:30], b[:40]
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    scipy_trace = np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    exact = runner.fid_exact(a, b)
    assert exact == pytest.approx(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * scipy_trace, rel=1e-7)
    # The eigen route takes square roots of round-off eigenvalues (~1e-16) in the null space: ~1e-8 each.
    assert exact == pytest.approx(runner.frechet_distance_eigh(mu1, s1, mu2, s2), rel=1e-7)
    assert runner.fid_exact(torch.tensor(a), torch.tensor(a)) == pytest.approx(0.0, abs=1e-9)


def test_fid_exact_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        runner.fid_exact(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="equal D"):
        runner.fid_exact(np.zeros((3, 4)), np.zeros((3, 5)))


def test_index_choices_are_deterministic():
    assert runner.spread_indices(10, 4) == [0, 3, 6, 9] and runner.spread_indices(3, 5) == [0, 1, 2]
    drawn = runner.drawn_indices(5, 12, seed=7)
    assert drawn == runner.drawn_indices(5, 12, seed=7) and sorted(drawn[:5]) == list(range(5))
    assert runner.derived_seed(0, "fid", 1) != runner.derived_seed(1, "fid", 0)


# ----------------------------------------------------------------------------- adherence prompts


def emoji_entry(unified: str, name: str, category: str = "Animals & Nature", tones: tuple[str, ...] = ()) -> dict:
    entry = {"unified": unified, "name": name, "short_names": [name.lower().replace(" ", "_")],
             "category": category, "subcategory": "animal-mammal", "image": f"{unified.lower()}.png",
             "has_img_google": True, "has_img_twitter": True, "sort_order": 0}
    if tones:
        entry["skin_variations"] = {t: {"unified": f"{unified}-{t}", "image": f"{unified.lower()}-{t.lower()}.png",
                                        "has_img_google": True, "has_img_twitter": True} for t in tones}
    return entry


def fake_emoji(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: list[dict]) -> None:
    """A prepared emoji cache under tmp_path: 8 px PNGs, one colour per base emoji, per style a shade."""
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    package = tmp_path / "npm" / "package"
    (package).mkdir(parents=True)
    (package / "emoji.json").write_text(json.dumps(entries))
    rng = np.random.default_rng(0)
    for style in emoji.STYLES:
        folder = package / "img" / style / "64"
        folder.mkdir(parents=True)
        for entry in entries:
            colour = rng.integers(0, 255, 3)
            for source in [entry, *entry.get("skin_variations", {}).values()]:
                Image.fromarray(np.tile(colour.astype(np.uint8), (8, 8, 1))).save(folder / source["image"])
    for style in emoji.STYLES:
        cache.prepare_folder(emoji.style_dir(style),
                             lambda tmp, s=style: emoji.prepare_style_from_package(package, s, tmp))


def emoji_entries() -> list[dict]:
    entries = [emoji_entry(f"1F{300 + i:03X}", f"THING {i}") for i in range(30)]
    entries += [emoji_entry("1F431", "CAT"), emoji_entry("1F432", "A CAT ICON"),  # "a cat icon" is a caption
                emoji_entry("1F433", "TWIN"), emoji_entry("1F434", "TWIN"),  # ambiguous name
                emoji_entry("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", category="Component"),
                emoji_entry("1F385", "FATHER CHRISTMAS", tones=("1F3FB", "1F3FD"))]
    return entries


def test_heldout_prompts_are_disjoint_from_training_captions(tmp_path, monkeypatch):
    fake_emoji(tmp_path, monkeypatch, emoji_entries())
    train = build_dataset("emoji", "train", 8, val_fraction=0.3)
    gallery = build_dataset("emoji", "all", 8, val_fraction=0.3)
    candidates = prompts.candidate_emoji(train, gallery)
    train_bases = {r.base for r in train.records}
    assert set(candidates) <= train_bases and len(candidates) >= 10
    assert "1F433" not in candidates and "1F434" not in candidates and "1F3FB" not in candidates
    built = prompts.build_adherence_prompts(train, gallery, count=len(candidates), seed=0)
    variants = prompts.training_caption_variants(train)
    assert not set(built.heldout.prompts) & variants
    assert set(built.training.prompts) <= variants  # the training prompts are training captions
    assert built.training.target_ids == built.heldout.target_ids == sorted(candidates)
    for name, heldout in zip(built.training.prompts, built.heldout.prompts):
        assert name in heldout and heldout != name
    # The template "{article} {name} icon" would give "a cat icon", a caption of another emoji.
    icon = prompts.HELDOUT_TEMPLATES.index("{article} {name} icon")
    assert prompts.heldout_prompt("cat", icon, variants) == ("a simple drawing of a cat", 1)
    assert prompts.heldout_prompt("otter", icon, variants) == ("an otter icon", 0)
    again = prompts.build_adherence_prompts(train, gallery, count=5, seed=0)
    assert again == prompts.build_adherence_prompts(train, gallery, count=5, seed=0)
    assert again.training.target_ids != prompts.build_adherence_prompts(train, gallery, 5, seed=1).training.target_ids
    with pytest.raises(ValueError, match="exceeds"):
        prompts.build_adherence_prompts(train, gallery, count=len(candidates) + 1)


def test_emoji_adherence_end_to_end(tmp_path, monkeypatch):
    fake_emoji(tmp_path, monkeypatch, emoji_entries())
    model = tiny_text_model(tmp_path / "model", 8)
    settings = runner.EvalSettings(model=str(model), split="all", val_fraction=0.3, metrics=("adherence",),
                                   adherence_prompts=6, steps=2, batch_size=6, sampler="ddim")
    result = runner.evaluate(settings, embedder=PooledColour(), cache_dir=tmp_path / "features")
    m = result["metrics"]["adherence"]
    gallery = build_dataset("emoji", "all", 8, val_fraction=0.3)
    assert m["gallery_size"] == len(gallery) and m["num_emoji"] == 6 and m["embedder"] == PooledColour.name
    # Each drawn emoji has 2 pictures (one per style) in the gallery: chance of a hit at 1 is 2/G.
    for key in ("training_prompts", "heldout_prompts"):
        assert m[key]["n"] == 6 and 0 <= m[key]["top1"] <= m[key]["top5"] <= 1
        assert m[key]["chance_top1"] == pytest.approx(2 / len(gallery))
    assert runner.evaluate(settings, embedder=PooledColour(), cache_dir=tmp_path / "features")["metrics"] == \
        result["metrics"]


def test_styles_and_skin_tones_select_the_split_but_never_the_gallery(tmp_path, monkeypatch):
    fake_emoji(tmp_path, monkeypatch, emoji_entries())
    settings = runner.EvalSettings(model="unused", split="all", styles=("twitter",), skin_tones=False)
    subset = runner.build_eval_dataset(settings, 3)
    assert {r.style for r in subset.records} == {"twitter"} and all(r.unified == r.base for r in subset.records)
    everything = runner.build_eval_dataset(settings, 3, styles=("google", "twitter"), skin_tones=True)
    assert len(everything) == 2 * (len(subset) + 2)  # + the two skin-tone variants, in both styles
    default = runner.EvalSettings(model="unused", split="all")
    assert runner.cache_name(settings, 3) != runner.cache_name(default, 3)  # other images, other features
    assert runner.cache_name(settings, 3, "gallery") == runner.cache_name(default, 3, "gallery")
    with pytest.raises(ValueError, match="styles and skin_tones select emoji pictures"):
        runner.EvalSettings(model="unused", data="mnist", skin_tones=False)
    with pytest.raises(ValueError, match="styles="):
        runner.EvalSettings(model="unused", styles=("apple",))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, message", [
    (["--data", "nope"], "data='nope' is not supported"),
    (["--num-samples", "0"], "num_samples=0 must be > 0"),
    (["--split", "test"], "split='test' is not supported"),
    (["--metrics", "adherence"], "metrics 'adherence' needs a text-to-image model"),
    (["--metrics", "fid", "--num-samples", "1"], "must be >= 2 for FID"),
    (["--sampler", "magic"], "sampler='magic' is not supported"),
    (["--output", "/no-such-folder/m.json"], "output folder '/no-such-folder' does not exist; create it"),
    (["--device", "foo"], "unknown device 'foo'"),
])
def test_bad_inputs_exit_2_with_one_line(workspace, monkeypatch, capsys, tmp_path, extra, message):
    fast(monkeypatch)
    argv = ["eval", str(workspace / "model"), *image_args(workspace), "--output", str(tmp_path / "x.json"), *extra]
    assert ldm(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.json").exists()


def test_missing_or_foreign_folders_exit_2(tmp_path, monkeypatch, capsys):
    assert ldm(["eval", str(tmp_path / "absent"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert ldm(["eval", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a model folder" in err and len(err.splitlines()) == 1
