"""Crash-safe training checkpoints: self-describing folders, an atomic ``latest`` pointer, pruning.

Layout under ``run_dir/checkpoints/``::

    step-000123/
        {name}.safetensors, {name}.json   # each model: weights + config (io.save_module)
        training_state.pt                 # optimizers, schedulers, EMA, scaler, RNG: plain data
        trainer.json                      # step, module names, epoch, data position, run config...
    latest                                # text file naming the newest complete folder

A folder is built under a temporary name, every file fsynced, then renamed into place; only
then is ``latest`` rewritten (itself atomically). So a kill at any moment leaves every
``step-*`` folder complete and ``latest`` naming one of them. ``training_state.pt`` holds only
tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``
and never runs pickled code.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latent_diffusion.config import Config
from latent_diffusion.io import atomic_directory, atomic_write_text, load_state_strict, load_tensors, save_module
from latent_diffusion.training.distributed import unwrap_model

FORMAT_VERSION = 1
STATE_FILE = "training_state.pt"
TRAINER_FILE = "trainer.json"
POINTER_FILE = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_STRAY = re.compile(r"^\.(step-\d+|latest)\..*$")  # temporaries left by a killed save or prune
_MODULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_RESERVED = {Path(STATE_FILE).stem, Path(TRAINER_FILE).stem, POINTER_FILE}


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt; the message names the file."""


