"""The training loop: honest resume, checkpoints, the NaN guard, the run folder rules."""
import math
import json

import pytest
import torch

import selfsup
from selfsup.runs import load_checkpoint, save_checkpoint
from selfsup.errors import SelfSupError
from selfsup.methods.simclr import SimCLR

from conftest import tiny_images

SETTINGS = dict(epochs=2, batch_size=16, lr=1e-3, checkpoint_every_steps=1, progress=False, warmup_epochs=0.5)


def _weights(run_dir):
    return load_checkpoint(run_dir)["model"]


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def images():
    return tiny_images(64, 1, 16)


@pytest.mark.slow
def test_resume_runs_only_remaining_steps_and_matches_uninterrupted(tmp_path, images, monkeypatch):
    full = selfsup.train("simclr", data=images, out=tmp_path / "full", **SETTINGS)
    assert full.steps == 8  # 64 images / 16 = 4 steps per epoch, 2 epochs

    original = SimCLR.after_step

    def crash_after_five(self, step, total):
        original(self, step, total)
        if step == 4:
            raise KeyboardInterrupt
    monkeypatch.setattr(SimCLR, "after_step", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        selfsup.train("simclr", data=images, out=tmp_path / "cut", **SETTINGS)
    monkeypatch.setattr(SimCLR, "after_step", original)
    assert load_checkpoint(tmp_path / "cut")["step"] == 4

    calls = []
    forward = SimCLR.forward
    monkeypatch.setattr(SimCLR, "forward", lambda self, batch: calls.append(1) or forward(self, batch))
    resumed = selfsup.train("simclr", data=images, out=tmp_path / "cut", resume=True, progress=False)
    assert len(calls) == 4 and resumed.steps == 8
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "cut"))


@pytest.mark.slow
def test_perturbed_checkpoint_changes_the_result(tmp_path, images):
    selfsup.train("simclr", data=images, out=tmp_path / "full", **SETTINGS)
    selfsup.train("simclr", data=images, out=tmp_path / "half", **{**SETTINGS, "epochs": 1})
    state = load_checkpoint(tmp_path / "half")
    key = next(k for k in state["model"] if k.endswith("weight") and state["model"][k].dim() == 4)
    state["model"][key] = state["model"][key] + 0.01
    state["config"]["epochs"] = 2.0
    save_checkpoint(state, tmp_path / "half" / "checkpoint.pt")
    selfsup.train("simclr", data=images, out=tmp_path / "half", resume=True, progress=False, epochs=2)
    assert not _same(_weights(tmp_path / "full"), _weights(tmp_path / "half"))


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tmp_path, images):
    s = {**SETTINGS, "epochs": 1}
    selfsup.train("simclr", data=images, out=tmp_path / "a", seed=1, **s)
    selfsup.train("simclr", data=images, out=tmp_path / "b", seed=1, **s)
    selfsup.train("simclr", data=images, out=tmp_path / "c", seed=2, **s)
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


