"""Stage 2 end to end on a generated image folder: training, exact resume, torchrun parity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_worker import free_port, loopback_env
from PIL import Image

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.conditioning import ConditionerConfig
from latent_diffusion.data import DataConfig
from latent_diffusion.io import load_tensors, save_module
from latent_diffusion.model.folder import load_components
from latent_diffusion.training.diffusion import DiffusionTrainer, DiffusionTrainingConfig, PreviewConfig
from latent_diffusion.training.logging import read_metrics
from latent_diffusion.training.settings import OptimConfig, RunConfig
from latent_diffusion.unet import UNetConfig

COLORS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (240, 220, 10)}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 coloured 16 px squares with captions, and a tiny random autoencoder folder."""
    root = tmp_path_factory.mktemp("stage2")
    images = root / "images"
    images.mkdir()
    for i in range(24):
        name = list(COLORS)[i % 4]
        pixels = np.full((16, 16, 3), COLORS[name], np.uint8)
        pixels[4 + i % 3: 12, 4:12] = 255
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
        (images / f"{i:02d}.txt").write_text(f"a {name} square")
    torch.manual_seed(0)
    config = AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, norm_groups=4,
                               scale_factor=0.8)
    save_module(Autoencoder(config), config, root / "ae", "autoencoder")
    return root


def make_config(root: Path, run: str, *, kind: str = "transformer", steps: int = 4, batch: int = 4,
                lr: float = 1e-3, **run_extra) -> DiffusionTrainingConfig:
    """A tiny stage-2 config over the workspace."""
    conditioner = ConditionerConfig(kind=kind, dropout_prob=0.2, max_length=16, transformer_width=32,
                                    transformer_depth=1, transformer_heads=2)
    context = 384 if kind == "minilm" else 32
    return DiffusionTrainingConfig(
        data=DataConfig(name="imagefolder", path=str(root / "images"), resolution=16, val_fraction=0.0),
        autoencoder=str(root / "ae"),
        unet=UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_levels=(1,), num_heads=2, context_dim=context, norm_groups=8),
        conditioner=conditioner,
        optim=OptimConfig(lr=lr, warmup_steps=2),
        run=RunConfig(run_dir=str(root / run), max_steps=steps, batch_size=batch, log_every=1,
                      image_every=1000, checkpoint_every=2, **run_extra),
        preview=PreviewConfig(prompts=("a red square", "a blue square"), steps=3),
    )


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_tensors(folder / "unet.safetensors")


def test_trains_exports_and_loss_falls_on_one_batch(workspace: Path) -> None:
    config = make_config(workspace, "overfit", kind="minilm", steps=30, batch=4, lr=3e-3)
    config = config.replace(conditioner=config.conditioner.replace(dropout_prob=0.0),
                            run=config.run.replace(image_every=30, checkpoint_every=30))

    class OneBatch(DiffusionTrainer):
        """Overfit a single fixed batch: the same items, timesteps and noise every step."""

        def draw_step(self) -> int:
            return 0

    final = OneBatch(config).train()
    losses = [m["loss"] for m in read_metrics(workspace / "overfit") if "loss" in m]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    components = load_components(final)
    assert components.conditioner.kind == "minilm"
    assert (workspace / "overfit" / "images" / "samples").is_dir()


def test_resume_is_bit_identical(workspace: Path) -> None:
    straight = DiffusionTrainer(make_config(workspace, "straight", steps=4)).train()
    half = make_config(workspace, "resumed", steps=2)
    DiffusionTrainer(half).train()
    resumed = DiffusionTrainer(make_config(workspace, "resumed", steps=4), resume=True)
    assert resumed.step == 2
    final = resumed.train()
    a, b = unet_weights(straight), unet_weights(final)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_lr_scale_gives_a_module_its_own_rate_and_resumes_bit_identically(workspace: Path) -> None:
    def scaled(run: str, steps: int, scale: float = 10.0) -> DiffusionTrainingConfig:
        config = make_config(workspace, run, steps=steps)
        return config.replace(optim=config.optim.replace(lr_scale={"out": scale}))

    trainer = DiffusionTrainer(scaled("scaled-straight", 4))
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(10 * lrs[0])  # in warm-up: 1e-3 * 10 * 1/2
    assert [len(g["params"]) for g in trainer.optimizer.param_groups][1] == 4  # out.0 and out.2, weight + bias
    straight = trainer.train()
    logged = [row["lr"] for row in read_metrics(workspace / "scaled-straight") if "lr" in row]
    # The base rate after each step (warm-up over 2 steps, then constant), not the scaled group's 1e-2.
    assert logged == pytest.approx([1e-3] * 4)
    DiffusionTrainer(scaled("scaled-resumed", 2)).train()
    final = DiffusionTrainer(scaled("scaled-resumed", 4), resume=True).train()
    a, b = unet_weights(straight), unet_weights(final)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    plain = unet_weights(DiffusionTrainer(make_config(workspace, "scaled-control", steps=4)).train())
    assert not torch.equal(plain["out.2.weight"], a["out.2.weight"])  # the scale did change the training
    with pytest.raises(ValueError, match="resume with the optim.lr_scale the run started with"):
        DiffusionTrainer(make_config(workspace, "scaled-resumed", steps=6), resume=True)


