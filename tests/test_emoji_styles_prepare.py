"""``ldm data prepare emoji-styles`` on small fake packages: the join, fallbacks, aliases, skipped
counts, the manifest, bad input (an unfetchable package, a broken SVG), and ``--styles``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

import latent_diffusion.cli as ldm_cli
from latent_diffusion.data import build_dataset, cache
from latent_diffusion.data.emoji_styles import prepare
from latent_diffusion.data.emoji_styles.sources import Picture
from latent_diffusion.data.emoji_styles.splits import composition_pairs

SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32" viewBox="0 0 32 32">'
       '<circle cx="16" cy="16" r="12" fill="{colour}"/></svg>')
REFERENCE = [
    {"unified": "1F44D", "name": "THUMBS UP SIGN", "category": "People & Body", "subcategory": "hand-fingers-closed",
     "short_names": ["+1"], "sort_order": 1, "image": "1f44d.png",
     "skin_variations": {"1F3FB": {"unified": "1F44D-1F3FB", "image": "1f44d-1f3fb.png"},
                         "1F3FD": {"unified": "1F44D-1F3FD", "image": "1f44d-1f3fd.png"}}},
    {"unified": "1F431", "name": "CAT FACE", "category": "Animals & Nature", "subcategory": "animal-mammal",
     "sort_order": 2, "image": "1f431.png"},
    {"unified": "1F917", "name": "HUGGING FACE", "category": "Smileys & Emotion", "subcategory": "face-hand",
     "sort_order": 3, "image": "1f917.png"},
    {"unified": "1F3FB", "name": "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "category": "Component",
     "subcategory": "skin-tone", "sort_order": 4, "image": "1f3fb.png"},
]
ANNOTATIONS = {"👍": {"default": ["+1", "hand", "like"], "tts": ["thumbs up"]},
               "🐱": {"default": ["cat", "face"], "tts": ["cat face"]},
               "🤗": {"default": ["hug"], "tts": ["smiling face with open hands"]}}


def png_bytes(colour: str = "red", size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)


def fake_packages(root: Path) -> dict[str, Path]:
    """package name -> its unpacked ``package/`` folder."""
    folders = {name: root / name / "package" for name in (
        "emoji-datasource", "cldr-annotations-full", "cldr-annotations-derived-full", "@twemoji/svg",
        "@lobehub/fluent-emoji-3d", "fluentui-emoji", "emoji-datasource-google", "emoji-datasource-twitter")}
    write(folders["emoji-datasource"] / "emoji.json", json.dumps(REFERENCE))
    write(folders["cldr-annotations-full"] / "annotations/en/annotations.json",
          json.dumps({"annotations": {"annotations": ANNOTATIONS}}))
    write(folders["cldr-annotations-derived-full"] / "annotationsDerived/en/annotations.json",
          json.dumps({"annotationsDerived": {"annotations": {}}}))
    twemoji = folders["@twemoji/svg"]
    for name in ("1f44d", "1f44d-1f3fb", "1f431"):
        write(twemoji / f"{name}.svg", SVG.format(colour="gold"))
    write(twemoji / "1f917.svg", "<svg this is not xml")      # fails to render: skipped and counted
    write(twemoji / "readme.svg", SVG.format(colour="gold"))  # not a codepoint sequence
    write(twemoji / "1f600.svg", SVG.format(colour="gold"))   # not in the reference list
    write(folders["@lobehub/fluent-emoji-3d"] / "assets/1f431.webp", png_bytes("orange", 64))
    icons = folders["fluentui-emoji"] / "icons"
    for slug in ("thumbs-up-default", "thumbs-up-light", "thumbs-up-medium", "cat-face", "hugging-face",
                 "no-such-emoji"):
        write(icons / "modern" / f"{slug}.svg", SVG.format(colour="teal"))
    write(icons / "flat" / "cat-face.svg", SVG.format(colour="navy"))
    write(icons / "high-contrast" / "cat-face.svg", SVG.format(colour="black"))
    for name, folder in (("emoji-datasource-google", "google"), ("emoji-datasource-twitter", "twitter")):
        write(folders[name] / "emoji.json", json.dumps(REFERENCE))
        for image in ("1f44d.png", "1f44d-1f3fd.png", "1f917.png"):
            write(folders[name] / "img" / folder / "64" / image, png_bytes("green", 64))
    return folders


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Fake packages served by the fetcher; Noto's font reader returns one cat glyph."""
    monkeypatch.setenv("LDM_DATA_DIR", str(tmp_path / "data"))
    folders = fake_packages(tmp_path / "packages")

    def npm(self, spec: str, keep=("package/",)) -> Path:
        name = spec.rsplit("@", 1)[0]
        self.seconds[spec] = 0.0
        return folders[name]

    monkeypatch.setattr(prepare.Fetcher, "npm", npm)
    monkeypatch.setattr(prepare.Fetcher, "noto_font", lambda self: tmp_path / "NotoColorEmoji.ttf")
    monkeypatch.setattr(prepare, "read_noto", lambda font, concepts: (
        {("1F431", ""): Picture("png", data=png_bytes("purple", 136))}, prepare.Counter({"modifier-only glyph": 1})))
    return folders


