"""Training infrastructure: EMA closed forms, LR schedule values, accumulation, RNG, checkpoints, grids, logs."""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import latent_diffusion.training.checkpoint as checkpoint_module
from latent_diffusion.config import Config
from latent_diffusion.pixels import make_grid, save_grid, to_uint8
from latent_diffusion.training import (
    EMA,
    CheckpointError,
    CheckpointManager,
    GradientAccumulator,
    TrainingLogger,
    build_optimizer,
    check_weights_only_safe,
    clip_grad,
    read_metrics,
    warmup_schedule,
)


@dataclass
class TinyConfig(Config):
    width: int = 3


class Tiny(nn.Module):
    """A linear layer and a norm with buffers: enough to exercise params, buffers and optimizer state."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.width, 2)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x))


def _fill(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


# ----------------------------------------------------------------------------------------- EMA


def test_ema_constant_target_approaches_geometrically() -> None:
    model = nn.Linear(2, 1)
    _fill(model, 0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    _fill(model, 1.0)
    decays = [ema.update(model) for _ in range(5)]
    assert decays == [0.9] * 5
    # shadow_n = 1 - 0.9**n  ->  1 - 0.59049 = 0.40951 after five updates
    for shadow in ema.shadow.values():
        torch.testing.assert_close(shadow, torch.full_like(shadow, 0.40951), rtol=0, atol=1e-6)


def test_ema_warmup_follows_ldm_formula() -> None:
    model = nn.Linear(2, 1)
    _fill(model, 0.0)
    ema = EMA(model, decay=0.9999, warmup=True)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(2) == pytest.approx(3 / 12)
    assert ema.decay_at(10**6) == 0.9999  # (1+n)/(10+n) > 0.9999 there, so the cap applies
    _fill(model, 1.0)
    for _ in range(3):
        ema.update(model)
    expected = 1 - (2 / 11) * (3 / 12) * (4 / 13)  # 0.98601...
    for shadow in ema.shadow.values():
        torch.testing.assert_close(shadow, torch.full_like(shadow, expected), rtol=0, atol=1e-6)


def test_ema_update_after_step_copies_first() -> None:
    model = nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5, warmup=False, update_after_step=2)
    for target in (1.0, 2.0):  # copied outright: decay 0
        _fill(model, target)
        assert ema.update(model) == 0.0
    _fill(model, 4.0)
    assert ema.update(model) == 0.5
    assert ema.shadow["weight"].item() == pytest.approx(3.0)  # 0.5 * 2 + 0.5 * 4


def test_ema_copy_to_and_swapped_restore() -> None:
    torch.manual_seed(0)
    model = Tiny(TinyConfig())
    model.norm.running_mean.fill_(0.25)
    ema = EMA(model, decay=0.5, warmup=False)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    _fill(model, 2.0)
    model.norm.running_mean.fill_(0.75)
    ema.update(model)
    after_update = {k: v.clone() for k, v in model.state_dict().items()}

    with ema.swapped(model):
        torch.testing.assert_close(model.linear.weight, 0.5 * live["linear.weight"] + 1.0)
        torch.testing.assert_close(model.norm.running_mean, torch.full((2,), 0.75))  # buffers copied
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, after_update[key])

    with pytest.raises(RuntimeError, match="boom"), ema.swapped(model):
        raise RuntimeError("boom")
    torch.testing.assert_close(model.linear.weight, after_update["linear.weight"])

    ema.copy_to(model)
    torch.testing.assert_close(model.linear.bias, 0.5 * live["linear.bias"] + 1.0)


def test_ema_state_round_trip_and_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Tiny(TinyConfig())
    ema = EMA(model, decay=0.9)
    for _ in range(3):
        _fill(model, random.random())
        ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    restored = EMA(Tiny(TinyConfig()), decay=0.9)
    restored.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert restored.num_updates == 3
    ema.update(model)
    restored.update(model)
    for key in ema.shadow:
        torch.testing.assert_close(restored.shadow[key], ema.shadow[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match the EMA"):
        ema.update(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="shadow"):
        EMA(nn.Linear(3, 2)).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


def test_ema_keeps_float32_shadow_for_bf16_model() -> None:
    model = nn.Linear(2, 2).to(torch.bfloat16)
    _fill(model, 1.0)
    ema = EMA(model, decay=0.9999, warmup=False)
    _fill(model, 0.0)
    ema.update(model)
    # 1 - 1e-4 is not representable in bf16 (it would round back to 1); the shadow keeps it.
    assert ema.shadow["weight"].dtype == torch.float32
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(0.9999, abs=1e-7)
    ema.copy_to(model)
    assert model.weight.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------- optimizer


def _lrs(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    optimizer = scheduler.optimizer
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_constant_and_cosine_values() -> None:
    params = [nn.Parameter(torch.zeros(1))]
    constant = warmup_schedule(build_optimizer(params, lr=2.0), warmup_steps=4)
    assert _lrs(constant, 6) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    cosine = warmup_schedule(build_optimizer(params, lr=1.0), warmup_steps=2, total_steps=6, kind="cosine")
    c = math.cos(math.pi / 4)
    assert _lrs(cosine, 8) == pytest.approx([0.5, 1.0, 1.0, 0.5 * (1 + c), 0.5, 0.5 * (1 - c), 0.0, 0.0])
    no_warmup = warmup_schedule(build_optimizer(params, lr=1.0), warmup_steps=0)
    assert _lrs(no_warmup, 2) == [1.0, 1.0]


def test_schedule_state_is_plain_and_resumes(tmp_path: Path) -> None:
    params = [nn.Parameter(torch.zeros(1))]
    scheduler = warmup_schedule(build_optimizer(params, lr=1.0), warmup_steps=10)
    _lrs(scheduler, 3)
    check_weights_only_safe(scheduler.state_dict(), "scheduler")
    # The current LR lives in the optimizer's param groups, so a resume restores both.
    torch.save({"s": scheduler.state_dict(), "o": scheduler.optimizer.state_dict()}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    resumed = warmup_schedule(build_optimizer(params, lr=1.0), warmup_steps=10)
    resumed.optimizer.load_state_dict(saved["o"])
    resumed.load_state_dict(saved["s"])
    assert _lrs(resumed, 2) == pytest.approx([0.4, 0.5])


def test_optimizer_and_schedule_reject_bad_values() -> None:
    params = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="lr"):
        build_optimizer(params, lr=0.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        build_optimizer(params, lr=1e-4, betas=(0.9, 1.0))
    optimizer = build_optimizer(params, lr=1e-4, weight_decay=0.01, betas=(0.5, 0.9))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="kind"):
        warmup_schedule(optimizer, 1, kind="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps"):
        warmup_schedule(optimizer, 5, total_steps=5, kind="cosine")


def test_clip_grad_returns_true_norm() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert clip_grad([a, b], None) == pytest.approx(5.0)
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 0.0]))  # measuring does not clip
    assert clip_grad([a, b], max_norm=1.0) == pytest.approx(5.0)
    torch.testing.assert_close(torch.cat([a.grad, b.grad]), torch.tensor([0.6, 0.0, 0.8]), atol=1e-5, rtol=0)
    assert clip_grad([nn.Parameter(torch.zeros(1))], 1.0) == 0.0  # no gradients yet


class _CountingModel(nn.Linear):
    """A linear layer that records how often ``no_sync`` (DDP's API) is entered."""

    no_sync_calls = 0

    def no_sync(self):  # noqa: ANN201
        from contextlib import nullcontext

        self.no_sync_calls += 1
        return nullcontext()


def test_gradient_accumulation_matches_full_batch() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    reference = nn.Linear(3, 2)
    nn.functional.mse_loss(reference(x), y).backward()

    model = _CountingModel(3, 2)
    model.load_state_dict(reference.state_dict())
    accumulator = GradientAccumulator(accum_steps=4)
    steps = []
    for chunk in range(8):  # two optimizer steps' worth of micro-batches
        rows = slice(2 * (chunk % 4), 2 * (chunk % 4) + 2)
        with accumulator.micro_batch(model) as mb:
            mb.backward(nn.functional.mse_loss(model(x[rows]), y[rows]))
        steps.append(mb.should_step)
        if mb.should_step:
            torch.testing.assert_close(model.weight.grad, reference.weight.grad)
            torch.testing.assert_close(model.bias.grad, reference.bias.grad)
            model.zero_grad()
    assert steps == [False, False, False, True] * 2
    assert model.no_sync_calls == 6
    assert accumulator.micro_step == 0


# ---------------------------------------------------------------------------------- checkpoint


def _train_some(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, generator=g)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()


def _save_simple(manager: CheckpointManager, step: int, value: float = 0.0) -> Tiny:
    model = Tiny(TinyConfig())
    _fill(model, value)
    manager.save(step, {"model": (model, TinyConfig())}, extra={"epoch": 0})
    return model


def test_checkpoint_round_trip_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = TinyConfig(width=3)
    model = Tiny(config)
    optimizer = build_optimizer(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = warmup_schedule(optimizer, warmup_steps=5)
    ema = EMA(model, decay=0.9)
    _train_some(model, optimizer, 3, seed=1)
    ema.update(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    manager = CheckpointManager(tmp_path / "run", keep_last=2)
    path = manager.save(3, {"model": (model, config)}, optimizers={"model": optimizer},
                        schedulers={"model": scheduler}, ema={"model": ema}, scaler=scaler,
                        extra={"epoch": 1, "data_position": 12, "config": config})
    assert path == tmp_path / "run" / "checkpoints" / "step-000003"
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors", "trainer.json",
                                                     "training_state.pt"]
    raw = torch.load(path / "training_state.pt", weights_only=True)  # no pickled objects inside
    assert set(raw) >= {"optimizers", "schedulers", "ema", "scaler"}
    assert raw["scaler"]["scale"] == 256.0
    trainer = json.loads((path / "trainer.json").read_text())
    assert trainer["step"] == 3 and trainer["epoch"] == 1 and trainer["data_position"] == 12
    assert trainer["config"] == {"width": 3}

    fresh = Tiny(TinyConfig())
    loaded = CheckpointManager(tmp_path / "run").load("latest", modules={"model": fresh})
    assert loaded["step"] == 3 and loaded["path"] == path
    assert TinyConfig.from_dict(loaded["configs"]["model"]) == config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)

    state = loaded["training_state"]
    fresh_optimizer = build_optimizer(fresh.parameters(), lr=1e-2, weight_decay=0.01)
    fresh_optimizer.load_state_dict(state["optimizers"]["model"])
    fresh_scheduler = warmup_schedule(fresh_optimizer, warmup_steps=5)
    fresh_scheduler.load_state_dict(state["schedulers"]["model"])
    fresh_ema = EMA(fresh, decay=0.9)
    fresh_ema.load_state_dict(state["ema"]["model"])

    # Both copies continue identically: same weights, Adam moments, LR and EMA.
    for m, opt, sched, e in ((model, optimizer, scheduler, ema), (fresh, fresh_optimizer, fresh_scheduler, fresh_ema)):
        _train_some(m, opt, 2, seed=9)
        sched.step()
        e.update(m)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    for key in ema.shadow:
        torch.testing.assert_close(fresh_ema.shadow[key], ema.shadow[key], rtol=0, atol=0)
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_latest_pointer_and_pruning(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None
    with pytest.raises(CheckpointError, match="no checkpoint"):
        manager.load()
    for step in range(1, 6):
        _save_simple(manager, step, value=float(step))
    assert manager.steps() == [4, 5]
    assert (manager.directory / "latest").read_text().strip() == "step-000005"
    assert manager.latest() == manager.path_for(5)
    assert manager.load(4)["weights"]["model"]["linear.bias"].tolist() == [4.0, 4.0]

    # A run resumed from an older step: `latest` follows it and is never pruned.
    _save_simple(manager, 2, value=2.0)
    assert manager.latest() == manager.path_for(2)
    assert manager.steps() == [2, 4, 5]
    _save_simple(manager, 3, value=3.0)
    assert manager.steps() == [3, 4, 5]


def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = CheckpointManager(tmp_path, keep_last=1)
    _save_simple(manager, 1, value=1.0)
    real_save_module = checkpoint_module.save_module

    def dies_midway(module, config, folder, name):  # noqa: ANN001, ANN202
        real_save_module(module, config, folder, name)  # some files are written, then the "kill"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_module", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        _save_simple(manager, 2, value=2.0)
    monkeypatch.undo()
    assert manager.steps() == [1]
    assert [p.name for p in manager.directory.iterdir() if p.name.startswith(".")] == []
    assert manager.load()["step"] == 1

    # Killed after the folder was renamed but before `latest` moved: `latest` still names step 1.
    monkeypatch.setattr(CheckpointManager, "_write_pointer", lambda self, name: (_ for _ in ()).throw(OSError))
    with pytest.raises(OSError):
        _save_simple(manager, 2, value=2.0)
    monkeypatch.undo()
    assert manager.steps() == [1, 2]
    loaded = manager.load("latest")
    assert loaded["step"] == 1 and loaded["weights"]["model"]["linear.bias"].tolist() == [1.0, 1.0]


def test_stray_temporaries_are_ignored_then_removed(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    _save_simple(manager, 1)
    stray = manager.directory / ".step-000002.x1y2.tmp"
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"half")
    (manager.directory / ".latest.abc.tmp").write_text("step-000002\n")
    assert manager.latest() == manager.path_for(1)
    assert manager.steps() == [1]
    assert manager.load()["step"] == 1
    _save_simple(manager, 2)
    assert sorted(p.name for p in manager.directory.iterdir()) == ["latest", "step-000001", "step-000002"]


@pytest.mark.parametrize("damage", ["truncate_state", "drop_weights", "garble_weights", "garble_trainer"])
def test_corrupt_newest_checkpoint_is_reported(tmp_path: Path, damage: str) -> None:
    manager = CheckpointManager(tmp_path)
    _save_simple(manager, 1)
    folder = manager.path_for(2)
    manager.save(2, {"model": (Tiny(TinyConfig()), TinyConfig())}, optimizers={"o": {"t": torch.ones(100)}})
    target = {"truncate_state": "training_state.pt", "drop_weights": "model.safetensors",
              "garble_weights": "model.safetensors", "garble_trainer": "trainer.json"}[damage]
    if damage == "truncate_state":
        data = (folder / target).read_bytes()
        (folder / target).write_bytes(data[: len(data) // 2])
    elif damage == "drop_weights":
        (folder / target).unlink()
    else:
        (folder / target).write_bytes(b"\x00garbage{")
    with pytest.raises(CheckpointError, match=target.replace(".", r"\.")):
        manager.load()
    assert manager.load(1)["step"] == 1  # the older one is intact but never used silently


def test_bad_pointer_and_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = CheckpointManager(tmp_path)
    _save_simple(manager, 1, value=1.0)
    _save_simple(manager, 2, value=2.0)
    with pytest.raises(FileExistsError, match="overwrite"):
        _save_simple(manager, 2, value=5.0)

    # A failed overwrite leaves the old folder and a valid `latest` (moved to the previous one).
    monkeypatch.setattr(checkpoint_module, "save_module", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, {"model": (Tiny(TinyConfig()), TinyConfig())}, overwrite=True)
    monkeypatch.undo()
    assert manager.load(2)["weights"]["model"]["linear.bias"].tolist() == [2.0, 2.0]
    assert manager.load()["step"] == 1

    model = Tiny(TinyConfig())
    _fill(model, 7.0)
    manager.save(2, {"model": (model, TinyConfig())}, overwrite=True)
    assert manager.load()["weights"]["model"]["linear.bias"].tolist() == [7.0, 7.0]

    (manager.directory / "latest").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="latest"):
        manager.latest()
    (manager.directory / "latest").write_text("step-000009\n")
    with pytest.raises(CheckpointError, match="step-000009"):
        manager.load()


def test_checkpoint_rejects_unsafe_state_and_names(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    module = {"model": (Tiny(TinyConfig()), TinyConfig())}
    with pytest.raises(ValueError, match=r"training_state\.optimizers\.o\.fn"):
        manager.save(1, module, optimizers={"o": {"fn": print}})
    with pytest.raises(ValueError, match="module name"):
        manager.save(1, {"training_state": module["model"]})
    with pytest.raises(ValueError, match="JSON"):
        manager.save(1, module, extra={"when": object()})
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
    assert manager.steps() == []


# ---------------------------------------------------------------------------------------- grid


def test_to_uint8_values() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.2, -3.0])
    # (x + 1) * 127.5 = 0, 63.75, 127.5, 191.25, 255 -> rounded half-to-even; overshoot clamped
    assert to_uint8(x).tolist() == [0, 64, 128, 191, 255, 255, 0]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([math.nan]))


def test_make_grid_layout_and_padding() -> None:
    values = [-1.0, -0.5, 0.0, 0.5, 1.0]
    expected_tiles = [0, 64, 128, 191, 255]
    images = torch.stack([torch.full((1, 2, 3), v) for v in values])  # N=5, C=1, H=2, W=3
    grid = make_grid(images, nrow=3, padding=1, pad_value=7)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
    expected = np.full((7, 13, 1), 7, np.uint8)
    for i, v in enumerate(expected_tiles):
        top, left = 1 + (i // 3) * 3, 1 + (i % 3) * 4
        expected[top : top + 2, left : left + 3] = v
    np.testing.assert_array_equal(grid, expected)
    assert grid[4, 9, 0] == 7  # the unused sixth cell is padding

    rgb = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    rgb_grid = make_grid(rgb, nrow=2, padding=0)
    assert rgb_grid.shape == (2, 4, 3)
    assert (rgb_grid.reshape(-1, 3) == np.array([255, 0, 128], np.uint8)).all()


def test_make_grid_rejects_bad_input_and_save_grid_round_trips(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        make_grid(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        make_grid(torch.zeros(1, 2, 4, 4))
    images = torch.linspace(-1, 1, 2 * 3 * 4 * 5).view(2, 3, 4, 5)
    grid = save_grid(tmp_path / "g.png", images, nrow=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
    gray = save_grid(tmp_path / "gray.png", images[:, :1], nrow=2)
    with Image.open(tmp_path / "gray.png") as picture:
        assert picture.mode == "L"
        np.testing.assert_array_equal(np.asarray(picture), gray[..., 0])


def test_make_grid_takes_uint8_pixels_as_they_are() -> None:
    floats = torch.linspace(-1, 1, 2 * 3 * 4 * 5).view(2, 3, 4, 5)
    pixels = to_uint8(floats)
    np.testing.assert_array_equal(make_grid(pixels, nrow=2), make_grid(floats, nrow=2))
    assert make_grid(pixels, nrow=2, padding=0)[0, 0, 0] == pixels[0, 0, 0, 0]


# ------------------------------------------------------------------------------------- logging


def test_logger_writes_metrics_images_tensorboard_and_bar(tmp_path: Path) -> None:
    bar = io.StringIO()
    with TrainingLogger(tmp_path, total_steps=10, progress_file=bar) as logger:
        for step in range(3):
            logger.log_scalars(step, {"loss": 1.0 / (step + 1), "lr": torch.tensor(0.5)})
            logger.advance(loss=torch.tensor(1.0 / (step + 1)))
        png = logger.log_images(2, "samples/ema", torch.zeros(4, 3, 4, 4), nrow=2)
        logger.write("sampled at step 2")
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert [r["loss"] for r in records] == pytest.approx([1.0, 0.5, 1 / 3])
    assert all(r["lr"] == 0.5 for r in records)
    assert png == tmp_path / "images" / "samples" / "ema" / "step-000002.png"
    np.testing.assert_array_equal(np.asarray(Image.open(png)), make_grid(torch.zeros(4, 3, 4, 4), nrow=2))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    text = bar.getvalue()
    assert "3/10" in text and "loss=0.3333" in text and "sampled at step 2" in text

    with pytest.raises(ValueError, match="scalar name"):
        TrainingLogger(tmp_path / "x", tensorboard=False, progress=False).log_scalars(0, {"a b": 1.0})
    with pytest.raises(ValueError, match="number"):
        TrainingLogger(tmp_path / "y", tensorboard=False, progress=False).log_scalars(0, {"a": "x"})


def test_logger_resume_purges_later_records_and_disabled_is_silent(tmp_path: Path) -> None:
    with TrainingLogger(tmp_path, tensorboard=False, progress=False) as logger:
        for step in range(5):
            logger.log_scalars(step, {"loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "lo')  # a record cut short by a kill
    # Resumed from the checkpoint of step 3: its record stays, the run logs again from step 4.
    with TrainingLogger(tmp_path, tensorboard=False, progress=False, initial_step=3) as logger:
        logger.log_scalars(4, {"loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0),
                                                                      (4, 40.0)]

    quiet = tmp_path / "rank1"
    with TrainingLogger(quiet, total_steps=5, enabled=False) as logger:
        logger.log_scalars(0, {"loss": 1.0})
        logger.advance(loss=1.0)
        assert logger.log_images(0, "x", torch.zeros(1, 3, 2, 2)) is None
    assert not quiet.exists()
