"""Streaming data: WebDataset shards (selfsup.data.shards), streamed folders and the StreamSet reader."""
from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_images
from selfsup.cli import main
from selfsup.data.datasets import DatasetSplits, ImageSet, load_dataset
from selfsup.data.shard_writer import write_shards
from selfsup.data.stream import StreamSet
from selfsup.engine.batches import BatchSource
from selfsup.errors import SelfSupError

ROOT = Path(__file__).resolve().parents[1]


def labelled_set(n=24, channels=3, size=16, seed=0, captions=True) -> ImageSet:
    labels = torch.arange(n) % 3
    return ImageSet(tiny_images(n, channels, size, seed), labels, classes=["a", "b", "c"],
                    captions=[f"picture {i} of class {'abc'[i % 3]}" for i in range(n)] if captions else None)


def png(array: np.ndarray) -> bytes:
    """(H, W, 3) uint8 as an uncompressed PNG, written directly (Pillow's encoder is ~30x slower on noise)."""
    h, w, _ = array.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), array.reshape(h, w * 3)], axis=1).tobytes()  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def rgb_bytes(seed: int, size=8) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# writing and reading back


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_gives_the_same_pixels_labels_and_captions(tmp_path, channels):
    train, test = labelled_set(24, channels), labelled_set(9, channels, seed=1)
    index = write_shards(DatasetSplits("tiny", train, test), tmp_path / "shards")
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["index.json", "test", "train"]
    assert json.loads((tmp_path / "shards" / "index.json").read_text()) == index
    assert index["splits"]["train"] == {"samples": 24, "shards": ["shard-000000.tar"]}
    assert (index["channels"], index["image_size"], index["classes"]) == (channels, 16, ["a", "b", "c"])
    with tarfile.open(tmp_path / "shards" / "train" / "shard-000000.tar") as tar:
        assert tar.getnames()[:3] == ["00000000.cls", "00000000.png", "00000000.txt"]

    ds = load_dataset(str(tmp_path / "shards"))
    assert isinstance(ds.train, StreamSet) and ds.info["split"] == "shards"
    for got, want in ((ds.train, train), (ds.test, test)):
        assert torch.equal(got.images[:], want.images)          # png is lossless
        assert torch.equal(got.labels, want.labels) and got.captions == want.captions
        assert got.classes == ["a", "b", "c"] and got.channels == channels and got.image_size == (16, 16)
    item = ds.train[5]
    assert item["images"].dtype == torch.uint8 and int(item["labels"]) == 2 and item["captions"] == train.captions[5]
    assert ds.fingerprint == load_dataset(str(tmp_path / "shards")).fingerprint


def test_jpg_shard_size_and_count_caps(tmp_path):
    data = labelled_set(30, captions=False)
    index = write_shards(data, tmp_path / "jpg", image_format="jpg", max_count=8)
    assert index["splits"]["train"]["shards"] == [f"shard-{i:06d}.tar" for i in range(4)]   # 8 + 8 + 8 + 6
    back = load_dataset(f"{tmp_path / 'jpg'}:test_fraction=0")
    assert back.test is None and back.train.captions is None and torch.equal(back.train.labels, data.labels)
    assert (back.train.images[:].float() - data.images.float()).abs().mean() < 4     # quality 95, noisy pictures
    small = write_shards(data, tmp_path / "small", shard_mb=2 / 1024)                 # 2 KiB: a few images each
    assert len(small["splits"]["train"]["shards"]) > 3
    assert load_dataset(f"{tmp_path / 'small'}:size=8").train.images[:4].shape == (4, 3, 8, 8)  # size= resizes on read


def test_foreign_shards_without_an_index(tmp_path):
    """Shards from other WebDataset tools: tars at the top, keys with dots and folders, no index.json."""
    write_tar(tmp_path / "ext" / "a.tar", {"x/0001.png": rgb_bytes(0), "x/0001.seg.png": b"mask", "x/0001.cls": b"1",
                                           "x/0002.png": rgb_bytes(1), "x/0002.cls": b"0", "README": b"hi"})
    write_tar(tmp_path / "ext" / "b.tar", {f"{i}.jpeg": _jpeg(i) for i in range(3)} | {f"{i}.cls": b"2" for i in range(3)})
    ds = load_dataset(f"{tmp_path / 'ext'}:test_fraction=0,size=8")
    assert len(ds.train) == 5 and ds.train.labels.tolist() == [1, 0, 2, 2, 2] and ds.train.num_classes == 3
    assert ds.train.classes is None and ds.train.channels == 3
    assert torch.equal(ds.train.images[1].permute(1, 2, 0), torch.from_numpy(np.array(Image.open(io.BytesIO(rgb_bytes(1))))))


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 40 * seed, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# bad samples