class CheckpointManager:
    """Saves, finds, loads and prunes checkpoints of one run. Call :meth:`save` on one process only."""

    def __init__(self, run_dir: str | Path, keep_last: int | None = 3) -> None:
        if keep_last is not None and (isinstance(keep_last, bool) or keep_last < 1):
            raise ValueError(f"keep_last={keep_last!r} must be an integer >= 1, or None to keep every checkpoint")
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        """Folder of the checkpoint at ``step`` (it may not exist)."""
        return self.directory / f"step-{step:06d}"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoint folders present, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_STEP_DIR.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, step: int, modules: Mapping[str, tuple[nn.Module, Config]], *,
             optimizers: Mapping[str, Any] | None = None, schedulers: Mapping[str, Any] | None = None,
             ema: Mapping[str, Any] | None = None, scaler: Any = None,
             extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
        """Write the checkpoint for ``step`` and point ``latest`` at it; returns its folder.

        ``optimizers``, ``schedulers`` and ``ema`` map names to objects with ``state_dict()`` or
        to state dicts; ``scaler`` likewise. No generator state is saved: the trainers draw each
        step's randomness from a generator seeded by (seed, step), so a resume needs only the step.
        ``extra`` (epoch, data position, run config, ...) goes to ``trainer.json``; configs in it
        are written with ``to_dict()``. An existing folder for ``step`` is an error unless
        ``overwrite`` (then it is replaced whole, never mixed with the new files, and while that
        happens ``latest`` names the newest other checkpoint, so it stays valid if killed).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step={step!r} must be an integer >= 0")
        for name in modules:
            if not _MODULE_NAME.match(name) or name in _RESERVED:
                raise ValueError(f"module name {name!r} must match {_MODULE_NAME.pattern} and not be one of "
                                 f"{sorted(_RESERVED)}")
        target = self.path_for(step)
        if target.exists() and not overwrite:
            raise FileExistsError(f"checkpoint {str(target)!r} already exists; pass overwrite=True to replace it")
        state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizers": _state_dicts(optimizers),
            "schedulers": _state_dicts(schedulers),
            "ema": _state_dicts(ema),
            "scaler": _state_dict(scaler),
        }
        check_weights_only_safe(state, "training_state")
        trainer = _trainer_json(step, sorted(modules), extra)

        self._remove_strays()
        current = self.latest() if target.exists() else None
        if current is not None and current.name == target.name:
            # atomic_directory swaps folders with two renames; keep `latest` off the folder
            # being replaced meanwhile, so a kill between them leaves `latest` valid.
            self._point_away_from(step)
        with atomic_directory(target) as tmp:
            for name, (module, config) in modules.items():
                save_module(unwrap_model(module), config, tmp, name)
            torch.save(state, tmp / STATE_FILE)
            (tmp / TRAINER_FILE).write_text(trainer)
        # Only a complete, renamed folder is ever named by the pointer.
        self._write_pointer(target.name)
        self._prune()
        return target

    def latest(self) -> Path | None:
        """Folder named by ``latest``; without the pointer, the highest complete step; else ``None``."""
        pointer = self.directory / POINTER_FILE
        if not pointer.is_file():
            steps = self.steps()
            return self.path_for(steps[-1]) if steps else None
        name = pointer.read_text().strip()
        if not _STEP_DIR.match(name):
            raise CheckpointError(f"pointer file {str(pointer)!r} holds {name!r}; expected a name like 'step-000123'")
        folder = self.directory / name
        if not folder.is_dir():
            raise CheckpointError(f"pointer file {str(pointer)!r} names {str(folder)!r}, which does not exist")
        return folder

    def resolve(self, which: str | Path | int = "latest") -> Path:
        """Folder for ``"latest"``, a step number, a folder name such as ``"step-000123"`` or a path."""
        if isinstance(which, int) and not isinstance(which, bool):
            folder = self.path_for(which)
        elif which == "latest":
            folder = self.latest()
            if folder is None:
                raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
        else:
            folder = Path(which) if Path(which).is_dir() else self.directory / str(which)
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist (steps present: {self.steps()})")
        return folder

    def load(self, which: str | Path | int = "latest", modules: Mapping[str, nn.Module] | None = None,
             map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Read a checkpoint; with ``modules``, also load their weights strictly.

        Returns ``{"path", "step", "trainer", "configs", "weights", "training_state"}``, where
        ``configs[name]`` is the plain config dict (``XConfig.from_dict`` rebuilds it) and
        ``weights[name]`` the state dict. Any missing or corrupt file raises
        :class:`CheckpointError` naming it; an older checkpoint is never substituted.
        """
        folder = self.resolve(which)
        trainer = _read_json(folder / TRAINER_FILE)
        if trainer.get("format_version") != FORMAT_VERSION or not isinstance(trainer.get("modules"), list):
            raise CheckpointError(f"{str(folder / TRAINER_FILE)!r} is not a format-{FORMAT_VERSION} trainer file")
        configs = {name: _read_json(folder / f"{name}.json") for name in trainer["modules"]}
        weights = {}
        for name in trainer["modules"]:
            try:
                weights[name] = load_tensors(folder / f"{name}.safetensors", device=map_location)
            except (OSError, ValueError) as err:
                raise CheckpointError(str(err)) from err
        state_path = folder / STATE_FILE
        if not state_path.is_file():
            raise CheckpointError(f"checkpoint file {str(state_path)!r} is missing")
        try:
            state = torch.load(state_path, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises several unrelated types for truncated/garbled files
            raise CheckpointError(f"checkpoint file {str(state_path)!r} is corrupt: {err}") from err
        for name, module in (modules or {}).items():
            if name not in weights:
                raise CheckpointError(f"checkpoint {str(folder)!r} has no module {name!r}; it has {sorted(weights)}")
            load_state_strict(unwrap_model(module), weights[name], source=str(folder / f"{name}.safetensors"))
        return {"path": folder, "step": trainer["step"], "trainer": trainer, "configs": configs,
                "weights": weights, "training_state": state}

    def resume(self, modules: Mapping[str, nn.Module], *, optimizers: Mapping[str, Any] | None = None,
               schedulers: Mapping[str, Any] | None = None, ema: Mapping[str, Any] | None = None) -> int:
        """``--resume``: load the latest checkpoint into ``modules`` (strictly) and the named
        optimizers, schedulers and EMAs (the names :meth:`save` was given); returns its step.
        No checkpoint at all is a FileNotFoundError that says to start without ``--resume``."""
        if self.latest() is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {str(self.directory)!r}; start without --resume")
        state = self.load("latest", modules=modules)
        training = state["training_state"]
        for kind, objects in (("optimizers", optimizers), ("schedulers", schedulers), ("ema", ema)):
            for name, obj in (objects or {}).items():
                try:
                    obj.load_state_dict(training[kind][name])
                except ValueError as err:
                    if kind != "optimizers":
                        raise
                    # torch's message speaks of parameter groups; say which setting makes them.
                    raise ValueError(f"--resume: the checkpoint's {name} does not fit this run's ({err}); its "
                                     "parameter groups come from optim.lr_scale, so resume with the "
                                     "optim.lr_scale the run started with") from err
        return int(state["step"])

    def _write_pointer(self, name: str) -> None:
        atomic_write_text(self.directory / POINTER_FILE, name + "\n")

    def _point_away_from(self, step: int) -> None:
        """Name the highest other checkpoint in ``latest`` (or drop the pointer if there is none)."""
        others = [s for s in self.steps() if s != step]
        if others:
            self._write_pointer(self.path_for(others[-1]).name)
        else:
            (self.directory / POINTER_FILE).unlink(missing_ok=True)

    def _prune(self) -> None:
        """Delete all but the ``keep_last`` highest steps, never the folder ``latest`` names."""
        if self.keep_last is None:
            return
        steps = self.steps()
        keep = set(steps[-self.keep_last:])
        latest = self.latest()
        for step in steps:
            folder = self.path_for(step)
            if step in keep or (latest is not None and folder.name == latest.name):
                continue
            # Rename first (atomic) so a kill mid-delete never leaves a half-deleted step-* folder.
            doomed = folder.with_name(f".{folder.name}.deleting")
            folder.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def _remove_strays(self) -> None:
        """Remove temporaries of an earlier killed save; they are never read, only wasted space."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if _STRAY.match(path.name):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def check_weights_only_safe(obj: Any, where: str) -> None:
    """Raise unless ``obj`` is built from tensors, numbers, strings, None, lists, tuples and dicts."""
    if obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            check_weights_only_safe(item, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            check_weights_only_safe(value, f"{where}.{key}")
        return
    raise ValueError(f"{where} is a {type(obj).__name__}, which torch.load(weights_only=True) cannot read; "
                     "store tensors, numbers, strings, lists or dicts")


def _state_dict(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def _state_dicts(objs: Mapping[str, Any] | None) -> dict[str, Any]:
    return {name: _state_dict(obj) for name, obj in (objs or {}).items()}


def _trainer_json(step: int, names: list[str], extra: Mapping[str, Any] | None) -> str:
    extra = dict(extra or {})
    clash = sorted({"format_version", "step", "modules"} & set(extra))
    if clash:
        raise ValueError(f"extra uses reserved key(s) {clash}")
    data = {"format_version": FORMAT_VERSION, "step": step, "modules": names}
    data.update({k: v.to_dict() if isinstance(v, Config) else v for k, v in extra.items()})
    try:
        return json.dumps(data, indent=2) + "\n"
    except TypeError as err:
        raise ValueError(f"extra must hold JSON-able values (numbers, strings, lists, dicts, configs): {err}") from err


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint file {str(path)!r} must hold a JSON object")
    return data


__all__ = ["CheckpointError", "CheckpointManager", "check_weights_only_safe"]
