"""Every script under benchmarks/ runs end to end in its ``--smoke`` mode (seconds, tiny data), prints
the table it would record, writes it into its ``--out`` folder's BENCHMARKS.md and leaves the
repository as it was, so a broken benchmark fails CI instead of breaking silently. The scripts are
found by listing benchmarks/*.py: a new one without a smoke mode (or without a check below) fails.

The runs go two at a time (much of each is single-threaded start-up), in the order the tests ask for
them, so the file takes about half the sum of its runs on two cores."""
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
# modules under benchmarks/ that are not scripts: imported by them, no command line of their own
LIBRARIES = {"record.py": "record() and smoke_dir(), the BENCHMARKS.md writer every script calls",
             "per_image.py": "the per-image torchvision pipeline that augment_speed.py and step_speed.py compare against"}
OWN_TEST = {"gpu_check.py": "tests/test_gpu_check.py runs its --dry-run (alias --smoke): the GPU check's code path on the CPU"}
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in LIBRARIES and p.name not in OWN_TEST)
PROBES = ("knn", "linear")

# per script: its BENCHMARKS.md section, the first cells of the table rows it must print, and the files
# (under --out) it must have written
EXPECT = {
    "augment_speed.py": ("augment-speed", ["28x28 grey", "32x32 RGB"], []),
    "train_speed.py": (r"train-speed-\w+", ["resnet18_quarter"], []),
    "simclr_fashion_mnist.py": ("simclr-fmnist-2ep", ["SimCLR", "SimCLR (best stage)", "random-init (best stage)", "raw pixels"],
                                ["seed0/config.json", "seed0/eval/knn.json"]),
    "simclr_tuning.py": ("simclr-tuning", ["`(defaults)`"], ["simclr_tuning.json", "defaults/config.json"]),
    "tune.py": ("tune-rotation-shapes", ["`(defaults)`", "baseline: pixels", "baseline: random:resnet18_quarter"],
                ["results/tune-rotation-shapes.json"]),
    "pretext.py": ("pretext", ["rotation", "inpainting", "jigsaw", "colorization", "random-init", "raw pixels"],
                   ["results/smoke/colorization-shapes-seed0.json"]),
    "contrastive.py": ("contrastive", ["simclr", "moco", "mocov3", "dino", "random-init", "raw pixels",
                                       "DINO-trained vit_micro", "random-init vit_micro"],
                       ["results/smoke/dino-vit_micro-attention-shapes-seed0.json"]),
    "dino_attention.py": ("dino-attention", ["DINO-trained vit_micro_p8", "random-init vit_micro_p8"],
                          ["results/dino-attention/vit_micro_p8-1ep-out-dim-64-seed0.json",
                           "results/dino-attention/vit_micro_p8-1ep-out-dim-64-seed0.png"]),
    "mae_converged.py": ("mae-converged", ["MAE pretrained, fine-tuned (vit_micro)", "same ViT from scratch",
                                           "raw pixels: kNN / linear"],
                         ["results/mae-converged/pixels.json", "results/mae-converged/vit_micro-1ep-ft1ep-mae-seed0.json",
                          "results/mae-converged/vit_micro-1ep-ft1ep-scratch-seed0.json"]),
    "mae.py": ("mae", ["masked-patch error on test: MAE", "fine-tuning, 100% labels: MAE fine-tuned",
                       "fine-tuning, 10% labels: same ViT from scratch"], ["results/smoke/mae-vit_micro-shapes-free-seed0.json"]),
    "label_efficiency.py": ("label_efficiency", ["supervised", "simclr"], ["label_efficiency.png", "ft-simclr-50pct-s1.json",
                                                                        "linear-simclr-100pct-s0.json", "runs/simclr/backbone.safetensors"]),
    "compile_speed.py": ("compile-speed", ["eager, fp32", "compiled, fp32", "eager, bf16 + channels_last",
                                           "compiled, bf16 + channels_last"], []),
    "step_speed.py": ("step-speed", ["simclr", "rotation", "moco", "dino", "mae"], []),
    "clip.py": ("clip", ["CLIP (text tower from scratch)", "locked pretrained all-MiniLM-L6-v2 (LiT)",
                         "trained from scratch (control)"], ["results/smoke/clip-fashion-unseen-lit-seed0.json"]),
}


def repo_state() -> tuple[str, dict]:
    """git status (tracked changes and untracked files) and the modification times of what a benchmark
    records into; ("", {}) parts where there is no git checkout."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        status = ""
    watched = [ROOT / "BENCHMARKS.md", *sorted((BENCH / "results").rglob("*"))]
    return status, {str(p): p.stat().st_mtime_ns for p in watched if p.exists()}


def rows(section: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every markdown table row of ``section``."""
    out = {}
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.setdefault(cells[0], cells[1:])
    return out


def row(table: dict, label: str) -> list[str]:
    """The row whose first cell is ``label``, else the first that starts with it (labels carry details)."""
    if label in table:
        return table[label]
    found = [v for k, v in table.items() if k.startswith(label)]
    assert found, f"no table row '{label}' in {list(table)}"
    return found[0]


