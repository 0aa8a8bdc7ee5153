"""What one optimiser step is: gradient accumulation equal to the larger batch, skipped non-finite
steps, the same step split over two processes; and checkpoints and config files that are data,
never code."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import selfsup
from selfsup.config import TrainConfig
from selfsup.data.datasets import ImageSet
from selfsup.runs import load_checkpoint
from selfsup.engine.batches import BatchSource
from selfsup.engine.loop import fit
from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo, Method
from selfsup.methods.simclr import SimCLR

from conftest import free_port, tiny_images


class Regress(Method):
    """A per-sample loss with fixed views and no batch-norm: predict each image's mean brightness
    from the image turned upside down. One batch of 2B and two of B give the same gradient."""

    Config = dict

    def __init__(self):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        net.embed_dim = 8
        super().__init__(net, {}, DataInfo(1, 16, [0.5], [0.25]))
        self.head = nn.Linear(8, 1)

    def forward(self, batch):
        x = batch["images"].float() / 255
        pred = self.head(self.backbone(x.flip(-2))).squeeze(1)
        return F.mse_loss(pred, x.mean(dim=(1, 2, 3))), {}


def _fit(batch_size, accumulate, **over):
    """The equalities below are fp32 arithmetic: under cpu_bf16 (the default on CPUs with native bf16)
    a batch of 16 and two of 8 round differently (about 1e-3). That bf16 learns as fp32 does is
    shown over seeds in BENCHMARKS.md (bf16 parity); these tests pin fp32 to test the summing itself."""
    over.setdefault("cpu_bf16", "false")
    method = Regress()
    cfg = TrainConfig(epochs=1, batch_size=batch_size, accumulate=accumulate, lr=0.05, optimizer="sgd", momentum=0.0,
                      warmup_epochs=0, weight_decay=0, checkpoint_every_minutes=0, **over)
    source = BatchSource(ImageSet(tiny_images(64, 1, 16)), batch_size * accumulate, seed=0)
    result = fit(method, source, cfg, None, torch.device("cpu"), progress=False)
    return result, method.state_dict()


@pytest.mark.slow
def test_accumulated_micro_batches_equal_the_larger_batch():
    big, w_big = _fit(16, 1)
    acc, w_acc = _fit(8, 2)
    small, w_small = _fit(8, 1)
    assert big.steps == acc.steps == 4 and small.steps == 8
    for k in w_big:
        assert torch.allclose(w_big[k], w_acc[k], atol=1e-6), k
    assert any(not torch.allclose(w_big[k], w_small[k], atol=1e-4) for k in w_big)   # the comparison can fail


@pytest.mark.slow
def test_accumulate_through_train_counts_optimiser_steps(tmp_path):
    res = selfsup.train("rotation", data=tiny_images(64, 1, 16), out=tmp_path / "r", epochs=1, batch_size=8,
                        accumulate=2, progress=False)
    assert res.steps == 4   # 64 images / (8 x 2) per step
    assert json.loads((tmp_path / "r" / "config.json").read_text())["accumulate"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "-1"])
def test_bad_accumulate_is_one_line_error(value, tmp_path, capsys):
    from selfsup.cli import main
    assert main(["train", "rotation", "--data", "shapes:n=32,n_test=8,size=16", "--accumulate", value,
                 "--out", str(tmp_path / "r")]) != 0
    assert capsys.readouterr().err.strip() == f"selfsup: error: --accumulate {value}: must be >= 1"


def _nan_at(monkeypatch, steps):
    """SimCLR whose loss is NaN at the given (0-based) calls."""
    forward, calls = SimCLR.forward, []

    def poisoned(self, batch):
        loss, logs = forward(self, batch)
        calls.append(1)
        return (loss * float("nan") if len(calls) - 1 in steps else loss), logs
    monkeypatch.setattr(SimCLR, "forward", poisoned)


@pytest.mark.slow
def test_skip_nonfinite_skips_without_updating(tmp_path, monkeypatch):
    kw = dict(epochs=1, batch_size=16, progress=False, checkpoint_every_steps=1, warmup_epochs=0)
    selfsup.train("simclr", data=tiny_images(64, 1, 16), out=tmp_path / "clean", **{**kw, "epochs": 0.5})
    _nan_at(monkeypatch, {2})
    res = selfsup.train("simclr", data=tiny_images(64, 1, 16), out=tmp_path / "skip", skip_nonfinite=1, **kw)
    assert res.steps == 4
    rows = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_nonfinite"] == 1
    state = load_checkpoint(tmp_path / "skip")
    assert state["skipped_nonfinite"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_nonfinite_beyond_the_allowance_stops_naming_step_and_checkpoint(tmp_path, monkeypatch):
    _nan_at(monkeypatch, {1, 2})
    with pytest.raises(SelfSupError, match=r"at step 2 \(after skipping 1 such step\(s\)\).*checkpoint.pt \(step 2\)"):
        selfsup.train("simclr", data=tiny_images(64, 1, 16), out=tmp_path / "r", epochs=1, batch_size=16,
                      progress=False, checkpoint_every_steps=1, skip_nonfinite=1)


# ----------------------------------------------------------------------------- two processes


def _worker(rank, world, port, out, nan_rank):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        method = Regress()
        if rank == nan_rank:   # this process alone sees a NaN, in the first micro-batch of step 1
            forward, calls = method.forward, []

            def poisoned(batch):
                calls.append(1)
                loss, logs = forward(batch)
                return (loss * float("nan") if len(calls) == 3 else loss), logs
            method.forward = poisoned
        cfg = TrainConfig(cpu_bf16="false", epochs=1, batch_size=4, accumulate=2, lr=0.05, optimizer="sgd", momentum=0.0, warmup_epochs=0,
                          weight_decay=0, checkpoint_every_minutes=0, skip_nonfinite=1)
        source = BatchSource(ImageSet(tiny_images(64, 1, 16)), 8, seed=0, rank=rank, world=world)
        result = fit(method, source, cfg, None, torch.device("cpu"), progress=False)
        torch.save({"steps": result.steps, "state": method.state_dict()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_with_accumulation_equal_one_with_the_quadrupled_batch(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "w"), None), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"w.{r}", weights_only=True) for r in range(2))
    _, single = _fit(16, 1)   # 2 processes x 2 micro-batches x 4 images
    assert r0["steps"] == 4
    for k in single:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
        assert torch.allclose(r0["state"][k], single[k], atol=1e-6), k


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_nan_on_one_process_is_skipped_by_both(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "w"), 1), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"w.{r}", weights_only=True) for r in range(2))
    assert r0["steps"] == r1["steps"] == 4
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k


# ----------------------------------------------------------------------------- safe loading


class Payload:
    """Unpickling this runs a command that leaves a file behind: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_malicious_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "checkpoint.pt", "wb") as f:   # a plain pickle, as torch.save would embed it
        torch.save({"model": {}, "config": {"method": "simclr"}, "x": Payload(marker)}, f)
    with pytest.raises(SelfSupError, match="checkpoint.pt: not a readable selfsup checkpoint"):
        load_checkpoint(run)
    proc = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint", str(run),
                           "--data", "shapes:n=32,n_test=8,size=16"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "checkpoint.pt" in proc.stderr
    assert not marker.exists(), "the payload ran"
    # the same payload is what a full-pickle load would have run: the test's bait is real
    with open(run / "checkpoint.pt", "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_yaml_config_is_data_not_code(tmp_path):
    pytest.importorskip("yaml")
    from selfsup.config import read_config_file
    marker = tmp_path / "pwned"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SelfSupError, match="c.yaml: cannot parse"):
        read_config_file(str(cfg))
    assert not marker.exists()
