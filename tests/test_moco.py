"""MoCo v2 / v3: the losses against naive loops, the queue's FIFO order, split batch-norm, the
EMA formula, one step through each class, and two real processes (gloo) against one process
with the doubled batch: gathered keys, queue and key encoder equal everywhere."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from selfsup.engine.optim import param_groups
from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo
from selfsup.methods.moco import (Config, ConfigV3, KeyQueue, MoCo, MoCoV3, batch_contrast, info_nce, num_splits,
                                  split_batchnorm)
from selfsup.models import create_backbone

from conftest import free_port, tiny_images


class NoBNNet(nn.Module):
    """A small backbone without batch-norm, so per-process statistics cannot differ."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = 16

    def forward(self, x):
        return self.net(x)


INFO = DataInfo(1, 8, [0.5], [0.25])


def fixed_views(images):
    """The identity and a horizontal flip, so every run sees the same inputs."""
    x = (images.float() / 255 - 0.5) / 0.25
    return [x, x.flip(-1)]


def make_method(v3=False, **kw):
    torch.manual_seed(0)
    if v3:
        m = MoCoV3(NoBNNet(), ConfigV3(proj_hidden=32, proj_dim=8, temperature=0.3, **kw), INFO)
        for mod in m.modules():   # the heads' BN on fixed statistics: per-process batches cannot differ
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()
    else:
        m = MoCo(NoBNNet(), Config(proj_hidden=32, proj_dim=8, temperature=0.3, **kw), INFO)
    m.views = fixed_views
    return m


