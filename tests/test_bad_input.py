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
    # every value checked against its declared range before any work (Config.ranges, the loaders' options)
    "set-temperature-zero": (lambda t: ["train", "simclr", "--data", TINY, "--set", "temperature=0"],
                             ["--set temperature=0: must be > 0"]),
    "set-temperature-negative-moco": (lambda t: ["train", "moco", "--data", TINY, "--set", "temperature=-0.2"],
                                      ["temperature", "> 0"]),
    "set-probability-above-one": (lambda t: ["train", "simclr", "--data", TINY, "--set", "flip_p=1.5"], ["flip_p", "[0, 1]"]),
    "set-size-zero": (lambda t: ["train", "simclr", "--data", TINY, "--set", "proj_dim=0"], ["proj_dim", ">= 1"]),
    "set-mask-ratio-one": (lambda t: ["train", "mae", "--data", TINY, "--set", "mask_ratio=1"], ["mask_ratio", "(0, 1)"]),
    "set-center-momentum-one": (lambda t: ["train", "dino", "--data", TINY, "--set", "center_momentum=1"],
                                ["center_momentum", "[0, 1)"]),
    "set-hole-fraction-zero": (lambda t: ["train", "inpainting", "--data", TINY, "--set", "hole_fraction=0"],
                               ["hole_fraction", "(0, 1)"]),
    "set-choice-unknown": (lambda t: ["train", "colorization", "--data", TINY, "--set", "loss=hinge"],
                           ["loss=hinge", "one of classification, regression"]),
    "set-jigsaw-grid-four": (lambda t: ["train", "jigsaw", "--data", TINY, "--set", "grid=4"], ["grid=4", "one of 2, 3"]),
    "set-train-momentum-one": (lambda t: ["train", "simclr", "--data", TINY, "--set", "momentum=1"], ["momentum", "[0, 1)"]),
    "set-optimizer-unknown": (lambda t: ["train", "simclr", "--data", TINY, "--set", "optimizer=adam"], ["optimizer=adam", "adamw"]),
    "set-in-config-file-out-of-range": (lambda t: (t / "c.json").write_text(json.dumps({"gray_p": 2}))
                                        and ["train", "simclr", "--data", TINY, "--config", str(t / "c.json")], ["gray_p", "[0, 1]"]),
    "lr-nan": (lambda t: ["train", "simclr", "--data", TINY, "--lr", "nan"], ["--lr nan", "> 0"]),
    "epochs-infinite": (lambda t: ["train", "simclr", "--data", TINY, "--epochs", "inf"], ["--epochs inf", "> 0"]),
    "negative-seed": (lambda t: ["train", "simclr", "--data", TINY, "--seed", "-1"], ["--seed -1", ">= 0"]),
    "negative-time-limit": (lambda t: ["train", "simclr", "--data", TINY, "--time-limit", "-5"], ["--time-limit", ">= 0"]),
    "finetune-setting-out-of-range": (lambda t: ["eval", "finetune", "--baseline", "supervised", "--data", TINY,
                                                 "--set", "label_smoothing=1"], ["label_smoothing", "[0, 1)"]),
    "fashion-mnist-n-negative": (lambda t: ["train", "simclr", "--data", "fashion-mnist:n=-3"],
                                 ["fashion-mnist: option n=-3", "[1, 60000]"]),
    "fashion-mnist-n-not-a-number": (lambda t: ["train", "simclr", "--data", "fashion-mnist:n=lots"], ["n='lots'", "[1, 60000]"]),
    "fashion-mnist-n-above-its-size": (lambda t: ["train", "simclr", "--data", "fashion-mnist:n=70000"], ["n=70000", "[1, 60000]"]),
    "shapes-n-zero": (lambda t: ["train", "simclr", "--data", "shapes:n=0"], ["option n=0", "at least 1"]),
    "shapes-size-too-small": (lambda t: ["train", "simclr", "--data", "shapes:size=8"], ["option size=8", "at least 16"]),
    "photos-n-negative": (lambda t: ["train", "simclr", "--data", "photos:n=-1"], ["option n='-1'", ">= 1"]),
    "folder-test-fraction-one": (lambda t: ["train", "simclr", "--data", f"{good_images(t / 'imgs')}:test_fraction=1"],
                                 ["test_fraction='1'", "[0, 1)"]),
    "folder-size-zero": (lambda t: ["train", "simclr", "--data", f"{good_images(t / 'imgs')}:size=0"], ["size='0'", "[1, 4096]"]),
    "folder-seed-negative": (lambda t: ["train", "simclr", "--data", f"{good_images(t / 'imgs')}:seed=-2"], ["seed='-2'", ">= 0"]),
    "captions-test-fraction-negative": (lambda t: (good_images(t / "i", 2), (t / "p.csv").write_text("image,caption\ni/good0.png,x\n"))
                                        and ["train", "clip", "--data", f"{t / 'p.csv'}:test_fraction=-0.5"],
                                        ["test_fraction='-0.5'", "[0, 1)"]),
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


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """One finished run for the output-path cases (which must fail before touching it)."""
    base = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFSUP_CACHE", str(base / "cache"))
        assert main(["train", "simclr", "--data", TINY, "--out", str(base / "done"), *TRAIN]) == 0
    return base / "done"