def test_prepare_joins_the_styles_by_sequence(packages):
    with pytest.warns(UserWarning, match="twemoji: 1 pictures failed to render"):
        assert prepare.prepare_emoji_styles(processes=1)
    folder = prepare.dataset_dir()
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    placed = {(r["style"], r["concept"], r["tone"]) for r in records}
    assert ("noto", "1F431", "") in placed and ("noto", "1F44D", "") in placed  # font glyph + 64 px fallback
    assert ("twemoji", "1F44D", "1F3FB") in placed and ("twemoji", "1F44D", "1F3FD") in placed  # the fallback
    assert ("twemoji", "1F917", "") not in placed  # its SVG is broken: skipped, not replaced
    assert ("fluent-color", "1F917", "") in placed  # "hugging-face": the alias table
    assert ("fluent-color", "1F44D", "1F3FB") in placed and ("fluent-color", "1F44D", "") in placed
    assert not any(c == "1F3FB" for _, c, _ in placed)  # the Component category is no concept
    manifest = cache.read_manifest(folder)
    twemoji = manifest["styles"]["twemoji"]
    assert twemoji["skipped"]["file name is not a codepoint sequence"] == 1
    assert twemoji["skipped"]["not in the reference list"] == 1
    assert sum(v for k, v in twemoji["skipped"].items() if k.startswith("render failed")) == 1
    assert manifest["styles"]["fluent-color"]["skipped"]["slug that names no concept"] == 1
    assert manifest["styles"]["noto"]["licence"] and "CC-BY" in twemoji["licence"] and twemoji["attribution"]
    assert manifest["concepts"] == 3 and manifest["pictures"] == len(records)
    for r in records:
        with Image.open(folder / r["file"]) as image:
            assert image.size == (128, 128) and image.mode == "RGB"
    sources = {(r["style"], r["concept"], r["tone"]): r["source"] for r in records}
    assert "64 px" in sources[("noto", "1F44D", "")] and "64 px" not in sources[("noto", "1F431", "")]
    concepts = json.loads((folder / "concepts.json").read_text())
    assert concepts["1F917"]["name"] == "smiling face with open hands" and "hug" in concepts["1F917"]["keywords"]
    dataset = build_dataset("emoji-styles", "all", 32, caption_mode="name")
    assert len(dataset) == len(records) and dataset[0]["image"].shape == (3, 32, 32)


def test_an_unfetchable_package_names_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no npm on the PATH
    assert ldm_cli.main(["data", "prepare", "emoji-styles"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "npm pack emoji-datasource@" in err[0]
    assert not prepare.dataset_dir().exists()  # nothing half-made is left as if prepared


def test_prepare_styles_opt_in_and_refusals(packages, capsys):
    assert ldm_cli.main(["data", "prepare", "mnist", "--styles", "noto"]) == 2
    assert "--styles chooses the styles of emoji-styles" in capsys.readouterr().err
    assert ldm_cli.main(["data", "prepare", "emoji-styles", "--styles", "noto", "crayon"]) == 2
    assert "unknown emoji style 'crayon'" in capsys.readouterr().err
    assert ldm_cli.main(["data", "prepare", "emoji-styles", "--styles", "noto", "fluent-3d"]) == 0
    assert sorted(cache.read_manifest(prepare.dataset_dir())["styles"]) == ["fluent-3d", "noto"]
    capsys.readouterr()
    assert ldm_cli.main(["data", "prepare", "emoji-styles", "--styles", "noto"]) == 2
    assert "add --force" in capsys.readouterr().err


def test_opting_in_to_openmoji_leaves_the_splits_as_they_were():
    six = {f"C{i}": {"noto", "twemoji", "fluent-3d", "fluent-flat"} for i in range(3000)}
    seven = {c: s | {"openmoji"} for c, s in six.items()}
    assert composition_pairs(six) == composition_pairs(seven)
    assert all(style != "openmoji" for _, style in composition_pairs(seven))


@pytest.mark.parametrize("module, message", [("resvg_py", "pip install 'resvg-py>=0.5'"),
                                             ("fontTools", "pip install 'fonttools>=4.40'")])
def test_a_missing_renderer_or_font_tool_is_one_line(packages, monkeypatch, capsys, module, message):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to import
    assert ldm_cli.main(["data", "prepare", "emoji-styles"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