def test_bad_samples_skipped_with_a_count_naming_the_first_few(tmp_path, caplog):
    members = {}
    for i in range(10):
        members[f"{i:02d}.png"], members[f"{i:02d}.cls"] = rgb_bytes(i), str(i % 2).encode()
    members |= {"10.png": b"not a png at all", "10.cls": b"0", "11.png": b"", "11.cls": b"1",  # corrupt, empty
                "12.cls": b"0",                                                              # no image
                "13.png": rgb_bytes(13), "13.cls": b"seven"}                                 # bad label
    write_tar(tmp_path / "bad" / "shard.tar", members)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = load_dataset(f"{tmp_path / 'bad'}:test_fraction=0")
    assert len(ds.train) == 10 and ds.info["skipped"] == 4
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 4 of 14 samples" in msg and "shard.tar:10.png: not an image" in msg
    assert "shard.tar:11.png: empty file" in msg and "shard.tar:12: no image" in msg and "is not an integer" in msg
    with pytest.raises(SelfSupError, match=r"shard.tar:10.png: not an image \(strict mode; 4 bad sample"):
        load_dataset(str(tmp_path / "bad"), strict=True)


def test_pixels_that_fail_late_are_replaced_by_the_next_sample(tmp_path, caplog):
    """A good header over truncated pixel data passes the index check and fails when decoded."""
    good = [rgb_bytes(i, size=32) for i in range(3)]
    write_tar(tmp_path / "t" / "s.tar", {"0.png": good[0], "1.png": good[1][: len(good[1]) // 2], "2.png": good[2]})
    ds = load_dataset(f"{tmp_path / 't'}:test_fraction=0,size=32")
    assert len(ds.train) == 3
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        batch = ds.train.images[:]
    assert torch.equal(batch[1], batch[2]) and "s.tar:1.png (truncated)" in caplog.text
    strict = StreamSet(ds.train.files, ds.train.where, ds.train.names, 32, 3, strict=True)
    with pytest.raises(SelfSupError, match="1.png: truncated"):
        strict[1]


def test_caption_shards_skip_empty_captions_and_refuse_a_set_with_none(tmp_path, caplog):
    members = {"0.png": rgb_bytes(0), "0.txt": "  a red  square ".encode(), "1.png": rgb_bytes(1), "1.txt": b"   ",
               "2.png": rgb_bytes(2), "3.png": b"junk", "3.txt": b"a caption"}
    write_tar(tmp_path / "cap" / "s.tar", members)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        ds = load_dataset(f"{tmp_path / 'cap'}:test_fraction=0")
    assert ds.train.captions == ["a red square"] and ds.train.labels is None
    assert "skipped 3 of 4 samples" in caplog.text and "1.png: empty caption" in caplog.text and "2.png: no caption" in caplog.text
    write_tar(tmp_path / "none" / "s.tar", {"0.png": rgb_bytes(0), "0.txt": b"", "1.png": b"x", "1.txt": b"hello"})
    with pytest.raises(SelfSupError, match=r"none of its 2 samples is usable \(first: s.tar:0.png: empty caption\)"):
        load_dataset(str(tmp_path / "none"))


# ---------------------------------------------------------------------------------------------
# streamed folders, the cache, the engine


def test_streamed_folder_matches_the_in_memory_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    (tmp_path / "f" / "cat" / "bad.png").write_bytes(b"oops")
    memory = load_dataset(f"{tmp_path / 'f'}:size=16,seed=3")
    streamed = load_dataset(f"{tmp_path / 'f'}:size=16,seed=3,stream=true")
    assert isinstance(streamed.train, StreamSet) and streamed.train.channels == 1 and streamed.info["skipped"] == 1
    for a, b in ((memory.train, streamed.train), (memory.test, streamed.test)):
        assert torch.equal(a.images, b.images[:]) and torch.equal(a.labels, b.labels) and a.classes == b.classes
    with pytest.raises(SelfSupError, match="option stream='maybe' must be true or false"):
        load_dataset(f"{tmp_path / 'f'}:stream=maybe")


def test_cache_holds_at_most_its_cap_and_serves_repeats(tmp_path):
    write_shards(labelled_set(40, captions=False), tmp_path / "s")      # 40 images of 768 bytes
    data = load_dataset(f"{tmp_path / 's'}:test_fraction=0").train
    small = StreamSet(data.files, data.where, data.names, 16, 3, cache_mb=0)
    small._cap = 10 * 768                                                # ten images
    for i in range(40):
        small[i]
    assert small.cached_bytes == 10 * 768 and sorted(small._cache) == list(range(30, 40))
    decodes = []
    real = small._decode
    small._decode = lambda j: decodes.append(j) or real(j)
    small[35], small[3]
    assert decodes == [3]


def test_data_loader_workers_give_the_in_memory_batches(tmp_path):
    """Through the engine's DataLoader (2 persistent workers, 2 epochs), batches equal the in-memory path's."""
    data = labelled_set(20)
    write_shards(data, tmp_path / "s")
    streamed = load_dataset(f"{tmp_path / 's'}:test_fraction=0").train
    memory, stream = BatchSource(data, 4, seed=1), BatchSource(streamed, 4, seed=1, num_workers=2)
    for epoch in (0, 1):
        for a, b in zip(memory.epoch(epoch), stream.epoch(epoch), strict=True):
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
            assert a["captions"] == b["captions"]


@pytest.mark.slow
def test_train_clip_and_evaluate_through_shards_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["data", "shard", "shapes:n=32,n_test=16,size=16", "--out", str(out), "--shard-mb", "0.01"]) == 0
    assert "to " + str(out) in capsys.readouterr().out
    run = tmp_path / "run"
    code = main(["train", "clip", "--data", str(out), "--epochs", "1", "--batch-size", "16", "--out", str(run),
                 "--no-progress", "--set", "num_workers=2", "--set", "vocab_size=300"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "trained clip for 2 steps" in captured.out and (run / "tokenizer.json").is_file()
    assert main(["eval", "knn", "--baseline", "pixels", "--data", str(out), "--k", "5"]) == 0
    assert "16 test" in capsys.readouterr().out


def test_data_shard_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    cases = [
        (["data", "shard", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "missing: no such dataset or path"),
        (["data", "shard", "shapes:n=8", "--out", str(tmp_path / "full")], "exists and is not empty"),
        (["data", "shard", "shapes:n=8", "--out", str(tmp_path / "full"), "--overwrite"], "refusing to overwrite"),
        (["data", "shard", "shapes:n=8", "--out", str(tmp_path / "o"), "--shard-mb", "0"], "--shard-mb 0.0: must be positive"),
        (["data", "shard", "shapes:n=8,bogus=1", "--out", str(tmp_path / "o")], "bogus"),
    ]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and not (tmp_path / "o").exists()
    # a shard folder is replaced with --overwrite, its shards only
    assert main(["data", "shard", "shapes:n=8,n_test=0", "--out", str(tmp_path / "o")]) == 0
    (tmp_path / "o" / "keep.txt").write_text("x")
    assert main(["data", "shard", "shapes:n=12,n_test=0", "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert len(load_dataset(f"{tmp_path / 'o'}:test_fraction=0").train) == 12 and (tmp_path / "o" / "keep.txt").exists()


# ---------------------------------------------------------------------------------------------
# memory


MEMORY_SCRIPT = """
import json, sys
from selfsup.data.datasets import load_dataset

def kib(field):  # VmHWM: this process's peak resident set since it started (exec), unlike ru_maxrss, inherited at fork
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

data = load_dataset(sys.argv[1] + f":cache_mb={sys.argv[2]},test_fraction=0,size=128").train
data[0]
base = kib("VmRSS")
for i in range(len(data)):
    data[i]
print(json.dumps({"n": len(data), "growth": (kib("VmHWM") - base) * 1024, "cached": data.cached_bytes}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak resident set size from /proc")
@pytest.mark.timeout(600)
def test_reading_100_mb_of_shards_with_a_50_mb_cache_keeps_memory_bounded(tmp_path):
    """2000 noise images of 3x128x128 (48 KiB each decoded, PNG does not shrink noise): ~94 MiB of
    shards and of decoded pixels, read once through a 50 MiB cache in a fresh process. Keeping every
    decoded image would raise the process's peak by >= 94 MiB; the cap must keep it under 80 MiB."""
    n, side, per_shard = 2000, 128, 500
    noise = np.random.default_rng(0).integers(0, 256, 4 * 2**20, dtype=np.uint8)
    step = side * side * 3
    for s in range(n // per_shard):
        members = {}
        for i in range(s * per_shard, (s + 1) * per_shard):
            start = (i * 7919) % (len(noise) - step)
            members[f"{i:06d}.png"] = png(noise[start:start + step].reshape(side, side, 3))
        write_tar(tmp_path / "big" / f"shard-{s:06d}.tar", members)
    total = sum(f.stat().st_size for f in (tmp_path / "big").iterdir())
    assert total > 95e6
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def read_all(cache_mb: int) -> dict:
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "big"), str(cache_mb)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    capped, everything = read_all(50), read_all(1000)
    assert capped["n"] == everything["n"] == n and capped["cached"] <= 50 * 2**20
    assert capped["growth"] < 80 * 2**20 < everything["growth"], (capped, everything)   # the bound tells them apart
