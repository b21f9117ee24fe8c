"""``ldm data prepare emoji-styles``: fetch the six style packages, join them, render at 128 px.

Steps (all inside a scratch folder; the prepared folder appears atomically at the end):
1. ``npm pack`` the reference list (``emoji-datasource``), the CLDR keyword packages and each
   style's package; ``apt-get download`` Noto's font. A package that cannot be fetched stops the
   run with the command that fetches it by hand.
2. Each reader (``sources.py``, ``fluent_slugs.py``) places its pictures by (concept, tone).
   Noto and Twemoji pictures a package lacks come from the 64 px ``emoji-datasource-google`` /
   ``-twitter`` PNGs of the same art (recorded as the picture's ``source``).
3. Every picture is rendered to ``img/<style>/<concept>[_<tone>].png`` (two processes, results
   in a fixed order); one that fails is skipped and counted in one warning.
4. ``records.jsonl``, ``concepts.json`` and the manifest (``prepared.json``: per style package,
   version, licence, attribution, counts, skipped counts by reason, download and render seconds).
"""

from __future__ import annotations

import json
import multiprocessing
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from latent_diffusion.data import cache
from latent_diffusion.data.emoji_styles import styles as S
from latent_diffusion.data.emoji_styles.fluent_slugs import ALIASES, FOLDERS, read_fluent
from latent_diffusion.data.emoji_styles.reference import Concept, read_annotations, read_reference
from latent_diffusion.data.emoji_styles.render import SIZE, render_to_file, require_resvg
from latent_diffusion.data.emoji_styles.sources import Key, Picture, read_hex_named, read_noto
from latent_diffusion.data.emoji_styles.sequences import normalize_sequence

DATASET = "emoji-styles"
FALLBACKS = {"noto": ("emoji-datasource-google", "google"), "twemoji": ("emoji-datasource-twitter", "twitter")}
FALLBACK_VERSION = "16.0.0"


def dataset_dir() -> Path:
    """The prepared folder (``$LDM_DATA_DIR/emoji-styles``)."""
    return cache.dataset_dir(DATASET)


def picture_file(style: str, concept: str, tone: str) -> str:
    """Relative path of one rendered picture."""
    return f"img/{style}/{concept}{'_' + tone if tone else ''}.png"


class Fetcher:
    """Downloads and unpacks each package once into the scratch folder, timing each."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.seconds: dict[str, float] = {}
        self._done: dict[str, Path] = {}

    def npm(self, spec: str, keep: tuple[str, ...] = ("package/",)) -> Path:
        """Unpacked ``package/`` folder of an npm package."""
        if spec not in self._done:
            began = time.perf_counter()
            work = self.scratch / spec.replace("/", "_").replace("@", "_")
            work.mkdir(parents=True)
            tarball = cache.npm_pack(spec, work)
            cache.extract_tar(tarball, work, lambda name: name.startswith(keep))
            tarball.unlink()
            self._done[spec] = work / "package"
            self.seconds[spec] = time.perf_counter() - began
        return self._done[spec]

    def noto_font(self) -> Path:
        """NotoColorEmoji.ttf from the Debian package."""
        if "noto" not in self._done:
            began = time.perf_counter()
            work = self.scratch / "noto"
            work.mkdir()
            root = cache.apt_download_extract(S.NOTO.name, work)
            fonts = sorted(root.rglob("NotoColorEmoji.ttf"))
            if not fonts:
                raise cache.PreparationError(f"Debian {S.NOTO.name} holds no NotoColorEmoji.ttf; "
                                             f"install it with `apt-get install {S.NOTO.name}`")
            self._done["noto"] = fonts[0]
            self.seconds[S.NOTO.name] = time.perf_counter() - began
        return self._done["noto"]


def read_fallback(package_dir: Path, folder: str, concepts: dict[str, Concept]) -> dict[Key, Picture]:
    """The 64 px PNGs of an emoji-datasource-<set> package, by (concept, tone)."""
    found: dict[Key, Picture] = {}
    images = package_dir / "img" / folder / "64"
    for entry in json.loads((package_dir / "emoji.json").read_text(encoding="utf-8")):
        for source in [entry, *(entry.get("skin_variations") or {}).values()]:
            try:
                key = normalize_sequence(source["unified"])
            except ValueError:  # the bare skin-tone swatches (Component)
                continue
            if key[0] in concepts and key[1] in concepts[key[0]].tones and (images / source["image"]).is_file():
                found.setdefault(key, Picture("raster", path=images / source["image"]))
    return found


def read_style(style: str, fetch: Fetcher, concepts: dict[str, Concept]) -> tuple[dict[Key, tuple[Picture, str]], Counter]:
    """Pictures of one style with the source line of each, and the skipped counts."""
    package = S.PACKAGES[style]
    if style == "noto":
        found, skipped = read_noto(fetch.noto_font(), concepts)
    elif style == "twemoji":
        found, skipped = read_hex_named(fetch.npm(package.spec), ".svg", "svg", concepts)
    elif style == "fluent-3d":
        found, skipped = read_hex_named(fetch.npm(package.spec) / "assets", ".webp", "raster", concepts)
    elif style in FOLDERS:
        found, skipped = read_fluent(fetch.npm(package.spec) / "icons", style, concepts)
    else:  # openmoji: colour SVGs named by upper-case hex
        found, skipped = read_hex_named(fetch.npm(package.spec, ("package/color/svg/", "package/LICENSE")) / "color" / "svg",
                                        ".svg", "svg", concepts)
    placed = {key: (picture, package.describe()) for key, picture in found.items()}
    if style in FALLBACKS:
        name, folder = FALLBACKS[style]
        spec = f"{name}@{FALLBACK_VERSION}"
        extra = read_fallback(fetch.npm(spec, ("package/emoji.json", f"package/img/{folder}/64/")), folder, concepts)
        for key, picture in extra.items():
            if key not in placed:
                placed[key] = (picture, f"npm {spec} (64 px)")
                skipped["filled from the 64 px fallback (not skipped)"] += 1
    return placed, skipped


def render_all(jobs: list[tuple[Picture, Path]], processes: int) -> list[str]:
    """Render every job; the i-th result is job i's failure reason or ""."""
    # fork: the workers only decode and render (no torch threads), and unlike spawn it works when
    # the caller's __main__ is not a file (a notebook, python -c).
    if processes <= 1 or len(jobs) < 64 or "fork" not in multiprocessing.get_all_start_methods():
        return [render_to_file(job) for job in jobs]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return pool.map(render_to_file, jobs, chunksize=32)