def images(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("n,k,t", [(1, 1, 0.07), (5, 7, 0.2), (6, 3, 1.0)])
def test_info_nce_matches_a_naive_loop(n, k, t):
    g = torch.Generator().manual_seed(n * 10 + k)
    q, pos, neg = (F.normalize(torch.randn(r, 4, generator=g), dim=1) for r in (n, n, k))
    total = 0.0
    for i in range(n):
        num = math.exp(float(q[i] @ pos[i]) / t)
        den = num + sum(math.exp(float(q[i] @ neg[j]) / t) for j in range(k))
        total += -math.log(num / den)
    loss, acc = info_nce(q, pos, neg, t)
    assert loss.item() == pytest.approx(total / n, rel=1e-5)
    assert 0 <= acc.item() <= 1


def test_batch_contrast_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    qn, kn, t = F.normalize(q, dim=1), F.normalize(k, dim=1), 0.2
    total = 0.0
    for i in range(5):
        den = sum(math.exp(float(qn[i] @ kn[j]) / t) for j in range(5))
        total += -math.log(math.exp(float(qn[i] @ kn[i]) / t) / den)
    loss, _ = batch_contrast(q, k, t)
    assert loss.item() == pytest.approx(total / 5 * 2 * t, rel=1e-5)


# ----------------------------------------------------------------------------- queue, split BN, EMA


def test_queue_is_fifo_and_wraps_around():
    queue = KeyQueue(10, 2)
    keys = torch.arange(12.0).unsqueeze(1).repeat(1, 2)    # key j = (j, j)
    for i in range(3):
        queue.push(keys[4 * i:4 * (i + 1)])                 # 4, 8, then 2 at the end + 2 at the start
    assert int(queue.ptr) == 2
    assert torch.equal(queue.ordered(), keys[2:])           # the last 10 keys, oldest first
    queue.push(torch.arange(100.0, 125.0).unsqueeze(1).repeat(1, 2))   # more than K: the last K stay
    assert torch.equal(queue.ordered()[:, 0], torch.arange(115.0, 125.0))


def test_split_batchnorm_equals_separate_sub_batches():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    nn.init.uniform_(bn.weight)
    x = torch.randn(8, 3, 4, 4)
    refs, stats = [], []
    for b in range(4):                                      # sub-batch b: rows b, b + 4
        one = nn.BatchNorm2d(3).train()
        one.load_state_dict(bn.state_dict())
        refs.append(one(x[b::4]))
        stats.append(one.running_var)
    with split_batchnorm(bn, 4):
        y = bn(x)
    for b in range(4):
        assert torch.allclose(y[b::4], refs[b], atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack(stats).mean(0), atol=1e-6)
    assert "forward" not in vars(bn)                        # the plain layer is back
    assert num_splits(128, 4) == 4 and num_splits(12, 8) == 6 and num_splits(10, 4) == 2 and num_splits(1, 4) == 1


def test_keys_are_unshuffled():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone.embed_dim = 4
    m = MoCo(backbone, Config(proj_hidden=8, proj_dim=4, bn_splits=1), INFO)   # one split: BN is order-free
    x = fixed_views(images())[0]
    assert torch.allclose(m._keys(x), F.normalize(m.key_encoder(x), dim=1), atol=1e-5)


def test_ema_update_follows_the_formula_and_the_cosine_schedule():
    m = make_method(key_momentum=0.9, key_momentum_cos=True)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(torch.randn_like(p))
    old = [p.clone() for p in m.key_encoder.parameters()]
    m.progress = 0.5
    mom = 1 - 0.1 * (math.cos(math.pi * 0.5) + 1) / 2
    m.after_step(0, 10)
    query = list(m.backbone.parameters()) + list(m.projector.parameters())
    for k_old, k_new, q in zip(old, m.key_encoder.parameters(), query):
        assert torch.allclose(k_new, mom * k_old + (1 - mom) * q, atol=1e-6)
    m.progress = 1.0
    assert m.momentum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- one step through each class


@pytest.mark.parametrize("v3", [False, True])
def test_one_step_through_the_class(v3):
    torch.manual_seed(0)
    info = DataInfo(3, 16, [0.5] * 3, [0.25] * 3)
    if v3:
        m = MoCoV3(create_backbone("vit_micro", in_chans=3, img_size=16), ConfigV3(), info)
    else:
        m = MoCo(create_backbone("resnet18_quarter", in_chans=3, img_size=16), Config(queue_size=20), info)
    trained = {id(p) for g in param_groups(m, 0.1) for p in g["params"]}
    assert not any(id(p) in trained for p in m.key_encoder.parameters()), "the optimiser would train the key encoder"
    if v3:   # the frozen random patch projection
        frozen = [p.clone() for p in m.backbone.vit.patch_embed.parameters()]
        assert not any(id(p) in trained for p in m.backbone.vit.patch_embed.parameters())
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    key_before = [p.clone() for p in m.key_encoder.parameters()]
    loss, logs = m({"images": tiny_images(8, 3, 16)})
    assert loss.dim() == 0 and torch.isfinite(loss) and 0 <= float(logs["pos_acc"]) <= 1
    loss.backward()
    assert all(p.grad is None for p in m.key_encoder.parameters())
    opt.step()
    m.after_step(0, 10)
    assert any(not torch.equal(a, b) for a, b in zip(key_before, m.key_encoder.parameters()))
    if v3:
        assert all(torch.equal(a, b) for a, b in zip(frozen, m.backbone.vit.patch_embed.parameters()))
    else:
        assert int(m.queue.ptr) == 8 and torch.allclose(m.queue.keys[:8].norm(dim=1), torch.ones(8))
    assert m.pictures({"images": tiny_images(8, 3, 16)})["views"].images.shape == (16, 3, 16, 16)   # two rows of 8


@pytest.mark.parametrize("key,value", [("queue_size", 0), ("temperature", 0.0), ("key_momentum", 1.5), ("bn_splits", 0)])
def test_bad_options_are_one_line_errors(key, value):
    with pytest.raises(SelfSupError, match=f"--set {key}="):
        MoCo(NoBNNet(), Config(**{key: value}), INFO)


# ----------------------------------------------------------------------------- two processes


SCENARIOS = {  # name: (v3, config, steps)
    "v2": (False, dict(queue_size=12, key_momentum=0.9), 2),      # the second push wraps around
    "v2_symmetric": (False, dict(queue_size=20, key_momentum=0.9, symmetric=True), 1),
    "v3": (True, dict(key_momentum=0.9), 2),
}


def run(name, batches, wrap=None, seed=0):
    """Steps of SGD + after_step on ``batches``; returns what the test compares."""
    v3, kw, _ = SCENARIOS[name]
    method = make_method(v3, **kw)
    model = wrap(method) if wrap else method
    torch.manual_seed(seed)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    losses, grads = [], None
    for i, b in enumerate(batches):
        method.progress = 0.3
        loss, _ = model({"images": b})
        opt.zero_grad()
        loss.backward()
        if grads is None:
            grads = {k: p.grad.clone() for k, p in method.named_parameters() if p.requires_grad}
        opt.step()
        method.after_step(i, 10)
        losses.append(loss.detach())
    out = {"losses": torch.stack(losses), "grads": grads,
           "key": {k: v.clone() for k, v in method.key_encoder.state_dict().items()}}
    if not v3:
        out.update(queue=method.queue.keys.clone(), ptr=method.queue.ptr.clone())
    return out


def _worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = {}
        for name, (_, _, steps) in SCENARIOS.items():
            batches = [images(8, seed=s)[rank::world] for s in range(steps)]   # each its interleaved half
            # a different RNG per process: the key shuffle must come from rank 0
            results[name] = run(name, batches, nn.parallel.DistributedDataParallel, seed=100 + rank)
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()



@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_equal_one_with_doubled_batch(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    order = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])   # rank 0's rows, then rank 1's
    for name, (v3, _, steps) in SCENARIOS.items():
        single = run(name, [images(8, seed=s)[order] for s in range(steps)])
        a, b = r0[name], r1[name]
        assert torch.allclose((a["losses"] + b["losses"]) / 2, single["losses"], rtol=1e-5), name
        for k, g in single["grads"].items():   # DDP averages: the gradient of the global batch
            assert torch.allclose(a["grads"][k], g, rtol=1e-4, atol=1e-6), (name, k)
        for k, v in single["key"].items():
            assert torch.equal(a["key"][k], b["key"][k]), (name, k)
            assert torch.allclose(a["key"][k], v, rtol=1e-4, atol=1e-6), (name, k)
        if not v3:
            assert torch.equal(a["queue"], b["queue"]) and torch.equal(a["ptr"], b["ptr"]), name
            assert torch.equal(a["ptr"], single["ptr"]), name
            assert torch.allclose(a["queue"], single["queue"], atol=1e-5), name
