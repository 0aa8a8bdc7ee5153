"""Fashion-MNIST: the IDX reader, where the files are looked for, and the real data when installed."""
import gzip
import struct

import numpy as np
import pytest
import torch

from selfsup.data import fashion_mnist as fm
from selfsup.data.datasets import load_dataset, parse_spec
from selfsup.errors import SelfSupError


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_fmnist(folder, n_train=20, n_test=10, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_from_data_dir(tmp_path, gz, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    fake_fmnist(tmp_path / "fashion-mnist", gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert ds.train.images.shape == (20, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.labels.shape == (10,) and ds.train.classes[0] == "T-shirt/top"


def test_selfsup_data_env_and_subset_option(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    fake_fmnist(tmp_path / "d")
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "d"))
    assert len(load_dataset("fashion-mnist:n=5").train) == 5
    with pytest.raises(SelfSupError, match="unknown option"):
        load_dataset("fashion-mnist:colour=1")


def test_missing_dataset_names_where_it_looked_and_suggests_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    with pytest.raises(SelfSupError, match="Fashion-MNIST not found.*--download"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


def test_truncated_idx_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    fake_fmnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(SelfSupError, match="train-images-idx3-ubyte: truncated"):
        load_dataset("fashion-mnist", data_dir=str(tmp_path))


def test_parse_spec():
    assert parse_spec("shapes:n=20,colors=free") == ("shapes", {"n": "20", "colors": "free"})
    assert parse_spec("fashion-mnist") == ("fashion-mnist", {})
    with pytest.raises(SelfSupError, match="not key=value"):
        parse_spec("shapes:n")


def test_real_fashion_mnist(fmnist):
    assert fmnist.train.images.shape == (60000, 1, 28, 28) and fmnist.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(fmnist.train.labels).tolist() == [6000] * 10
    assert len(fmnist.fingerprint) == 16