def require_fonttools() -> None:
    """Fail early, with the install command, when the font reader Noto's glyphs need is missing."""
    try:
        import fontTools  # noqa: F401
    except ImportError:
        raise cache.PreparationError("reading Noto's emoji font needs fontTools, which is not installed; run "
                                     "`pip install 'fonttools>=4.40'` (or prepare without noto: --styles ...)") from None


def build(tmp: Path, styles: tuple[str, ...], processes: int) -> dict[str, Any]:
    """Fill ``tmp`` with the prepared dataset; returns the manifest."""
    require_resvg()
    if "noto" in styles:
        require_fonttools()
    with cache.scratch_dir() as scratch:
        fetch = Fetcher(Path(scratch))
        reference = fetch.npm(S.REFERENCE.spec, ("package/emoji.json", "package/LICENSE"))
        annotations = read_annotations(
            fetch.npm(S.KEYWORDS.spec, ("package/annotations/en/",)) / "annotations" / "en" / "annotations.json",
            fetch.npm(S.DERIVED_KEYWORDS.spec, ("package/annotationsDerived/en/",))
            / "annotationsDerived" / "en" / "annotations.json")
        concepts = read_reference(reference / "emoji.json", annotations)
        records: list[dict[str, str]] = []
        report: dict[str, Any] = {}
        for style in styles:
            began = time.perf_counter()
            placed, skipped = read_style(style, fetch, concepts)
            keys = sorted(placed)
            jobs = [(placed[k][0], tmp / picture_file(style, *k)) for k in keys]
            read_seconds = time.perf_counter() - began
            began = time.perf_counter()
            failures = render_all(jobs, processes)
            failed = Counter(f"render failed ({reason.split(':')[0]})" for reason in failures if reason)
            for key, failure in zip(keys, failures):
                if not failure:
                    records.append({"concept": key[0], "tone": key[1], "style": style,
                                    "file": picture_file(style, *key), "source": placed[key][1]})
            package = S.PACKAGES[style]
            report[style] = {"package": package.describe(), "licence": package.licence,
                             "attribution": package.attribution, "pictures": len(keys) - sum(failed.values()),
                             "skipped": dict(sorted((skipped + failed).items())),
                             "download_and_read_seconds": round(read_seconds, 1),
                             "render_seconds": round(time.perf_counter() - began, 1)}
            if failed:
                warnings.warn(f"emoji-styles {style}: {sum(failed.values())} pictures failed to render and were "
                              f"skipped ({dict(failed)})", stacklevel=2)
        records.sort(key=lambda r: (r["concept"], r["tone"], S.ALL_STYLES.index(r["style"])))
        with open(tmp / "records.jsonl", "w", encoding="utf-8") as out:
            out.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
        (tmp / "concepts.json").write_text(
            json.dumps({c: m.to_json() for c, m in concepts.items()}, indent=1, sort_keys=True, ensure_ascii=False)
            + "\n", encoding="utf-8")
        with_all = Counter(r["concept"] for r in records if r["tone"] == "")
        return {"dataset": DATASET, "resolution": SIZE, "styles": report, "pictures": len(records),
                "concepts": len(concepts), "concepts_with_every_style": sum(v == len(styles) for v in with_all.values()),
                "reference": S.REFERENCE.describe(),
                "keywords": {"packages": [S.KEYWORDS.describe(), S.DERIVED_KEYWORDS.describe()],
                             "concepts_with_keywords": sum(bool(m.keywords) for m in concepts.values())},
                "fluent_aliases": len(ALIASES), "download_seconds": {k: round(v, 1) for k, v in fetch.seconds.items()}}


def prepare_emoji_styles(force: bool = False, styles: tuple[str, ...] = S.STYLES, processes: int = 2) -> bool:
    """Prepare the dataset once (``force`` rebuilds); returns whether anything was built."""
    styles = S.check_styles(styles)
    return cache.prepare_folder(dataset_dir(), lambda tmp: build(tmp, styles, processes), force=force)


__all__ = ["DATASET", "dataset_dir", "picture_file", "prepare_emoji_styles"]