def test_resume_without_checkpoint_is_a_clear_error(workspace: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        DiffusionTrainer(make_config(workspace, "never-ran"), resume=True)


def test_context_width_mismatch_is_a_clear_error(workspace: Path) -> None:
    config = make_config(workspace, "bad")
    config = config.replace(unet=config.unet.replace(context_dim=64))
    with pytest.raises(ValueError, match="unet.context_dim=64 does not match the conditioner"):
        DiffusionTrainer(config)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses fork-safe gloo on Linux")
def test_torchrun_two_processes_match_one_process(workspace: Path) -> None:
    single = make_config(workspace, "single", steps=3, batch=4)
    single.save(workspace / "single.yaml")
    double = make_config(workspace, "double", steps=3, batch=2)
    double.save(workspace / "double.yaml")
    env = loopback_env()
    # Timeouts turn a hung rendezvous into a failure instead of a stalled test run.
    subprocess.run([sys.executable, "-m", "latent_diffusion", "train", "diffusion", "--config",
                    str(workspace / "single.yaml")], check=True, env=env, capture_output=True, timeout=300)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "latent_diffusion",
                             "train", "diffusion", "--config", str(workspace / "double.yaml")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for part in ("unet", "conditioner"):
        a = load_tensors(workspace / "single" / "final" / f"{part}.safetensors")
        b = load_tensors(workspace / "double" / "final" / f"{part}.safetensors")
        # Same global batches and draws; only the order of the gradient all-reduce sums differs
        # (float32 rounding, ~1e-7 relative), which three AdamW steps cannot grow past 1e-5.
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-5, (part, worst)
    # The run really moved the weights away from their initialization (the check is not vacuous).
    start = DiffusionTrainer(make_config(workspace, "init-only")).unet.state_dict()
    trained = unet_weights(workspace / "single" / "final")
    assert max(float((trained[k] - start[k]).abs().max()) for k in trained) > 1e-3


def test_a_batch_larger_than_the_dataset_is_refused_before_anything_is_written(workspace: Path) -> None:
    config = make_config(workspace, "too-big", batch=64)
    with pytest.raises(ValueError, match=r"fewer than one global batch \(64\); lower run.batch_size or optim.grad_accum"):
        DiffusionTrainer(config)
    assert not (workspace / "too-big").exists()  # no run folder, latent cache or TensorBoard file


def test_runs_share_a_latent_cache_folder_and_encode_once(workspace: Path) -> None:
    shared = workspace / "shared-cache"
    first = DiffusionTrainer(make_config(workspace, "share-a").replace(cache_dir=str(shared)))
    written = {p.name: p.stat().st_mtime_ns for p in shared.iterdir()}
    assert any(name.startswith("latents-") for name in written) and not (workspace / "share-a" / "cache").exists()
    second = DiffusionTrainer(make_config(workspace, "share-b", steps=2).replace(cache_dir=str(shared)))
    assert {p.name: p.stat().st_mtime_ns for p in shared.iterdir()} == written  # read, not written again
    assert torch.equal(first.latents.mean, second.latents.mean)


def test_compiled_training_matches_eager(workspace: Path) -> None:
    # run.compile compiles the UNet in place: the same checkpoint keys and, to rounding, the same losses.
    eager = DiffusionTrainer(make_config(workspace, "eager", steps=2)).train()
    compiled = DiffusionTrainer(make_config(workspace, "compiled", steps=2, compile=True)).train()
    losses = [[m["loss"] for m in read_metrics(workspace / run) if "loss" in m] for run in ("eager", "compiled")]
    assert np.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-6), losses
    a, b = unet_weights(eager), unet_weights(compiled)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_compile_without_a_cxx_compiler_is_a_clear_error(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ValueError, match=r"run.compile=true needs a C\+\+ compiler .* apt install g\+\+"):
        DiffusionTrainer(make_config(workspace, "no-compiler", steps=2, compile=True, device="cpu"))
