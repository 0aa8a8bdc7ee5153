"""One 2-process gloo launch over the whole registry: after two optimiser steps through the engine's
own loop (DDP, per-rank seeding, the collective stop), every method's weights *and* buffers
(EMA teachers, MoCo's queue, DINO's centre, batch-norm statistics, CLIP's logit scale) are the
same on both processes. Equality with one process on the doubled batch (fixed views, no
batch-norm) is tested per method beside its loss: test_ddp (SimCLR), test_moco, test_dino,
test_clip, and test_steps (per-sample losses through the engine)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import TrainConfig
from selfsup.data.datasets import ImageSet
from selfsup.app.train import build_method, prepare_method, resolve_config
from selfsup.engine.batches import BatchSource, data_info
from selfsup.engine.loop import fit
from selfsup.methods import METHODS

from conftest import free_port, tiny_images
from conftest import CAPTIONS, backbone_for as _backbone

N, SIZE, BATCH = 32, 16, 4   # 32 images, 4 per process: 4 steps per epoch; 2 are run


def _data() -> ImageSet:
    images = tiny_images(N, 3, SIZE)
    return ImageSet(images, labels=torch.arange(N) % 2, classes=["a", "b"],
                    captions=[CAPTIONS[i % len(CAPTIONS)] for i in range(N)])


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        data = _data()
        for name in METHODS:
            cfg, mcfg = resolve_config(name, {"backbone": _backbone(name), "batch_size": BATCH, "epochs": 0.5,
                                              "warmup_epochs": 0, "checkpoint_every_minutes": 0, "seed": 3})
            method = build_method(cfg, mcfg, data_info(data))
            prepare_method(method, data, cfg.seed)
            source = BatchSource(data, cfg.batch_size, cfg.seed, rank, world)
            result = fit(method, source, cfg, None, torch.device("cpu"), progress=False)
            state = {k: v.detach().clone() for k, v in method.state_dict().items()}
            torch.save({"steps": result.steps, "state": state}, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_method_keeps_both_processes_identical(tmp_path):
    assert TrainConfig().batch_size > BATCH   # the test overrides the default, it does not rely on it
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in METHODS:
        r0, r1 = (torch.load(tmp_path / f"{name}.rank{r}.pt", weights_only=True) for r in range(2))
        assert r0["steps"] == r1["steps"] == 2, name
        assert r0["state"].keys() == r1["state"].keys()
        for key, a in r0["state"].items():
            b = r1["state"][key]
            assert torch.equal(a, b), f"{name}: {key} differs between the two processes"
        initial = build_method(*resolve_config(name, {"backbone": _backbone(name), "seed": 3}), data_info(_data()))
        moved = [k for k, v in initial.state_dict().items() if v.is_floating_point() and not torch.equal(v, r0["state"][k])]
        assert moved, f"{name}: two steps changed nothing"
