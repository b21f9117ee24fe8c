"""Training logs: TensorBoard, a JSON-lines metrics file, sample grids as PNG, a progress bar.

Everything is written by the main process only; on other ranks :class:`TrainingLogger` does
nothing. ``metrics.jsonl`` (one ``{"step", "wall_time", ...}`` object per line) lets tests and
scripts read the numbers without TensorBoard. On resume from the checkpoint of step ``s`` (whose
record was logged before it was saved; the resumed run logs from ``s + 1``), records at steps
``> s`` left by the interrupted run are dropped from it (as TensorBoard's ``purge_step`` does for
its event files), so each step appears exactly once.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from latent_diffusion.io import atomic_write_text
from latent_diffusion.pixels import make_grid, write_png

METRICS_FILE = "metrics.jsonl"
_TAG = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
_RESERVED = ("step", "wall_time")


class TrainingLogger:
    """Scalars and image grids to TensorBoard and files, plus a tqdm bar with loss, it/s and ETA."""

    def __init__(self, run_dir: str | Path, total_steps: int | None = None, *, enabled: bool = True,
                 initial_step: int = 0, tensorboard: bool = True, progress: bool = True,
                 progress_file: TextIO | None = None, desc: str = "train") -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / METRICS_FILE
        self._writer: Any = None
        self._metrics: TextIO | None = None
        self._bar: tqdm | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if initial_step > 0 and self.metrics_path.exists():
            _purge_metrics(self.metrics_path, initial_step)
        # Line-buffered append: each record reaches the file as soon as it is logged.
        self._metrics = open(self.metrics_path, "a", buffering=1)
        if tensorboard:
            self._writer = _summary_writer(self.run_dir / "tensorboard", initial_step)
        if progress:
            self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, file=progress_file,
                             dynamic_ncols=True, smoothing=0.1)

    def log_scalars(self, step: int, scalars: Mapping[str, float | torch.Tensor]) -> None:
        """Record named numbers (floats or one-element tensors) at ``step``."""
        if not self.enabled:
            return
        values = {}
        for name, value in scalars.items():
            if name in _RESERVED or not _TAG.match(name):
                raise ValueError(f"scalar name {name!r} must match {_TAG.pattern} and not be one of {_RESERVED}")
            values[name] = _number(name, value)
        record = {"step": int(step), "wall_time": time.time(), **values}
        assert self._metrics is not None
        self._metrics.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def log_images(self, step: int, tag: str, images: torch.Tensor, nrow: int = 8) -> Path | None:
        """Log a grid of ``images`` [N, C, H, W] in [-1, 1]; also saved as ``images/{tag}/step-XXXXXX.png``."""
        if not self.enabled:
            return None
        if not _TAG.match(tag):
            raise ValueError(f"image tag {tag!r} must match {_TAG.pattern}")
        grid = make_grid(images, nrow=nrow)
        path = self.run_dir / "images" / tag / f"step-{int(step):06d}.png"
        write_png(path, grid)
        if self._writer is not None:
            self._writer.add_image(tag, grid, step, dataformats="HWC")
        return path

    def advance(self, steps: int = 1, **postfix: float | torch.Tensor) -> None:
        """Move the progress bar by ``steps`` and show ``postfix`` values (e.g. ``loss=...``)."""
        if self._bar is None:
            return
        self._bar.update(steps)
        if postfix:
            shown = {k: f"{_number(k, v):.4g}" for k, v in postfix.items()}
            self._bar.set_postfix(shown, refresh=False)

    def write(self, message: str) -> None:
        """Print a line above the progress bar (main process only)."""
        if self.enabled:
            tqdm.write(message, file=self._bar.fp if self._bar is not None else None)

    def close(self) -> None:
        """Flush and close every output (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def __enter__(self) -> "TrainingLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``run_dir/metrics.jsonl``, in order (a final line cut by a kill is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"metrics file {str(path)!r} does not exist")
    return _parse_lines(path)


def _parse_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # the process died while writing its last record
                break
            raise ValueError(f"{str(path)!r} line {number} is not valid JSON: {err}") from err
    return records


def _purge_metrics(path: Path, initial_step: int) -> None:
    kept = [r for r in _parse_lines(path) if r.get("step", 0) <= initial_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _number(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    return float(value)


def _summary_writer(log_dir: Path, initial_step: int) -> Any:
    """A TensorBoard writer, or ``None`` with a warning when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed; logging to metrics.jsonl only "
                      "(pip install tensorboard)", stacklevel=3)
        return None
    # purge_step hides events an interrupted run wrote after the checkpoint we resume from (events
    # at steps >= purge_step); the checkpoint's own step stays.
    return SummaryWriter(log_dir=str(log_dir), purge_step=initial_step + 1 if initial_step > 0 else None)


__all__ = ["METRICS_FILE", "TrainingLogger", "read_metrics"]