def a_file(t):
    (t / "file").write_text("a file, not a folder")
    return t / "file"


# Output paths checked as writable before any work: (argv from (tmp_path, run), words of the one line).
# /proc takes no new files (not even as root); a path under a file cannot be made.
OUT_ERRORS = {
    "train-out-unwritable": (lambda t, r: ["train", "simclr", "--data", TINY, "--out", "/proc/x", *TRAIN],
                             ["--out /proc/x", "not writable"]),
    "train-out-under-a-file": (lambda t, r: ["train", "simclr", "--data", TINY, "--out", str(a_file(t) / "run"), *TRAIN],
                               ["--out", "file", "is not a folder"]),
    "export-out-unwritable": (lambda t, r: ["export", str(r), "--out", "/proc/x"], ["--out /proc/x", "not writable"]),
    "export-out-is-a-file": (lambda t, r: ["export", str(r), "--out", str(a_file(t))], ["--out", "is a file, not a folder"]),
    "embed-out-unwritable": (lambda t, r: ["embed", str(r), "--out", "/proc/x/e.npy"], ["--out /proc/x/e.npy", "not writable"]),
    "embed-out-is-a-folder": (lambda t, r: ["embed", str(r), "--out", str(t)], []),   # a folder named like no .npy: suffix error
    "eval-out-unwritable": (lambda t, r: ["eval", "knn", "--checkpoint", str(r), "--out", "/proc/x/knn.json"],
                            ["--out /proc/x/knn.json", "not writable"]),
    "eval-baseline-out-unwritable": (lambda t, r: ["eval", "linear", "--baseline", "pixels", "--data", TINY, "--out", "/proc/x"],
                                     ["--out /proc/x", "not writable"]),
    "finetune-out-unwritable": (lambda t, r: ["eval", "finetune", "--baseline", "supervised", "--data", TINY,
                                              "--out", "/proc/x.json"], ["--out /proc/x.json", "not writable"]),
    "bench-out-unwritable": (lambda t, r: ["bench", "--methods", "rotation", "--data", TINY, "--out", "/proc/x", "--no-record"],
                             ["--out /proc/x", "not writable"]),
    "bench-record-unwritable": (lambda t, r: ["bench", "--methods", "rotation", "--data", TINY, "--out", str(t / "b"),
                                              "--record", "/proc/x.md"], ["--record /proc/x.md", "not writable"]),
    "report-out-unwritable": (lambda t, r: ["report", str(r), "--out", "/proc/x/report.html"],
                              ["--out /proc/x/report.html", "not writable"]),
    "report-out-is-a-folder": (lambda t, r: ["report", str(r), "--out", str(t)], ["--out", "is a folder, not a file"]),
    "shard-out-unwritable": (lambda t, r: ["data", "shard", TINY, "--out", "/proc/x"], ["--out /proc/x", "not writable"]),
    "demo-out-unwritable": (lambda t, r: ["demo", "--out", "/proc/x", "--minutes", "0.01", "--data", TINY],
                            ["--out /proc/x", "not writable"]),
}


@pytest.mark.parametrize("case", list(OUT_ERRORS))
def test_unwritable_output_is_a_one_line_error_before_any_work(case, tmp_path, capsys, done_run):
    make, words = OUT_ERRORS[case]
    argv = make(tmp_path, done_run)
    before = sorted(p.name for p in done_run.rglob("*"))
    capsys.readouterr()
    code, err = _run(capsys, argv)
    assert code == 2, err
    assert err.startswith("selfsup: error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words or ["--out"]:
        assert w in err, (w, err)
    assert sorted(p.name for p in done_run.rglob("*")) == before        # the run folder untouched
    assert not list(tmp_path.rglob(".selfsup-probe-*"))                # no probe file left behind
