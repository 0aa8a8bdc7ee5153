import os
import socket

import pytest
import torch

from selfsup.engine import loop as _loop

torch.set_num_threads(min(2, os.cpu_count() or 1))
real_pass_seconds = _loop._pass_seconds   # the probe's own clock, for the tests that check the probe


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session caches decoded datasets in its own folder, never in the user's."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _steady_precision_probe(monkeypatch):
    """cpu_bf16=auto times a run's step in both precisions; in tests the timings are fixed (bf16
    twice as fast), so on a CPU with native bf16 a run takes bf16 as it always would there, and no
    test depends on this machine's clock. tests/test_engine.py checks the probe itself."""
    monkeypatch.setattr(_loop, "_pass_seconds", lambda module, batch, bf16: 0.5 if bf16 else 1.0)
    monkeypatch.setattr(_loop, "_PROBED", {})


@pytest.fixture(scope="session")
def fmnist():
    """Real Fashion-MNIST when it is installed (CI installs the Debian package), else skip."""
    from selfsup.data.fashion_mnist import locate
    if locate() is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    from selfsup.data.datasets import load_dataset
    return load_dataset("fashion-mnist")


def tiny_images(n=64, channels=1, size=16, seed=0):
    """Random but structured uint8 images (N, C, H, W): blobs at random places, for quick training tests."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = torch.randint(3, size - 3, (2, n, 1, 1), generator=g)
    r = torch.randint(2, 5, (n, 1, 1), generator=g)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).float()
    img = blob.unsqueeze(1).repeat(1, channels, 1, 1) * torch.rand(n, channels, 1, 1, generator=g)
    img = img + 0.1 * torch.rand(n, channels, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def free_port() -> int:
    """A free TCP port on localhost, for a gloo rendezvous in a two-process test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CAPTIONS = [f"a {size} {colour} {thing}" for size in ("small", "large") for colour in ("red", "blue", "green", "grey")
            for thing in ("arrow", "house", "tree")]


def backbone_for(name: str) -> str:
    """The small CPU backbone, or the method's own default where it needs another kind (MAE: a ViT)."""
    from selfsup.methods import METHODS
    return METHODS[name].train_defaults.get("backbone", "resnet18_quarter")