def run_smoke(script: str, tmp: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """``python benchmarks/SCRIPT --smoke --out TMP/out`` from the temp folder TMP (so nothing lands in
    the working directory), with the repository on the path and the test session's data cache."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "out"
    # one thread each: two smoke runs share the cores, and torch's thread pools oversubscribed slow a
    # 10-step fine-tune from 1 s to 47 s here (the CI machine's label_efficiency smoke ran past 240 s)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SELFSUP_CACHE": os.environ.get("SELFSUP_CACHE", str(tmp / "cache")),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(out)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=480)
    return proc, out


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The repository's state before any run, and script -> a future of its smoke run, for the scripts
    this session selected, started two at a time in test order."""
    selected = [item.callspec.params["script"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_smoke_mode" and item.callspec.params["script"] in EXPECT]
    base = tmp_path_factory.mktemp("smoke")
    before = repo_state()
    workers = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = {s: pool.submit(run_smoke, s, base / s.removesuffix(".py")) for s in dict.fromkeys(selected)}
    yield before, futures
    pool.shutdown(cancel_futures=True)


def test_every_script_is_checked():
    assert SCRIPTS, "no benchmark scripts found"
    missing = sorted(set(SCRIPTS) - set(EXPECT))
    assert not missing, f"benchmarks without a smoke check here (add one, and a --smoke mode): {missing}"
    assert not set(EXPECT) - set(SCRIPTS), "a checked script is gone: drop its entry"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke_mode(script, smoke_runs):
    assert script in EXPECT, f"benchmarks/{script} has no smoke check in tests/test_benchmarks.py"
    section_name, labels, files = EXPECT[script]
    before, futures = smoke_runs
    proc, out = futures[script].result()
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    # (runs overlap two at a time: the one that changed it may be this script or the one beside it)
    assert repo_state() == before, "a --smoke run changed the repository (BENCHMARKS.md, benchmarks/results/ or git status)"

    md = (out / "BENCHMARKS.md").read_text()
    m = re.search(rf"<!-- bench:({section_name}) -->(.*?)<!-- /bench:\1 -->", md, re.S)
    assert m, f"no section {section_name} in {out / 'BENCHMARKS.md'}:\n{md}"
    section = m.group(2)
    assert f"`python benchmarks/{script} --smoke --out " in section   # the command that made it
    assert section.count("\n|") >= 2 and not re.search(r"\b(nan|inf)\b", section, re.I), section
    table = rows(section)
    for label in labels:
        # every figure in the row is a finite, non-negative number
        # (a cell may hold two figures, "kNN / linear")
        figure = r"[-\d.,]+(x)?( ± [\d.]+)?"
        cells = [c for c in row(table, label) if re.fullmatch(rf"{figure}( / {figure})?", c)]
        assert cells, f"{script}: row '{label}' has no figures: {row(table, label)}"
        for c in cells:
            for part in c.split(" / "):
                x = float(part.split(" ± ")[0].rstrip("x").replace(",", ""))
                assert math.isfinite(x) and x >= 0, (label, c)
    for f in files:
        assert (out / f).is_file(), f"{script}: {f} not written under --out ({sorted(p.name for p in out.rglob('*'))})"

    if script == "augment_speed.py":
        for label in labels:   # views/s of ours (2 settings) and of torchvision
            assert all(float(c.replace(",", "")) > 0 for c in row(table, label)[:3]), row(table, label)
    if script == "train_speed.py":
        batch, steps, e2e, bound, _ = table["resnet18_quarter"]
        assert (batch, steps) == ("32", "2") and float(e2e) > 0 and float(bound) > 0
    if script == "simclr_fashion_mnist.py":   # probe accuracies
        for label in labels:
            assert all(0 <= float(c.split(" ± ")[0]) <= 1 for c in table[label][:2]), table[label]
    if script == "tune.py":
        backbone, minutes, *_, knn, linear = table["`(defaults)`"]   # trained at the smoke budget, probed
        from selfsup.app.budgets import get_budget
        assert float(minutes) == get_budget("smoke").minutes and 0 <= float(knn) <= 1 and 0 <= float(linear) <= 1
    # no unit of the smoke budget trains zero steps
    assert "steps\": 0," not in proc.stdout, proc.stdout


def _module(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py") + "_for_tests", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))   # the script imports record.py from its own folder
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_tune_names_its_files_by_the_whole_data_spec():
    # shapes:colors=free is another dataset than shapes: its trials and baselines must not share a file
    slug = _module("tune.py").file_slug
    assert slug("fashion-mnist") == "fashion-mnist" and slug("shapes") == "shapes"
    assert len({slug("shapes"), slug("shapes:colors=free"), slug("shapes:colors=class")}) == 3
    assert "/" not in slug("folder:/data/x") and ":" not in slug("shapes:colors=free")


def test_tune_attention_of_a_random_vit_is_seeded_and_a_share():
    import selfsup
    tune = _module("tune.py")
    data = selfsup.load_dataset("shapes:n=120,n_test=0,size=16")
    a, b = (tune.val_attention(None, data, 0, "vit_micro") for _ in range(2))
    assert a == b, (a, b)                                       # seeded: the random-init baseline is reproducible
    assert 0 < a["val_in_mask"] <= a["val_best_head"] <= 1 and 0 < a["val_area_share"] < 1
    assert a["val_lift"] == pytest.approx(a["val_in_mask"] / a["val_area_share"], abs=2e-3)


def test_cached_rows_are_reused_only_under_the_settings_that_made_them(tmp_path):
    # a unit saved under older defaults is made again, not reported as today's
    record = _module("record.py")
    made = []

    def make(value):
        return lambda: made.append(value) or {"value": value}
    path = tmp_path / "unit.json"
    assert record.cached(path, make(1), key={"lr": 0.1})["value"] == 1
    assert record.cached(path, make(2), key={"lr": 0.1})["value"] == 1      # same settings: reused
    assert record.cached(path, make(3), key={"lr": 0.2})["value"] == 3      # other settings: made again
    assert record.cached(path, make(4))["value"] == 3                       # no key: whatever is saved
    assert made == [1, 3]
