"""The bad-input suite, through the command line as a user meets it: each kind of bad input gets a
one-line ``selfsup: error: ...`` naming the file or option (exit status 2), or a skip with a count
and the file named, and training goes on. One test id per case."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main

TINY = "shapes:n=48,n_test=16,size=16"
TRAIN = ["--epochs", "1", "--batch-size", "16", "--no-progress"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))


def good_images(folder, n=20):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"good{i}.png")
    return folder


def png_bytes(mode="RGB", size=(12, 12), **kw):
    buf = io.BytesIO()
    Image.new(mode, size, **kw).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (12, 12)).save(buf, format="JPEG")
    return buf.getvalue()


def bomb(path):
    Image.new("L", (13000, 13000)).save(path, format="PNG", optimize=False)   # 169 MP > 2 x Pillow's limit


# Each skipped-file case: (file name, how to make it, reason shown in the warning)
SKIPPED = {
    "zero-byte-jpeg": ("bad.jpg", lambda p: p.write_bytes(b""), "empty file"),
    "truncated-png": ("bad.png", lambda p: p.write_bytes(png_bytes(color=(9, 9, 9))[:40]), ""),
    "truncated-jpeg": ("bad.jpg", lambda p: p.write_bytes(jpeg_bytes()[:100]), ""),
    "corrupt-jpeg": ("bad.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4), ""),
    "text-file-named-jpg": ("bad.jpg", lambda p: p.write_text("hello, I am text"), "not an image"),
    "directory-named-png": ("bad.png", lambda p: p.mkdir(), "is a directory"),
    "decompression-bomb": ("bad.png", bomb, "decompression bomb"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SKIPPED))
def test_unreadable_image_is_skipped_with_a_count_and_training_goes_on(case, tmp_path, capsys, caplog):
    name, make, reason = SKIPPED[case]
    data = good_images(tmp_path / "imgs")
    make(data / name)
    with caplog.at_level("WARNING", logger="selfsup"):
        code = main(["train", "simclr", "--data", f"{data}:size=12,test_fraction=0", "--out", str(tmp_path / "run"), *TRAIN])
    assert code == 0, capsys.readouterr().err
    assert "skipped 1 unreadable image" in caplog.text and name in caplog.text and reason in caplog.text
    assert (tmp_path / "run" / "backbone.safetensors").is_file()


CONVERTED = {   # odd but valid images: converted, not skipped
    "cmyk-jpeg": lambda p: Image.new("CMYK", (12, 12), (0, 200, 200, 0)).save(p.with_suffix(".jpg")),
    "16-bit-png": lambda p: Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)).save(p),
    "palette-png": lambda p: Image.new("P", (12, 12), 3).save(p),
    "rgba-png": lambda p: Image.new("RGBA", (12, 12), (255, 0, 0, 128)).save(p),
    "1x1-image": lambda p: Image.new("RGB", (1, 1), (1, 2, 3)).save(p),
}


@pytest.mark.parametrize("case", list(CONVERTED))
def test_odd_but_valid_images_are_converted_not_skipped(case, tmp_path, capsys, caplog):
    data = good_images(tmp_path / "imgs", 3)
    CONVERTED[case](data / "odd.png")
    with caplog.at_level("WARNING", logger="selfsup"):
        assert main(["data", "info", f"{data}:size=12,test_fraction=0"]) == 0
    assert "skipped" not in caplog.text
    assert json.loads(capsys.readouterr().out)["train"]["images"] == 4


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _setup_run(tmp_path):
    run = tmp_path / "done"
    assert main(["train", "simclr", "--data", TINY, "--out", str(run), *TRAIN]) == 0
    return run


def _truncated_run(tmp_path):
    run = _setup_run(tmp_path)
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    return run


# Each error case: (make files -> argv, words the one-line message must contain)
ERRORS = {
    "empty-folder": (lambda t: (t / "empty").mkdir() or ["train", "simclr", "--data", str(t / "empty")], ["empty", "no images"]),
    "folder-without-images": (lambda t: ((t / "txt").mkdir(), (t / "txt" / "a.txt").write_text("x"))
                              and ["train", "simclr", "--data", str(t / "txt")], ["txt", "no images"]),
    "all-images-unreadable": (lambda t: ((t / "bad").mkdir(), (t / "bad" / "a.png").write_bytes(b"xx"))
                              and ["train", "simclr", "--data", str(t / "bad")], ["a.png", "none of its"]),
    "missing-data-path": (lambda t: ["train", "simclr", "--data", str(t / "nowhere")], ["nowhere", "no such"]),
    "csv-missing-columns": (lambda t: (good_images(t / "i", 1), (t / "p.csv").write_text("path,text\ni/good0.png,x\n"))
                            and ["train", "clip", "--data", str(t / "p.csv")], ["p.csv", "no column 'image'"]),
    "csv-no-usable-row": (lambda t: (t / "p.csv").write_text("image,caption\nmissing.png,a cat\n")
                          and ["train", "clip", "--data", str(t / "p.csv")], ["p.csv", "none of its 1 rows", "missing.png"]),
    "unknown-method": (lambda t: ["train", "nosuch", "--data", TINY], ["nosuch"]),
    "unknown-backbone": (lambda t: ["train", "simclr", "--data", TINY, "--backbone", "resnet999"], ["resnet999"]),
    "unknown-dataset": (lambda t: ["train", "simclr", "--data", "imagenet-99k"], ["imagenet-99k"]),
    "unknown-dataset-option": (lambda t: ["train", "simclr", "--data", "shapes:nn=3"], ["nn"]),
    "zero-batch-size": (lambda t: ["train", "simclr", "--data", TINY, "--batch-size", "0"], ["batch-size"]),
    "negative-epochs": (lambda t: ["train", "simclr", "--data", TINY, "--epochs", "-1"], ["epochs"]),
    "zero-learning-rate": (lambda t: ["train", "simclr", "--data", TINY, "--lr", "0"], ["lr"]),
    "unknown-setting": (lambda t: ["train", "simclr", "--data", TINY, "--set", "temprature=0.2"], ["temprature"]),
    "setting-of-wrong-type": (lambda t: ["train", "simclr", "--data", TINY, "--set", "temperature=warm"], ["temperature"]),
    "label-fraction-zero": (lambda t: ["eval", "knn", "--baseline", "pixels", "--data", TINY, "--label-fraction", "0"],
                            ["label-fraction"]),
    "label-fraction-above-one": (lambda t: ["eval", "linear", "--baseline", "pixels", "--data", TINY, "--label-fraction", "1.5"],
                                 ["label-fraction"]),
    "missing-checkpoint": (lambda t: ["eval", "knn", "--checkpoint", str(t / "norun"), "--data", TINY], ["norun"]),
    "truncated-checkpoint": (lambda t: ["train", "simclr", "--out", str(_truncated_run(t)), "--resume"],
                             ["checkpoint.pt", "not a readable"]),
    "checkpoint-of-another-method": (lambda t: ["train", "rotation", "--out", str(_setup_run(t)), "--resume"],
                                     ["checkpoint.pt", "'simclr'", "'rotation'"]),
    "resume-without-checkpoint": (lambda t: (t / "fresh").mkdir() or ["train", "simclr", "--out", str(t / "fresh"), "--resume"],
                                  ["fresh", "checkpoint"]),
    "config-file-unknown-key": (lambda t: (t / "c.json").write_text(json.dumps({"temperature": 0.2, "colour": 1}))
                                and ["train", "simclr", "--data", TINY, "--config", str(t / "c.json")], ["colour"]),
    "config-file-missing": (lambda t: ["train", "simclr", "--data", TINY, "--config", str(t / "nope.yaml")], ["nope.yaml"]),
    "run-folder-exists": (lambda t: ["train", "simclr", "--data", TINY, "--out", str(_setup_run(t)), *TRAIN], ["done", "exists"]),
    "mae-with-a-resnet": (lambda t: ["train", "mae", "--data", TINY, "--backbone", "resnet18_quarter"], ["ViT"]),
    "clip-without-captions": (lambda t: ["train", "clip", "--data", str(good_images(t / "imgs"))], ["caption"]),
    "zeroshot-of-a-non-clip-run": (lambda t: ["eval", "zeroshot", "--checkpoint", str(_setup_run(t))], ["text tower"]),
    "finetune-with-pixels": (lambda t: ["eval", "finetune", "--baseline", "pixels", "--data", TINY], ["supervised"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_a_one_line_error_naming_it(case, tmp_path, capsys):
    make, words = ERRORS[case]
    argv = make(tmp_path)
    capsys.readouterr()
    code, err = _run(capsys, argv)
    assert code == 2, err
    assert err.startswith("selfsup: error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_grey_data_for_colorization_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "grey"
    folder.mkdir()
    for i in range(8):
        Image.new("L", (12, 12), 10 * i).save(folder / f"{i}.png")
    code, err = _run(capsys, ["train", "colorization", "--data", str(folder), *TRAIN])
    assert code == 2 and "colour" in err and "\n" not in err


@pytest.mark.slow
def test_an_interrupted_run_is_not_overwritten_without_asking(tmp_path, capsys):
    run = _setup_run(tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    code, err = _run(capsys, ["train", "simclr", "--data", TINY, "--out", str(run), *TRAIN])
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (run / "checkpoint.pt").read_bytes() == before          # no lost work
