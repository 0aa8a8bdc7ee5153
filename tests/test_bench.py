"""``selfsup bench``: the smoke budget over every registered method, a broken unit shown in its row
with a non-zero exit, and results reused only when commit and config hash both match."""
import csv
import dataclasses
import json

import pytest
import torch

from selfsup.app import bench as bench_mod
from selfsup.cli import main
from selfsup.methods import METHODS
from selfsup.methods.rotation import Rotation

DATA = "shapes:n=300,n_test=60,size=16"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_bench_runs_every_registered_method(tmp_path, capsys):
    record = tmp_path / "BENCHMARKS.md"
    record.write_text("# Benchmarks\n\nkept text\n")
    rc = main(["bench", "--budget", "smoke", "--data", DATA, "--out", str(tmp_path / "b"), "--record", str(record)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "b" / "bench.json").read_text())
    subjects = {r["subject"] for r in summary["rows"]}
    ssl = {m for m, cls in METHODS.items() if not cls.uses_labels}
    assert ssl | {"supervised", "random", "pixels"} == subjects
    for r in summary["rows"]:
        assert r["status"] == "ok", r
        assert r["commit"] and len(r["config_hash"]) == 16
    by = {(r["subject"], r["backbone"]): r for r in summary["rows"]}
    for m in ssl:   # every method was trained, then probed and fine-tuned
        r = next(v for (s, _), v in by.items() if s == m)
        assert r["steps"] > 0 and 0 <= r["knn"] <= 1 and 0 <= r["linear_1pct"] <= 1, r
        if METHODS[m].input_space == "rgb":
            assert 0 <= r["ft_100pct"] <= 1, r
        else:   # colorization's lightness-only backbone: said in a note, not an error
            assert "ft_100pct" not in r and any("fine-tuning" in n for n in r["notes"]), r
    assert "ft_100pct" in by[("supervised", "resnet18_quarter")] and "knn" not in by[("supervised", "resnet18_quarter")]
    assert ("supervised", "vit_micro") in by   # MAE's ViT gets its own from-scratch arm
    knn = [r["knn"] for r in summary["rows"] if "knn" in r]
    assert len(knn) > len(ssl) and len(set(knn)) > 1, knn   # probes that saw the features: not one number for all
    md = (tmp_path / "b" / "bench.md").read_text()
    assert all(f"| {m} " in md or f"| {m} |" in md for m in ssl), md
    assert md.count("\n| ") == len(summary["table"]) + 1 and "Label efficiency at 1%" in md
    rows = list(csv.DictReader(open(tmp_path / "b" / "bench.csv")))
    assert len(rows) == len(summary["rows"])
    assert (tmp_path / "b" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    plot = Image.open(tmp_path / "b" / "label_efficiency.png")
    assert plot.size[0] >= 600 and plot.size[1] >= 400   # accuracy against label fraction, one line per subject
    assert "Subsampled" in md and "budget `smoke`" in md
    text = record.read_text()
    assert text.startswith("# Benchmarks\n\nkept text") and "<!-- bench:bench-smoke-shapes -->" in text
    assert "selfsup bench --data" in text


@pytest.mark.slow
def test_a_broken_unit_shows_in_its_row_and_fails_the_command(tmp_path, monkeypatch, capsys):
    def nan_forward(self, batch):
        loss = self.head(self.backbone(batch["images"].float())).sum()
        return loss * float("nan"), {}
    monkeypatch.setattr(Rotation, "forward", nan_forward)
    rc = main(["bench", "--budget", "smoke", "--data", DATA, "--methods", "rotation,simclr", "--out",
               str(tmp_path / "b"), "--no-record"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "rotation seed 0: non-finite" in err and "Traceback" not in err
    rows = {r["subject"]: r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]}
    assert rows["rotation"]["status"] == "non-finite" and "diverged" in rows["rotation"]["error"]
    assert rows["simclr"]["status"] == "ok" and rows["pixels"]["status"] == "ok"   # the others went on
    assert "non-finite" in (tmp_path / "b" / "bench.md").read_text()


@pytest.mark.slow
def test_a_method_that_cannot_use_the_data_is_skipped_not_failed(tmp_path):
    """Colorization on grey images (Fashion-MNIST) is a skipped row with a note, as CLIP is without captions."""
    from selfsup.app.budgets import get_budget
    from selfsup.data.datasets import DatasetSplits, ImageSet, load_dataset
    rgb = load_dataset(DATA)
    grey = DatasetSplits("grey", ImageSet(rgb.train.images[:, :1].contiguous(), rgb.train.labels, rgb.train.classes))
    rows = []
    for subject, why in (("colorization", "needs colour (RGB) images; grey has 1 channel"), ("clip", "needs image-caption")):
        row = bench_mod.run_unit(subject, "resnet18_quarter", grey, 0, get_budget("smoke"), tmp_path)
        assert row["status"] == "skipped" and why in row["notes"][0] and "steps" not in row, row
        rows.append(row)
    assert not (tmp_path / "runs").exists()   # nothing was trained
    assert bench_mod.failed({"rows": rows}) == []   # skipped rows do not fail the command


@pytest.mark.slow
def test_units_are_reused_only_when_commit_and_config_match(tmp_path, monkeypatch):
    calls = []
    real = bench_mod.run_unit
    monkeypatch.setattr(bench_mod, "run_unit", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(bench_mod, "clean_commit", lambda: "c1")
    kw = dict(methods="rotation", data=DATA, budget="smoke", out=tmp_path / "b", log=lambda *_: None)
    first = bench_mod.bench(**kw)
    n = len(calls)
    assert n == len(first["rows"]) == 4   # rotation, supervised, random, pixels
    again = bench_mod.bench(**kw)
    assert len(calls) == n and again["rows"] == first["rows"]          # all reused
    assert again["unit_minutes"] == first["unit_minutes"] > 0 and again["units"] == 4   # ... with their recorded time
    assert f"Time: 4 units took {first['unit_minutes']:g} minutes in all" in (tmp_path / "b" / "bench.md").read_text()
    monkeypatch.setattr(bench_mod, "clean_commit", lambda: "c2")       # another commit: all run again
    bench_mod.bench(**kw)
    assert len(calls) == 2 * n
    monkeypatch.setattr(bench_mod, "clean_commit", lambda: None)       # a modified checkout: nothing reused
    bench_mod.bench(**kw)
    assert len(calls) == 3 * n


def test_config_hash_changes_with_what_decides_a_unit():
    from selfsup.app.budgets import get_budget
    from selfsup.data.datasets import load_dataset
    data = load_dataset(DATA)
    key = lambda seed, budget: bench_mod.config_hash(bench_mod.unit_key("rotation", "resnet18_quarter", data, seed, get_budget(budget)))  # noqa: E731
    assert key(0, "smoke") == key(0, "smoke")
    assert len({key(0, "smoke"), key(1, "smoke"), key(0, "cpu")}) == 3


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "--methods nope: unknown method"),
    (["--methods", "supervised"], "--methods supervised: uses labels"),
    (["--budget", "huge"], "--budget huge: unknown budget"),
    (["--seeds", "0"], "--seeds must be at least 1"),
])
def test_bad_bench_options_are_one_line_errors(argv, message, tmp_path, capsys):
    assert main(["bench", "--data", DATA, "--out", str(tmp_path / "b"), "--no-record", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfsup: error: ") and message in err and "\n" not in err


def test_the_smoke_budget_subsamples_stratified_and_the_chart_lists_skipped_subjects(tmp_path):
    import dataclasses

    from selfsup.app.budgets import get_budget
    from selfsup.data.datasets import load_dataset
    data = load_dataset(DATA)
    small = bench_mod.subsample(data, dataclasses.replace(get_budget("smoke"), subsample=100, test_subsample=30))
    assert len(small.train) == 100 and len(small.test) == 30
    counts = torch.bincount(small.train.labels, minlength=data.train.num_classes)
    assert counts.min() >= 9 and counts.max() <= 11          # stratified: ten per class
    table = [{"subject": "rotation", "backbone": "r", "seeds": 1, "status": "ok", "knn": 0.8, "linear": 0.85,
              "ft_1pct": 0.5, "ft_10pct": 0.7, "ft_100pct": 0.9},
             {"subject": "supervised", "backbone": "r", "seeds": 1, "status": "ok", "ft_1pct": 0.4, "ft_10pct": 0.6,
              "ft_100pct": 0.92},
             {"subject": "clip", "backbone": "r", "seeds": 1, "status": "skipped"}]
    drawn, left = bench_mod._drawn(table)
    assert [t["subject"] for t in drawn] == ["rotation", "supervised"] and left == ["clip (skipped)"]
    bench_mod.bar_chart(table, tmp_path / "c.png", "t")
    bench_mod.efficiency_plot(table, tmp_path / "e.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 5000 and (tmp_path / "e.png").stat().st_size > 5000


def test_the_best_method_and_its_supervised_references_fine_tune_on_all_labels(tmp_path, monkeypatch):
    cpu = bench_mod.get_budget("cpu")
    row = lambda s, b, lin=None, status="ok": {"subject": s, "backbone": b, "status": status} | (
        {"linear": lin} if lin is not None else {})
    rows = [row("simclr", "resnet18_quarter", 0.90), row("mae", "vit_micro", 0.95, status="error"),
            row("dino", "vit_micro", 0.93), row("rotation", "resnet18_quarter", 0.85),
            row("supervised", "resnet18_quarter"), row("supervised", "vit_micro"), row("random", "vit_micro", 0.99)]
    assert cpu.ft_full == 1   # a failed unit and a baseline are never "the best method"
    assert bench_mod.full_finetune_subjects(rows, cpu) == [
        ("dino", "vit_micro"), ("supervised", "resnet18_quarter"), ("supervised", "vit_micro")]
    assert bench_mod.full_finetune_subjects(rows[:1] + rows[3:5], cpu) == [
        ("simclr", "resnet18_quarter"), ("supervised", "resnet18_quarter")]
    assert bench_mod.full_finetune_subjects(rows, bench_mod.get_budget("smoke")) == []   # smoke: every unit did

    calls = []
    monkeypatch.setattr(bench_mod, "_finetunes", lambda kw, data, seed, budget, row, fractions=None, progress=False:
                        calls.append((kw, list(fractions or bench_mod.FT_FRACTIONS))))
    bench_mod.run_unit("supervised", "resnet18_quarter", None, 0, cpu, tmp_path)
    bench_mod.run_unit("supervised", "vit_micro", None, 0, cpu, tmp_path, part="ft100")
    bench_mod.run_unit("simclr", "resnet18_quarter", None, 0, cpu, tmp_path, part="ft100")
    assert calls == [({"baseline": "supervised", "backbone": "resnet18_quarter"}, [0.01, 0.1]),
                     ({"baseline": "supervised", "backbone": "vit_micro"}, [1.0]),
                     ({"checkpoint": tmp_path / "runs" / "simclr-seed0"}, [1.0])]


def test_the_machine_line_names_the_vector_instructions_and_bf16(monkeypatch):
    # two machines with the same CPU model name differ 2x here by these; the records must say which
    from selfsup.engine import loop
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(loop, "native_bf16", lambda: False)
    assert "(AVX2, no native bf16)" in bench_mod.machine()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    assert "(AVX512, native bf16)" in bench_mod.machine()


def test_the_table_says_which_methods_beat_both_baselines_by_a_point():
    # issue 17's column: each probe against the better of its own backbone's random-init network and the pixels
    line = lambda s, b, knn=None, lin=None: {"subject": s, "backbone": b, "seeds": 1, "status": "ok", "errors": []} | (
        {"knn": knn} if knn is not None else {}) | ({"linear": lin} if lin is not None else {})
    table = [line("simclr", "resnet18_quarter", 0.85, 0.90), line("rotation", "resnet18_quarter", 0.84, 0.885),
             line("mae", "vit_micro", 0.83, 0.86), line("clip", "resnet18_quarter") | {"status": "skipped"},
             line("random", "resnet18_quarter", 0.80, 0.88), line("random", "vit_micro", 0.70, 0.75),
             line("pixels", "", 0.82, 0.84), line("supervised", "resnet18_quarter")]
    got = bench_mod.beats_baselines(table)
    assert set(got) == {("simclr", "resnet18_quarter"), ("rotation", "resnet18_quarter"), ("mae", "vit_micro"),
                        ("clip", "resnet18_quarter")}
    (g, ok), (g2, ok2) = got[("simclr", "resnet18_quarter")]["knn"], got[("simclr", "resnet18_quarter")]["linear"]
    assert ok and ok2 and abs(g - 0.03) < 1e-9 and abs(g2 - 0.02) < 1e-9        # over pixels (kNN), random (linear)
    assert got[("rotation", "resnet18_quarter")]["knn"][1] and not got[("rotation", "resnet18_quarter")]["linear"][1]
    assert got[("mae", "vit_micro")]["linear"][1]              # against its own ViT's random-init, not the conv net's
    text = bench_mod.learns(got)
    assert "2 of 3 methods (simclr, mae); not: rotation. Not measured: clip." in text   # skipped: not a "not"
    summary = {"data": "d", "budget": dataclasses.asdict(bench_mod.get_budget("smoke")), "seeds": 1, "rows": [],
               "table": table, "unit_minutes": 1.0, "units": 7, "load": [None, None]}
    md = bench_mod.markdown(summary)
    assert "| yes (+2.0) / no (+0.5) |" in md and "| yes (+3.0) / yes (+2.0) |" in md and "2 of 3 methods" in md
