"""Fine-tuning and the supervised baseline: learning rates per layer, frozen stages, the pretrained
start, the lr search on a held-out part of the labels, and the command line."""
import json
import math

import pytest
import torch

import selfsup
from selfsup.cli import main as cli_main
from selfsup.engine.optim import build_optimizer
from selfsup.app.train import build_method, resolve_config
from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo

from conftest import tiny_images

DATA = "shapes:n=96,n_test=48,size=16"


def make(backbone="resnet18_quarter", channels=3, **kw):
    cfg, mcfg = resolve_config("supervised", {"backbone": backbone, **kw})
    return build_method(cfg, mcfg, DataInfo(channels, 16, [0.5] * channels, [0.25] * channels, num_classes=3))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny SimCLR run (ResNet) and a tiny MAE run (ViT) on the test data."""
    root = tmp_path_factory.mktemp("runs")
    selfsup.train("simclr", data=DATA, out=root / "simclr", epochs=1, batch_size=32, progress=False)
    selfsup.train("mae", data=DATA, out=root / "mae", epochs=1, batch_size=32, progress=False)
    return root


def test_from_scratch_every_parameter_trains_at_the_head_rate():
    m = make()
    assert {g["lr_scale"] for g in m.optimizer_groups(0.05)} == {1.0}


@pytest.mark.slow
def test_pretrained_resnet_backbone_gets_a_lower_rate(pretrained):
    m = make(init=str(pretrained / "simclr"))
    scales = {n: m.lr_scale(n) for n, _ in m.named_parameters()}
    assert all(s == 0.1 for n, s in scales.items() if n.startswith("backbone."))
    assert all(s == 1.0 for n, s in scales.items() if n.startswith("head."))
    saved = selfsup.load_backbone(pretrained / "simclr").backbone.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in m.backbone.state_dict().items())
    assert m.data.mean == selfsup.load_backbone(pretrained / "simclr").meta["mean"]   # the backbone's own normalisation


@pytest.mark.slow
def test_pretrained_vit_gets_layer_wise_decay(pretrained):
    m = make("vit_micro", init=str(pretrained / "mae"), layer_decay=0.5)
    n = m.backbone.num_stages
    assert m.lr_scale("head.1.weight") == 1.0
    assert m.lr_scale("backbone.vit.norm.weight") == 1.0
    assert m.lr_scale(f"backbone.vit.blocks.{n - 1}.attn.qkv.weight") == 0.5
    assert m.lr_scale("backbone.vit.blocks.0.attn.qkv.weight") == 0.5 ** n
    assert m.lr_scale("backbone.vit.patch_embed.proj.weight") == 0.5 ** (n + 1)
    assert m.lr_scale("backbone.vit.cls_token") == 0.5 ** (n + 1)
    opt = build_optimizer(m, "adamw", 1e-3, 0.05)
    assert len({g["lr_scale"] for g in opt.param_groups}) == n + 2
    assert all((g["weight_decay"] == 0) == all(p.ndim <= 1 for p in g["params"]) for g in opt.param_groups)


@pytest.mark.slow
def test_engine_applies_each_group_scale(pretrained, monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        seen.append({g["lr_scale"]: g["lr"] for g in self.param_groups})
        return step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    selfsup.train("supervised", data=DATA, epochs=1, batch_size=32, progress=False, lr=1e-3, warmup_epochs=0,
                  init=str(pretrained / "simclr"))
    assert set(seen[0]) == {0.1, 1.0}
    assert math.isclose(seen[0][0.1], 1e-4) and math.isclose(seen[0][1.0], 1e-3)   # step 0: the peak rate, scaled


def test_frozen_stages_do_not_move():
    m = make(freeze_stages=2)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.stem", "backbone.stages.0", "backbone.stages.1")) for n in frozen)
    opt = build_optimizer(m, "adamw", 1e-2, 0.05)
    loss, logs = m({"images": tiny_images(8, 3, 16), "labels": torch.arange(8) % 3})
    loss.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
    assert 0 <= float(logs["train_acc"]) <= 1


def test_bad_settings_are_one_line_errors():
    with pytest.raises(SelfSupError, match="freeze_stages"):
        make(freeze_stages=9)
    with pytest.raises(SelfSupError, match="layer_decay"):
        make(layer_decay=0.0)
    with pytest.raises(SelfSupError, match="no such run folder"):
        make(init="/nonexistent/run")
    with pytest.raises(SelfSupError, match="labelled"):
        make()({"images": tiny_images(4, 3, 16)})


@pytest.mark.slow
def test_finetune_searches_lrs_on_held_out_labels_then_scores_test(pretrained, tmp_path):
    res = selfsup.finetune(checkpoint=pretrained / "simclr", lrs=[1e-3, 3e-3], epochs=1, out=tmp_path / "ft.json")
    # with two rates the winner is always at an edge: the grid extends once past it by its ratio (1e-3 / 3 or 9e-3)
    assert res["lr_extended"] in (0.000333, 9e-3) and set(res["lr_search"]) == {"0.001", "0.003", f"{res['lr_extended']:g}"}
    assert res["lr_search"][f"{res['lr']:g}"] == max(res["lr_search"].values())
    assert 0 <= res["accuracy"] <= 1 and res["n_test"] == 48 and res["n_train"] == 96
    assert json.loads((tmp_path / "ft.json").read_text())["accuracy"] == res["accuracy"]
    base = selfsup.finetune(baseline="supervised", data=DATA, label_fraction=0.5, steps=20, lrs=[2e-3])
    assert base["baseline"] == "supervised" and abs(base["n_train"] - 48) <= 3 and base["lr_search"] == {}  # rounded per class
    curve = base["curve"]   # the final run's learning curve: from its first step to its last, the rate decayed
    assert curve[0]["step"] == 1 and curve[-1]["step"] == base["steps"] and curve[-1]["lr"] <= 0.05 * 2e-3
    assert all(isinstance(r["loss"], float) and r["images_per_s"] > 0 for r in curve)
    with pytest.raises(SelfSupError, match="either"):
        selfsup.finetune(data=DATA)


@pytest.mark.slow
def test_cli_finetune_and_its_errors(pretrained, capsys):
    code = cli_main(["eval", "finetune", "--checkpoint", str(pretrained / "mae"), "--epochs", "1",
                     "--set", "layer_decay=0.65"])
    out = capsys.readouterr().out
    assert code == 0 and "finetune accuracy" in out
    assert (pretrained / "mae" / "eval" / "finetune.json").is_file()
    assert cli_main(["eval", "finetune", "--baseline", "pixels", "--data", DATA]) == 2
    assert "supervised" in capsys.readouterr().err
    assert cli_main(["eval", "knn", "--baseline", "supervised", "--data", DATA]) == 2
    assert cli_main(["eval", "knn", "--baseline", "pixels", "--data", DATA, "--lrs", "0.1"]) == 2
    assert "finetune only" in capsys.readouterr().err


def test_the_lr_search_extends_once_past_the_edge_it_won_at():
    from selfsup.app.finetune import search_lr
    calls = []

    def rising(lr):          # accuracy keeps rising with the rate: the top edge wins, the grid extends up once
        calls.append(lr)
        return min(lr * 10, 0.9)
    best, scores, extended = search_lr([1e-3, 3e-3, 1e-2, 3e-2], rising)
    assert extended == pytest.approx(9e-2) and calls[-1] == pytest.approx(9e-2) and len(calls) == 5
    assert best == pytest.approx(9e-2) or scores[f"{extended:g}"] <= scores["0.03"]
    best, scores, extended = search_lr([1e-3, 3e-3, 1e-2, 3e-2], lambda lr: -lr)   # bottom edge: extends down once
    assert extended == pytest.approx(1e-3 / 3, rel=1e-2) and best == extended and len(scores) == 5
    best, scores, extended = search_lr([1e-3, 3e-3, 1e-2, 3e-2], lambda lr: -abs(math.log(lr / 3e-3)))   # inside
    assert best == 3e-3 and extended is None and len(scores) == 4
    best, _, extended = search_lr([1e-3, 3e-3], lambda lr: lr, extend=False)
    assert best == 3e-3 and extended is None


def test_a_run_too_short_to_converge_is_flagged(pretrained):
    from selfsup.app.finetune import default_steps, too_short
    assert too_short(40, 0.3) and "epochs" in too_short(40, 0.3)
    assert too_short(50, 20.0) and "steps" in too_short(50, 20.0)
    assert too_short(4690, 10.0) is None
    from selfsup.app.finetune import epochs_over   # full batches, as the engine counts an epoch
    assert epochs_over(1404, 60000, 128) == 3.0 and too_short(1404, epochs_over(1404, 60000, 128)) is None
    assert default_steps(600, 128) == 1000 and default_steps(60000, 128) == 4688   # a floor for small fractions
    res = selfsup.finetune(baseline="supervised", data=DATA, lrs=[2e-3], steps=6)
    assert res["steps"] == 6 and res["short"]


def test_search_share_shortens_only_the_candidates(monkeypatch):
    """--search-share S: each learning-rate candidate trains for S of the steps, the final run for all."""
    from selfsup.app import finetune as ft
    seen = []

    class Res:
        def __init__(self, steps):
            self.steps, self.config, self.history = steps, type("C", (), {"batch_size": 8})(), []

    def fake(labelled, scored, settings, run_dir, progress=False):
        seen.append((settings["lr"], settings["steps"]))
        return 1.0 - abs(settings["lr"] - 1e-3), Res(settings["steps"])
    monkeypatch.setattr(ft, "_train_and_score", fake)
    res = ft.finetune(baseline="supervised", data=DATA, steps=90, lrs=[3e-4, 1e-3, 3e-3], search_share=1 / 3,
                      progress=False)
    assert [s for _, s in seen[:-1]] == [30, 30, 30] and seen[-1] == (1e-3, 90)
    assert res["search_share"] == pytest.approx(1 / 3) and res["steps"] == 90
    with pytest.raises(SelfSupError, match="search-share"):
        ft.finetune(baseline="supervised", data=DATA, steps=90, search_share=0)
