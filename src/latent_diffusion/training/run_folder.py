"""A run folder belongs to its user: a fresh run never writes into one that already holds a run.

Without this, ``ldm train ... run.run_dir=<a finished run>`` would replace its ``final/``, leave its
old checkpoints beside the new ones (with ``latest`` pointing at the new run) and append to its
metrics, silently. So before anything is written, a fresh run (no ``--resume``) in a non-empty
folder is refused with the three ways on: ``--resume`` to continue it, another ``run.run_dir``,
or ``--overwrite`` to replace it. ``--overwrite`` deletes only what a run writes (the names in
:data:`RUN_ENTRIES` and the temporaries of a killed save); a folder holding anything else is
never emptied, since it may be the user's own files.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

# What a training run writes into its folder (checkpoint.py, logging.py, the trainers' caches).
RUN_ENTRIES = frozenset({"checkpoints", "final", "cache", "metrics.jsonl", "tensorboard", "images"})
_TEMPORARY = re.compile(r"^\.(final|step-\d+|latest|download-[^/]*)\..*$|^\.[^/]*\.tmp$")


class RunFolderInUseError(ValueError):
    """A fresh run was pointed at a folder that already holds a run (or other files)."""


def _is_run_entry(name: str) -> bool:
    return name in RUN_ENTRIES or bool(_TEMPORARY.match(name))


def check_run_folder(run_dir: str | Path, *, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse a fresh run in a used folder; return what ``--overwrite`` will delete (maybe nothing),
    or on ``resume`` the temporaries a killed save left behind.

    Pure check: nothing is touched, so every rank of a distributed run can call it.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunFolderInUseError("--resume continues the run in run.run_dir and --overwrite replaces it; "
                                  "give one of them")
    if resume:  # what a killed save left (an export's ".final.*.tmp"): never read, so removed
        return [p for p in run_dir.iterdir() if _TEMPORARY.match(p.name)] if run_dir.is_dir() else []
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderInUseError(f"run.run_dir={str(run_dir)!r} is a file, not a folder; choose another run.run_dir")
    entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
    if not entries:
        return []
    foreign = [p.name for p in entries if not _is_run_entry(p.name)]
    if foreign:
        raise RunFolderInUseError(
            f"run.run_dir={str(run_dir)!r} holds files that are not a training run's ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new run.run_dir")
    if not overwrite:
        raise RunFolderInUseError(
            f"run.run_dir={str(run_dir)!r} already holds a run ({', '.join(p.name for p in entries)}); "
            "continue it with --resume, choose another run.run_dir, or replace it with --overwrite")
    return entries


def clear_run_folder(entries: list[Path]) -> None:
    """Delete what :func:`check_run_folder` listed (rank 0 only, before anything is written)."""
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


__all__ = ["RUN_ENTRIES", "RunFolderInUseError", "check_run_folder", "clear_run_folder"]
