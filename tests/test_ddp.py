"""Two real processes (gloo, CPU): SimCLR's gathered negatives give the same loss and gradients
as one process with the doubled batch (lightly#1528: negatives without gradient; lightly#1920:
gradients off by 1/world_size)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from selfsup.methods.base import DataInfo
from selfsup.methods.simclr import Config, SimCLR

from conftest import free_port


class NoBNNet(nn.Module):
    """A small backbone without batch-norm, so per-process statistics cannot differ."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = 16

    def forward(self, x):
        return self.net(x)


def make_method():
    torch.manual_seed(0)
    m = SimCLR(NoBNNet(), Config(proj_layers=1, temperature=0.3), DataInfo(1, 8, [0.5], [0.25]))
    # fixed views: the identity and a horizontal flip, so both runs see the same inputs
    m.views = lambda images: [(images.float() / 255 - 0.5) / 0.25, (images.flip(-1).float() / 255 - 0.5) / 0.25]
    return m


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(make_method())
        images = batch()[rank::world]  # each process its interleaved half of the global batch
        loss, _ = model({"images": images})
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.module.named_parameters()}
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            torch.save({"loss": torch.stack(losses).mean(), "grads": grads}, out)
    finally:
        dist.destroy_process_group()



@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_processes_equal_one_with_doubled_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    single = make_method()
    images = batch()
    order = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])  # rank 0's rows, then rank 1's
    loss, _ = single({"images": images[order]})
    loss.backward()
    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for k, p in single.named_parameters():
        assert torch.allclose(ddp["grads"][k], p.grad, rtol=1e-4, atol=1e-6), k
