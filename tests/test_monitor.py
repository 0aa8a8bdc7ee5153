"""The online monitor: kNN / linear rows in metrics.jsonl every N epochs, without changing training."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import tiny_images

import selfsup
from selfsup.data.datasets import load_dataset
from selfsup.runs import read_backbone
from selfsup.app.train import build_method, resolve_config
from selfsup.engine.batches import data_info
from selfsup.errors import SelfSupError
from selfsup.eval.monitor import make_monitor

DATA = "shapes:n=64,n_test=16,size=16"
SETTINGS = dict(data=DATA, epochs=2, batch_size=16, progress=False, proj_dim=16, seed=3)   # 4 steps an epoch


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same seeded SimCLR run twice: monitored every half epoch (kNN and linear), and not."""
    root = tmp_path_factory.mktemp("monitor")
    selfsup.train("simclr", out=root / "on", monitor_every=0.5, monitor="knn,linear", **SETTINGS)
    selfsup.train("simclr", out=root / "off", **SETTINGS)
    return root / "on", root / "off"


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_rows_appear_every_half_epoch(runs):
    monitored = [r for r in rows(runs[0]) if "monitor_knn" in r]
    assert [(r["step"], r["epoch"]) for r in monitored] == [(2, 0.5), (4, 1.0), (6, 1.5), (8, 2.0)]
    for r in monitored:
        assert 0 <= r["monitor_knn"] <= 1 and 0 <= r["monitor_linear"] <= 1 and r["monitor_s"] >= 0
    assert not any("monitor_knn" in r for r in rows(runs[1]))
    assert json.loads((runs[0] / "config.json").read_text())["monitor_every"] == 0.5


@pytest.mark.slow
def test_monitoring_does_not_change_the_trained_weights(runs):
    on, off = (read_backbone(run / "backbone.safetensors")[0] for run in runs)
    assert on.keys() == off.keys()
    for k in on:
        assert torch.equal(on[k], off[k]), k
    losses = [[r["loss"] for r in rows(run) if "loss" in r] for run in runs]
    assert losses[0] == losses[1]


def test_monitor_restores_rng_and_modes_and_scores_held_out_train_images():
    cfg, method_cfg = resolve_config("simclr", {"monitor_every": 1.0, "monitor": "knn,linear", "seed": 1})
    train = load_dataset(DATA).train
    method = build_method(cfg, method_cfg, data_info(train))
    method.train()
    method.backbone.stem.eval()   # a part the method keeps in eval mode (a frozen teacher, say) must stay so
    monitor = make_monitor(cfg, train, steps_per_epoch=4)
    assert monitor.every == 4 and len(monitor.bank) + len(monitor.queries) == len(train)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    row = monitor.run(method, step=4, steps_per_epoch=4, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    assert method.training and method.backbone.training and method.projector.training
    assert not method.backbone.stem.training and not method.backbone.stem[1].training
    assert row["epoch"] == 1.0 and set(row) == {"step", "epoch", "monitor_knn", "monitor_linear", "monitor_s"}


@pytest.mark.slow
def test_unlabelled_data_warns_once_and_trains_on(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        selfsup.train("simclr", data=tiny_images(32, 3, 16), out=tmp_path / "r", epochs=2, batch_size=16,
                      progress=False, proj_dim=16, monitor_every=0.5)
    assert len([m for m in caplog.messages if "no online monitor" in m]) == 1
    assert not any("monitor_knn" in r for r in rows(tmp_path / "r"))


@pytest.mark.parametrize("settings,message", [
    ({"monitor": "knm"}, "expected knn, linear or knn,linear"),
    ({"monitor_every": -1}, r"--set monitor_every=-1: must be >= 0"),
])
def test_bad_monitor_settings_are_one_line_errors(settings, message):
    with pytest.raises(SelfSupError, match=message):
        resolve_config("simclr", settings)
