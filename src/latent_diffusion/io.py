"""Safe, atomic file writing and self-describing module folders (config + safetensors).

Nothing a user made may be corrupted by a crash or a kill, so every file is written to a
temporary name in the same directory, flushed to disk, then renamed over the target (rename is
atomic on POSIX). Weights are only ever read with safetensors, never unpickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latent_diffusion.config import Config

M = TypeVar("M", bound=torch.nn.Module)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power cut."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path``.

    If ``write`` raises (or the process dies), ``path`` keeps its old content and the
    temporary file is removed (or left under a ``.tmp`` name that is never read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes owner-only files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable_folder(folder: str | Path, option: str = "-o PATH") -> None:
    """Raise a ValueError (naming ``option``) unless ``folder`` exists and a file can be created in
    it: checked before any work, so a long job never ends on an unwritable target."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"output folder {str(folder)!r} does not exist; create it (mkdir -p {folder}) "
                         f"or choose another {option}")
    try:  # a real write: access() says yes to root on read-only mounts
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"output folder {str(folder)!r} is not writable ({err.strerror}); "
                         f"choose another {option}") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place only if the block succeeds.

    An existing folder at ``path`` is replaced only after the new one is complete, so a kill
    at any moment leaves either the old folder or the new one, never a half-written mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes owner-only folders
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb+") as handle:
                    os.fsync(handle.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tensors made contiguous and detached)."""
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file, with an error naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"weights file {str(path)!r} is corrupt or not safetensors: {err}") from err


def save_module(module: torch.nn.Module, config: Config, folder: str | Path, name: str,
                dtype: torch.dtype | None = None) -> None:
    """Write ``{name}.json`` (config) and ``{name}.safetensors`` (state dict) into ``folder``."""
    folder = Path(folder)
    state = module.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_tensors(folder / f"{name}.safetensors", state)
    atomic_write_text(folder / f"{name}.json", _config_json(config))


def load_module(module_class: Callable[[Any], M], config_class: type[Config], folder: str | Path,
                name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> M:
    """Build ``module_class(config)`` from ``{name}.json`` and load ``{name}.safetensors`` strictly."""
    folder = Path(folder)
    config = config_class.load(folder / f"{name}.json")
    module = module_class(config)
    state = load_tensors(folder / f"{name}.safetensors")
    load_state_strict(module, state, source=str(folder / f"{name}.safetensors"))
    return module.to(device=device, dtype=dtype)


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with an error naming the file and the first offending keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:5]}{' ...' if len(wrong) > 5 else ''}")
        raise ValueError(f"weights in {source!r} do not fit the model: " + "; ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _config_json(config: Config) -> str:
    import json

    return json.dumps(config.to_dict(), indent=2) + "\n"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