@pytest.mark.slow
def test_run_folder_contents(tmp_path, images):
    run = tmp_path / "run"
    selfsup.train("simclr", data=images, out=run, **{**SETTINGS, "epochs": 1})
    for name in ("config.json", "provenance.json", "metrics.jsonl", "checkpoint.pt", "backbone.safetensors"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["method"] == "simclr" and cfg["batch_size"] == 16 and cfg["method_config"]["temperature"] > 0
    assert cfg["lr"] == 1e-3 and "optimizer" in cfg  # every default written out
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["torch"] == torch.__version__ and prov["data_fingerprint"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and all(r["images_per_s"] > 0 for r in rows)
    encoder = selfsup.load_backbone(run)
    x = images[:4]
    state = load_checkpoint(run)["model"]
    assert torch.allclose(encoder.backbone.stages[0][0].conv1.weight, state["backbone.stages.0.0.conv1.weight"])
    assert encoder(x).shape == (4, encoder.embed_dim)


@pytest.mark.slow
def test_existing_run_is_refused_and_overwrite_keeps_foreign_files(tmp_path, images):
    run = tmp_path / "run"
    s = {**SETTINGS, "epochs": 1}
    selfsup.train("simclr", data=images, out=run, **s)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(SelfSupError, match="already exists"):
        selfsup.train("simclr", data=images, out=run, **s)
    selfsup.train("simclr", data=images, out=run, overwrite=True, **s)
    assert (run / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_nan_guard_names_step_and_checkpoint(tmp_path, images, monkeypatch):
    forward = SimCLR.forward

    def poisoned(self, batch):
        loss, logs = forward(self, batch)
        return (loss * float("nan") if self._steps_seen >= 5 else loss), logs
    monkeypatch.setattr(SimCLR, "_steps_seen", 0, raising=False)
    monkeypatch.setattr(SimCLR, "after_step", lambda self, step, total: setattr(self, "_steps_seen", step + 1))
    monkeypatch.setattr(SimCLR, "forward", poisoned)
    with pytest.raises(SelfSupError, match=r"loss is nan at step 5; the last good checkpoint is .*checkpoint.pt \(step 5\)"):
        selfsup.train("simclr", data=images, out=tmp_path / "run", **SETTINGS)


@pytest.mark.slow
def test_bad_settings_are_one_line_errors(images):
    for bad, pattern in [({"batch_size": 0}, "--batch-size 0: must be >= 1"), ({"epochs": -1}, "--epochs -1: must be > 0"),
                         ({"lr": 0}, "--lr 0: must be > 0"), ({"temperature": "hot"}, "temperature=hot: expected float"),
                         ({"no_such_key": 1}, "unknown setting 'no_such_key'"), ({"backbone": "vgg"}, "unknown backbone"),
                         ({"optimizer": "adam2"}, "--set optimizer=adam2: must be one of adamw, sgd, lars")]:
        with pytest.raises(SelfSupError, match=pattern):
            selfsup.train("simclr", data=images, **{**SETTINGS, **bad})
    with pytest.raises(SelfSupError, match="unknown method 'nope'"):
        selfsup.train("nope", data=images)
    with pytest.raises(SelfSupError, match="larger than the dataset"):
        selfsup.train("simclr", data=images, **{**SETTINGS, "batch_size": 128})


@pytest.mark.slow
def test_trains_from_any_torch_dataset(tmp_path):
    imgs = tiny_images(32, 3, 16)
    ds = torch.utils.data.TensorDataset(imgs, torch.zeros(32, dtype=torch.long))
    res = selfsup.train("simclr", data=ds, out=tmp_path / "r", epochs=1, batch_size=8, progress=False)
    assert res.steps == 4 and math.isfinite(res.last_loss)


class _Probe(torch.nn.Module):
    """A method-like module recording what the loop did before each forward."""

    progress = 0.0

    def __init__(self, nan_at: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.nan_at, self.seen, self.after = nan_at, [], []

    def forward(self, batch):
        self.seen.append((self.progress, torch.rand(1).item()))   # the first draw of the step's RNG
        loss = (self.w * batch["images"].float().mean() / 255).sum()
        return (loss * float("nan") if len(self.seen) - 1 == self.nan_at else loss), {}

    def after_step(self, step, total):
        self.after.append(step)


def test_the_step_order_exact_resume_depends_on(tmp_path):
    """engine.loop's docstring order: progress, then the RNG reseeded from (seed, step, rank), then
    forward; a non-finite step is skipped (no after_step) and counted in the checkpoints; hooks run
    after the step is counted and before the checkpoint clocks."""
    from selfsup.config import TrainConfig
    from selfsup.data.core import ImageSet
    from selfsup.engine.batches import BatchSource
    from selfsup.engine.loop import _step_seed, fit

    cfg = TrainConfig(method="probe", epochs=1, batch_size=4, seed=3, skip_nonfinite=1, checkpoint_every_steps=2,
                      log_every=1, warmup_epochs=0)
    source = BatchSource(ImageSet(tiny_images(n=16, channels=1, size=8)), cfg.batch_size, cfg.seed)
    probe, at_hook = _Probe(nan_at=1), []

    class Hook:
        def after_step(self, method, step, steps_per_epoch, device, metrics):
            ckpt = tmp_path / "checkpoint.pt"
            at_hook.append((step, load_checkpoint(ckpt)["step"] if ckpt.exists() else None))

    res = fit(probe, source, cfg, tmp_path, torch.device("cpu"), progress=False, hooks=[Hook()])
    assert res.steps == 4
    for step, (progress, draw) in enumerate(probe.seen):
        torch.manual_seed(_step_seed(cfg.seed, step, 0))
        assert draw == torch.rand(1).item() and progress == step / 4
    assert probe.after == [0, 2, 3]                       # the non-finite step 1 made no update
    assert at_hook == [(1, None), (2, None), (3, 2), (4, 2)]   # hooks see step s before its checkpoint
    state = load_checkpoint(tmp_path)
    assert state["step"] == 4 and state["skipped_nonfinite"] == 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert math.isfinite(rows[0]["loss"]) and math.isnan(rows[1]["loss"])   # step 2's window held only the skipped step


@pytest.mark.slow
def test_run_folders_of_the_previous_format_still_load(tmp_path):
    """A checkpoint written before checkpoints recorded ``backbone_meta`` (an interrupted run: no
    backbone file) still gives its backbone; a new one records the prefix and input space itself."""
    run = tmp_path / "r"
    selfsup.train("simclr", data=tiny_images(n=32), out=run, epochs=1, batch_size=16, progress=False)
    x = tiny_images(n=4)
    want = selfsup.load_backbone(run)(x)
    (run / "backbone.safetensors").unlink()
    state = load_checkpoint(run)
    assert state["backbone_meta"]["prefix"] == "backbone." and state["backbone_meta"]["input_space"] == "rgb"
    assert torch.allclose(selfsup.load_backbone(run)(x), want)        # from the checkpoint's own record
    del state["backbone_meta"]
    save_checkpoint(state, run / "checkpoint.pt")
    legacy = selfsup.load_backbone(run)                                # from config.json, as before
    assert torch.allclose(legacy(x), want) and legacy.meta["method"] == "simclr"



def test_a_warmup_longer_than_the_run_is_cut_to_a_tenth_and_the_rate_ends_near_zero(tmp_path, images):
    """warmup_epochs=10 in a 5-epoch run of 20 steps: the logged rate (the one each step used) peaks
    within the first 10% of the run, not at its end, and is near zero at the last step."""
    res = selfsup.train("simclr", data=images, epochs=5, batch_size=16, lr=1e-2, warmup_epochs=10, progress=False,
                        log_every=1, out=tmp_path / "run")
    assert res.steps == 20
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert len(lrs) == 20
    peak = max(range(20), key=lambda i: lrs[i])
    assert peak <= 2 and lrs[peak] > 0.95e-2
    assert lrs[-1] < 0.01 * 1e-2


def test_cpu_bf16_trains_under_bf16_autocast_with_channels_last_or_says_why_not(images, monkeypatch, capsys):
    """cpu_bf16 ("auto" by default): on a CPU with native bf16 the step runs under bf16 autocast
    with channels_last convs, for a convolutional backbone and a ViT alike; on a CPU without native
    bf16, plain fp32, with a one-line notice only when the user asked for it. "false" is fp32
    everywhere."""
    import math

    from selfsup.app import train as app_train
    from selfsup.engine import loop
    from selfsup.methods.simclr import SimCLR
    seen = []
    forward = SimCLR.forward

    def spy(self, batch):
        conv = next((m for m in self.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1), None)
        seen.append((torch.is_autocast_enabled("cpu"),
                     conv is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)))
        return forward(self, batch)
    monkeypatch.setattr(SimCLR, "forward", spy)
    for native in (True, False):
        monkeypatch.setattr(loop, "native_bf16", lambda: native)
        for asked in ({"cpu_bf16": True}, {"cpu_bf16": "auto"}, {}):
            monkeypatch.setattr(app_train._bf16_notice, "shown", False, raising=False)
            seen.clear()
            res = selfsup.train("simclr", data=images, epochs=1, batch_size=16, progress=False, **asked)
            assert math.isfinite(res.last_loss) and seen and all(s == (native, native) for s in seen), (native, seen)
            notice = capsys.readouterr().out
            assert ("no native bf16" in notice) == (not native and asked.get("cpu_bf16") is True), (native, asked, notice)
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    for asked, autocast in (({"cpu_bf16": False}, False), ({}, True), ({"cpu_bf16": "true"}, True)):
        for backbone in ("resnet18_quarter", "vit_micro"):
            seen.clear()
            selfsup.train("simclr", data=images, epochs=1, batch_size=16, progress=False, backbone=backbone, **asked)
            assert seen and all(a == autocast for a, _ in seen), (asked, backbone, seen)
    with pytest.raises(SelfSupError, match="cpu_bf16"):
        selfsup.train("simclr", data=images, epochs=1, batch_size=16, progress=False, cpu_bf16="sometimes")

def _timed(monkeypatch, fp32: float, bf16: float, calls: list):
    """The probe runs its real passes but reads these times (seconds) for them."""
    from selfsup.engine import loop

    from conftest import real_pass_seconds

    def fixed(module, batch, use_bf16):
        calls.append(use_bf16)
        real_pass_seconds(module, batch, use_bf16)
        return bf16 if use_bf16 else fp32
    monkeypatch.setattr(loop, "_pass_seconds", fixed)
    monkeypatch.setattr(loop, "_PROBED", {})


def _autocast_seen(monkeypatch) -> list:
    """A list that gets, for each SimCLR forward from now on, whether bf16 autocast was on."""
    seen = []
    forward = SimCLR.forward

    def spy(self, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, batch)
    monkeypatch.setattr(SimCLR, "forward", spy)
    return seen


def test_auto_times_the_step_and_takes_bf16_only_where_it_is_faster(tmp_path, images, monkeypatch, capsys):
    """cpu_bf16=auto on a CPU with native bf16: the run times its own step in both precisions on its
    first batch and trains in bf16 only when bf16 took at most 0.75 of the fp32 time. The probe
    leaves no trace: a run that chose fp32 ends with the weights of a cpu_bf16=false run. The
    choice and the timings go into the checkpoint and provenance.json; a second run of the same
    step in the process reuses the probe. "true" and "false" do not probe."""
    from selfsup.engine import loop
    seen = _autocast_seen(monkeypatch)
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    run = dict(data=images, epochs=1, batch_size=16, progress=False, seed=5)

    calls = []
    _timed(monkeypatch, fp32=0.8, bf16=0.64, calls=calls)   # bf16 faster, but not by the margin: fp32
    seen.clear()
    res = selfsup.train("simclr", out=tmp_path / "auto", **run)
    assert calls == [False, True] * 4 and not res.bf16 and seen.count(True) == 4   # 4 timed bf16 passes, then fp32
    assert res.precision_probe == {"bf16": False, "fp32_ms": 800.0, "bf16_ms": 640.0}
    assert "training in fp32" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "auto")["cpu_bf16_chosen"] is False
    prov = json.loads((tmp_path / "auto" / "provenance.json").read_text())
    assert prov["precision"] == "fp32" and prov["precision_probe"]["bf16_ms"] == 640.0
    fp32 = selfsup.train("simclr", out=tmp_path / "fp32", cpu_bf16=False, **run)
    assert _same(_weights(tmp_path / "auto"), _weights(tmp_path / "fp32")) and res.last_loss == fp32.last_loss

    _timed(monkeypatch, fp32=1.0, bf16=0.74, calls=calls)   # bf16 faster by more than the margin: bf16
    calls.clear()
    seen.clear()
    res = selfsup.train("simclr", **run)
    assert res.bf16 and len(calls) == 8 and seen[8:] == [True] * res.steps
    assert "training in bf16" in capsys.readouterr().out
    calls.clear()
    again = selfsup.train("simclr", **run)
    assert again.bf16 and calls == [] and again.precision_probe["cached"]   # the same step: the probe is reused
    assert "cpu_bf16=auto" not in capsys.readouterr().out                   # and says nothing
    for asked, bf16 in (("true", True), ("false", False)):
        calls.clear()
        assert selfsup.train("simclr", cpu_bf16=asked, **run).bf16 is bf16 and calls == []


def test_a_resumed_auto_run_keeps_the_precision_it_chose(tmp_path, images, monkeypatch):
    """The choice is made once per run: a resumed "auto" run trains in the precision its checkpoint
    saved, without probing again, whatever a probe would now say; "true" given on resume is bf16."""
    from selfsup.engine import loop
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    calls = []
    _timed(monkeypatch, fp32=0.8, bf16=1.0, calls=calls)
    selfsup.train("simclr", data=images, out=tmp_path / "run", epochs=1, batch_size=16, progress=False)
    seen = _autocast_seen(monkeypatch)
    _timed(monkeypatch, fp32=1.0, bf16=0.5, calls=calls)
    calls.clear()
    res = selfsup.train(data=images, out=tmp_path / "run", resume=True, epochs=2, progress=False)
    assert res.steps == 8 and calls == [] and not res.bf16 and seen == [False] * 4
    seen.clear()   # a setting given on resume is taken as given
    res = selfsup.train(data=images, out=tmp_path / "run", resume=True, epochs=3, progress=False, cpu_bf16="true")
    assert res.steps == 12 and calls == [] and res.bf16 and seen == [True] * 4


@pytest.mark.parametrize("name", ["simclr", "moco", "dino", "mae", "clip", "supervised"])
def test_the_probe_leaves_the_method_and_the_rng_as_they_were(name, monkeypatch):
    """The probe runs on copies: the method's parameters and buffers (BN statistics, MoCo's queue,
    DINO's centre), its gradients and the global RNG are untouched."""
    from selfsup.app.train import build_method, resolve_config
    from selfsup.engine import loop
    from selfsup.methods.base import DataInfo

    from conftest import CAPTIONS, backbone_for, real_pass_seconds
    cfg, mcfg = resolve_config(name, {"backbone": backbone_for(name)})
    method = build_method(cfg, mcfg, DataInfo(3, 16, [0.5] * 3, [0.25] * 3, num_classes=2)).train()
    batch = {"images": tiny_images(8, 3, 16), "labels": torch.arange(8) % 2, "captions": CAPTIONS[:8]}
    if method.uses_captions:
        method.prepare_text(CAPTIONS)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    rng = torch.get_rng_state()
    monkeypatch.setattr(loop, "_pass_seconds", real_pass_seconds)
    probe = loop.probe_cpu_bf16(method, batch, warmup=1, repeats=1)
    assert set(probe) == {"bf16", "fp32_ms", "bf16_ms"} and probe["fp32_ms"] > 0 and probe["bf16_ms"] > 0
    assert torch.equal(torch.get_rng_state(), rng)
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), name
    assert all(p.grad is None for p in method.parameters())
