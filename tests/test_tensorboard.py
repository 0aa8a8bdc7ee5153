"""TensorBoard: a run's event files in RUN/tensorboard/ hold every metrics scalar, the monitor's
scores and the method's pictures; logger=none writes none; a resume does not log a step twice."""
from __future__ import annotations

import json

import pytest
from conftest import tiny_images

import selfsup
from selfsup.app import tblog
from selfsup.app.evaluate import evaluate
from selfsup.errors import SelfSupError

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

DATA = "shapes:n=64,n_test=16,size=16"
SETTINGS = dict(epochs=1, batch_size=16, seed=0, progress=False, log_every=1)   # 4 steps on 64 images


def events(run):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_scalars_monitor_and_pictures_are_in_the_event_files(tmp_path):
    run = tmp_path / "run"
    res = selfsup.train("rotation", data=DATA, out=run, logger="tensorboard", monitor_every=1, monitor="knn", **SETTINGS)
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no event file written"
    acc = events(run)
    tags = acc.Tags()
    for name in ("loss", "lr", "images_per_s", "monitor_knn"):
        assert name in tags["scalars"], (name, tags["scalars"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss_rows = [r for r in rows if "loss" in r]
    logged = acc.Scalars("loss")
    assert [e.step for e in logged] == [r["step"] for r in loss_rows]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in loss_rows], rel=1e-5)
    method_logs = set(loss_rows[0]) - {"step", "epoch", "loss", "lr", "images_per_s", "elapsed_s"}
    assert method_logs <= set(tags["scalars"])                      # the method's own logs too
    pictures = sorted(p.stem for p in (run / "pictures").glob("*.png"))
    assert pictures and tags["images"] == [f"pictures/{p}" for p in pictures]
    image = acc.Images(tags["images"][0])[0]
    assert image.step == res.steps and image.width > 0 and image.encoded_image_string.startswith(b"\x89PNG")


def test_every_number_of_a_row_becomes_a_scalar_at_its_step(tmp_path):
    sink = tblog.TensorBoardSink(tmp_path)
    sink.write({"step": 7, "epoch": 1.75, "monitor_knn": 0.5, "monitor_linear": 0.625, "monitor_s": 1.0})
    sink.write({"step": 8, "loss": float("nan"), "lr": 0.1, "note": "text", "flag": True})
    sink.close()
    acc = events(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["epoch", "lr", "monitor_knn", "monitor_linear", "monitor_s"]
    assert [(e.step, e.value) for e in acc.Scalars("monitor_linear")] == [(7, 0.625)]


def test_logger_none_writes_no_event_file(tmp_path):
    selfsup.train("rotation", data=tiny_images(64), out=tmp_path / "run", logger="none", **SETTINGS)
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_appends_without_repeating_steps_and_eval_adds_scores(tmp_path):
    run = tmp_path / "run"
    selfsup.train("rotation", data=DATA, out=run, logger="tensorboard", **SETTINGS)
    selfsup.train("rotation", out=run, resume=True, epochs=2, progress=False)
    steps = [e.step for e in events(run).Scalars("loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 8
    evaluate(["knn"], checkpoint=run, k=5, progress=False)
    assert [e.step for e in events(run).Scalars("eval/knn")] == [8]


def test_logger_tensorboard_without_the_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(tblog, "available", lambda: False)
    with pytest.raises(SelfSupError, match=r"logger=tensorboard: the tensorboard package is not installed; pip install"):
        selfsup.train("rotation", data=tiny_images(16), logger="tensorboard", **SETTINGS)
    with pytest.raises(SelfSupError, match="logger=wandb: expected auto, tensorboard or none"):
        selfsup.train("rotation", data=tiny_images(16), logger="wandb", **SETTINGS)
    assert not tblog.wanted("auto")
