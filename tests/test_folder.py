"""Image folders (selfsup.data.folder) and the scikit-image photos dataset (selfsup.data.photos)."""
from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import folder as folder_mod
from selfsup.data.folder import load_folder
from selfsup.errors import SelfSupError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def rgb(path, color=(200, 30, 10), size=(8, 8), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def grey(path, value=100, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def noisy_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def count_decodes(monkeypatch) -> list:
    calls = []
    real = folder_mod.decode_image

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(folder_mod, "decode_image", counting)
    return calls


def load(path, strict=False, **opts):
    opts = {"test_fraction": "0", **{k: str(v) for k, v in opts.items()}}
    return load_folder(path, opts, strict=strict)


# ---------------------------------------------------------------------------------------------
# unreadable files: skipped with one warning, or an error in strict mode


def _write(name, data):
    def make(root, monkeypatch):
        (root / name).write_bytes(data)
        return name
    return make


def _mkdir(root, monkeypatch):
    (root / "x.png").mkdir()
    rgb(root / "x.png" / "inner.png")  # images inside a directory named like one are not read
    return "x.png"


def _bomb(side):
    def make(root, monkeypatch):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # the good 8x8 images have 64 pixels
        rgb(root / "bomb.png", size=(side, side))
        return "bomb.png"
    return make


BAD = {
    "zero-byte": (_write("bad.jpg", b""), "empty file"),
    "truncated-jpeg": (_write("bad.jpg", noisy_bytes("JPEG")[:600]), "truncated"),
    "truncated-png": (_write("bad.png", noisy_bytes("PNG")[:600]), "truncated"),
    "corrupt-bytes": (_write("bad.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "not an image"),
    "text-named-jpg": (_write("bad.jpg", b"name,value\nfoo,1\n"), "not an image"),
    "directory-named-png": (_mkdir, "is a directory"),
    "bomb-warning-range": (_bomb(16), "decompression bomb"),  # 256 px: Pillow only warns
    "bomb-error-range": (_bomb(32), "decompression bomb"),  # 1024 px > 2x limit: Pillow raises
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_file_skipped_with_one_warning(case, tmp_path, monkeypatch, caplog):
    make, reason = BAD[case]
    root = tmp_path / "data"
    rgb(root / "good1.png")
    rgb(root / "good2.jpg")
    bad = make(root, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = load(root, size=8)
    assert len(ds.train) == 2 and ds.test is None
    assert ds.info["skipped"] == 1
    records = [r for r in caplog.records if r.name == "selfsup"]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert "skipped 1 unreadable image" in msg and f"{bad}: {reason}" in msg


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_file_strict_raises_naming_it(case, tmp_path, monkeypatch):
    make, reason = BAD[case]
    root = tmp_path / "data"
    rgb(root / "good.png")
    bad = make(root, monkeypatch)
    with pytest.raises(SelfSupError, match=rf"{bad}: {reason}"):
        load(root, strict=True)


def test_warning_counts_and_names_first_few(tmp_path, caplog):
    root = tmp_path / "data"
    rgb(root / "ok.png")
    for i in range(7):
        (root / f"bad{i}.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = load(root)
    assert len(ds.train) == 1 and ds.info["skipped"] == 7
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "selfsup"]
    assert "skipped 7 unreadable images" in msg
    assert "bad0.jpg: empty file" in msg and "bad4.jpg" in msg and "bad6.jpg" not in msg and "..." in msg


def test_strict_on_a_cached_folder_still_raises(tmp_path):
    root = tmp_path / "data"
    rgb(root / "ok.png")
    (root / "bad.png").write_bytes(b"")
    load(root)  # fills the cache
    with pytest.raises(SelfSupError, match="bad.png: empty file"):
        load(root, strict=True)


def test_all_files_bad(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    with pytest.raises(SelfSupError, match=r"none of its 1 image files.*a\.png: empty file"):
        load(root)


@pytest.mark.parametrize("setup", ["empty", "only-txt", "missing", "only-hidden"])
def test_no_images_is_an_error_naming_the_folder(setup, tmp_path):
    root = tmp_path / "data"
    if setup != "missing":
        root.mkdir()
    if setup == "only-txt":
        (root / "notes.txt").write_text("hello")
    if setup == "only-hidden":
        rgb(root / ".hidden.png")
    with pytest.raises(SelfSupError, match=str(root)):
        load(root)


def test_non_image_and_hidden_files_ignored_silently(tmp_path, caplog):
    root = tmp_path / "data"
    rgb(root / "a.png")
    (root / "labels.csv").write_text("a,1\n")
    (root / "README.txt").write_text("x")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / ".broken.png").write_bytes(b"")
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "t.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = load(root)
    assert len(ds.train) == 1 and ds.info["skipped"] == 0
    assert not [r for r in caplog.records if r.name == "selfsup"]


# ---------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("opts, word", [({"bogus": "1"}, "bogus"), ({"size": "big"}, "size"), ({"size": "0"}, "size"),
                                         ({"test_fraction": "1.5"}, "test_fraction"), ({"seed": "x"}, "seed")])
def test_bad_options(opts, word, tmp_path):
    rgb(tmp_path / "data" / "a.png")
    with pytest.raises(SelfSupError, match=word):
        load_folder(tmp_path / "data", opts)


# ---------------------------------------------------------------------------------------------
# decoding and conversion


def decode_one(tmp_path, write, size=8):
    root = tmp_path / "one"
    root.mkdir()
    write(root)
    ds = load(root, size=size)
    assert len(ds.train) == 1
    return ds.train.images[0]  # (C, size, size)


def test_sixteen_bit_grey_scaled_not_clipped(tmp_path):
    values = np.array([0, 257, 1000, 32896, 65535], dtype=np.uint16)
    arr = np.tile(values, (5, 1))  # (5, 5): one value per column
    img = decode_one(tmp_path, lambda r: Image.fromarray(arr).save(r / "g16.png"), size=5)
    assert img.shape == (1, 5, 5)
    assert img[0, 0].tolist() == [0, 1, 4, 128, 255]


def test_cmyk_jpeg_to_rgb(tmp_path):
    img = decode_one(tmp_path, lambda r: Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(r / "c.jpg"))
    assert img.shape == (3, 8, 8)
    assert (img.float().mean(dim=(1, 2)) - torch.tensor([0.0, 255.0, 255.0])).abs().max() < 8  # cyan


def test_palette_png(tmp_path):
    def write(r):
        im = Image.new("P", (8, 8), 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        im.save(r / "p.png")
    img = decode_one(tmp_path, write)
    assert img.shape == (3, 8, 8) and img[:, 0, 0].tolist() == [10, 200, 30]


def test_palette_transparency_on_white(tmp_path):
    def write(r):
        im = Image.new("P", (8, 8), 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        im.save(r / "p.png", transparency=1)
    img = decode_one(tmp_path, write)
    assert img[:, 0, 0].tolist() == [255, 255, 255]


def test_rgba_composited_on_white(tmp_path):
    def write(r):
        arr = np.zeros((8, 8, 4), np.uint8)
        arr[..., 0] = 255
        arr[:, :3, 3] = 0      # transparent -> white
        arr[:, 3:5, 3] = 128   # half -> pink
        arr[:, 5:, 3] = 255    # opaque -> red
        Image.fromarray(arr, "RGBA").save(r / "a.png")
    img = decode_one(tmp_path, write)
    assert img.shape == (3, 8, 8)
    assert img[:, 0, 0].tolist() == [255, 255, 255]
    assert img[:, 0, 3].tolist() == [255, 127, 127]
    assert img[:, 0, 7].tolist() == [255, 0, 0]


def test_la_is_grey_composited_on_white(tmp_path):
    def write(r):
        arr = np.zeros((8, 8, 2), np.uint8)
        arr[:, 4:, 1] = 255  # left half transparent black, right half opaque black
        Image.fromarray(arr, "LA").save(r / "la.png")
    img = decode_one(tmp_path, write)
    assert img.shape == (1, 8, 8)
    assert img[0, 0, 0] == 255 and img[0, 0, 7] == 0


def test_one_by_one_image(tmp_path):
    img = decode_one(tmp_path, lambda r: rgb(r / "dot.png", color=(1, 2, 3), size=(1, 1)), size=4)
    assert img.shape == (3, 4, 4) and (img == torch.tensor([1, 2, 3]).view(3, 1, 1)).all()


def test_exif_orientation_applied(tmp_path):
    def write(r):
        arr = np.zeros((8, 16, 3), np.uint8)  # stored 16 wide, 8 high: left half red, right half blue
        arr[:, :8, 0] = 255
        arr[:, 8:, 2] = 255
        exif = Image.Exif()
        exif[0x0112] = 6  # display rotated 90 degrees clockwise: left half becomes the top
        Image.fromarray(arr).save(r / "rot.png", exif=exif)
    img = decode_one(tmp_path, write, size=8)
    assert img[:, 0, 4].tolist() == [255, 0, 0]  # top row red
    assert img[:, 7, 4].tolist() == [0, 0, 255]  # bottom row blue


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    def write(r):
        arr = np.zeros((8, 24, 3), np.uint8)
        arr[:, 8:16] = 255  # only the middle third is white
        Image.fromarray(arr).save(r / "wide.png")
    img = decode_one(tmp_path, write, size=4)
    assert img.shape == (3, 4, 4) and (img[:, :, 1:3] == 255).all()
    assert img.float().mean() > 200  # squashing the whole picture would give 85


def test_all_grey_is_one_channel_mixed_is_three(tmp_path):
    grey(tmp_path / "g" / "a.png", 10)
    grey(tmp_path / "g" / "b.png", 20)
    ds = load(tmp_path / "g")
    assert ds.train.images.shape == (2, 1, 32, 32)
    grey(tmp_path / "m" / "a.png", 10)
    rgb(tmp_path / "m" / "b.png", (1, 2, 3))
    ds = load(tmp_path / "m")
    assert ds.train.images.shape == (2, 3, 32, 32)
    assert ds.train.images[0, :, 0, 0].tolist() == [10, 10, 10]  # grey replicated
    assert ds.train.images[1, :, 0, 0].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# layouts and splits


def test_class_subfolders_give_labels(tmp_path):
    root = tmp_path / "data"
    for name in ("b1.png", "b2.png"):
        rgb(root / "bird" / name)
    for name in ("c1.png", "c2.png", "c3.png"):
        rgb(root / "cat" / name)
    rgb(root / "cat" / "nested" / "c4.png")  # deeper files belong to their class folder
    (root / "empty_class").mkdir()  # no images: not a class
    ds = load(root)
    assert ds.train.classes == ["bird", "cat"]
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.info["layout"] == "classes" and ds.name == str(root)


def test_loose_files_next_to_class_folders_are_reported(tmp_path, caplog):
    root = tmp_path / "data"
    rgb(root / "a" / "1.png")
    rgb(root / "loose.png")
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = load(root)
    assert len(ds.train) == 1 and "loose.png: not in a class sub-folder" in caplog.text


def test_flat_folder_is_unlabeled(tmp_path):
    root = tmp_path / "data"
    for i in range(5):
        rgb(root / f"{i}.png")
    ds = load_folder(root, {})
    assert ds.train.labels is None and ds.train.classes is None
    assert len(ds.train) == 4 and len(ds.test) == 1  # default test_fraction 0.2


def test_train_test_subfolders_give_splits(tmp_path):
    root = tmp_path / "data"
    rgb(root / "train" / "a" / "1.png")
    rgb(root / "train" / "b" / "1.png")
    rgb(root / "train" / "b" / "2.png")
    rgb(root / "test" / "a" / "1.png")
    rgb(root / "test" / "c" / "1.png")  # a class only in test: classes are the union
    ds = load_folder(root, {"test_fraction": "0.5"})  # ignored: the folders fix the split
    assert ds.train.classes == ds.test.classes == ["a", "b", "c"]
    assert ds.train.labels.tolist() == [0, 1, 1]
    assert ds.test.labels.tolist() == [0, 2]
    assert ds.info["split"] == "folders"


def test_train_test_flat(tmp_path):
    root = tmp_path / "data"
    rgb(root / "train" / "1.png")
    rgb(root / "train" / "2.png")
    rgb(root / "test" / "1.png")
    ds = load(root)
    assert len(ds.train) == 2 and len(ds.test) == 1 and ds.train.labels is None


def test_train_with_classes_test_without_is_an_error(tmp_path):
    root = tmp_path / "data"
    rgb(root / "train" / "a" / "1.png")
    rgb(root / "test" / "1.png")
    with pytest.raises(SelfSupError, match="class sub-folders"):
        load(root)


def test_stratified_split(tmp_path):
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(10):
            grey(root / c / f"{i}.png", 10 * i)
    ds = load_folder(root, {"test_fraction": "0.2", "seed": "1", "size": "4"})
    assert len(ds.train) == 16 and len(ds.test) == 4
    assert ds.train.labels.bincount().tolist() == [8, 8] and ds.test.labels.bincount().tolist() == [2, 2]
    again = load_folder(root, {"test_fraction": "0.2", "seed": "1", "size": "4"})
    assert torch.equal(again.test.images, ds.test.images)
    other = load_folder(root, {"test_fraction": "0.2", "seed": "2", "size": "4"})
    assert not torch.equal(other.test.images, ds.test.images)
    assert load_folder(root, {"test_fraction": "0", "size": "4"}).test is None


# ---------------------------------------------------------------------------------------------
# the cache


def test_cache_hit_and_invalidation(tmp_path, monkeypatch, cache):
    root = tmp_path / "data"
    rgb(root / "a" / "1.png", (1, 1, 1))
    rgb(root / "b" / "1.png", (2, 2, 2))
    before = sorted(p.name for p in root.rglob("*"))
    calls = count_decodes(monkeypatch)
    first = load(root)
    assert len(calls) == 2
    assert list((cache / "folders").glob("*.safetensors")) and list((cache / "folders").glob("*.json"))
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written into the data folder

    second = load(root)
    assert len(calls) == 2  # read from the cache, not decoded
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.train.labels, second.train.labels) and second.train.classes == ["a", "b"]
    load_folder(root, {"seed": "5"})  # a different split of the same decoding
    assert len(calls) == 2

    rgb(root / "b" / "2.png", (3, 3, 3))  # a file added
    assert len(load(root).train) == 3 and len(calls) == 5

    rgb(root / "a" / "1.png", (9, 9, 9), size=(9, 9))  # a file modified
    os.utime(root / "a" / "1.png", ns=(1, 1))
    changed = load(root)
    assert len(calls) == 8 and changed.train.images[0, :, 0, 0].tolist() == [9, 9, 9]
    assert len(list((cache / "folders").glob("*.safetensors"))) == 1  # stale entries removed


def test_size_option_resizes(tmp_path):
    rgb(tmp_path / "data" / "a.png", size=(20, 10))
    assert load(tmp_path / "data", size=6).train.images.shape == (1, 3, 6, 6)


# ---------------------------------------------------------------------------------------------
# photos


def test_photos():
    pytest.importorskip("skimage")
    import selfsup.data.photos  # noqa: F401  (registers "photos")
    from selfsup.data.datasets import DATASETS

    ds = DATASETS["photos"](options={"n": "64", "n_test": "16"})
    k = len(ds.train.classes)
    assert k >= 5 and ds.train.classes == ds.test.classes
    assert ds.train.images.shape == (64, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (16, 3, 32, 32)
    assert ds.train.labels.min() >= 0 and ds.train.labels.max() < k
    assert ds.train.labels.bincount(minlength=k).min() >= 64 // k  # balanced
    assert ds.train.images.float().std() > 20  # real pictures, not blank
    again = DATASETS["photos"](options={"n": "64", "n_test": "16"})
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.train.labels, ds.train.labels)
    other = DATASETS["photos"](options={"n": "64", "n_test": "0", "seed": "1", "size": "16"})
    assert other.test is None and other.train.images.shape == (64, 3, 16, 16)
    assert not torch.equal(ds.train.images, ds.test.images[:1].expand(64, -1, -1, -1))
    with pytest.raises(SelfSupError, match="bogus"):
        DATASETS["photos"](options={"bogus": "1"})
