"""Issue 3's benchmark: rotation, jigsaw and inpainting on Fashion-MNIST, all four pretext tasks on
``shapes`` (class-dependent colours), each trained for the ``cpu`` budget's wall-clock minutes,
probed by kNN and linear on the stage chosen on a validation part of train (``layer="auto"``),
beside the random-init backbone (same stage selection) and the raw pixels, and with each
method's pretext score beside a trivial reference.

    python benchmarks/pretext.py --budget cpu --seeds 3
    python benchmarks/pretext.py --smoke [--out DIR]   # the smoke budget on tiny shapes, in seconds

Each (method, dataset, seed) result is kept in benchmarks/results/BUDGET/*.json (committed) and not
recomputed, so an interrupted benchmark continues where it stopped; BENCHMARKS.md is rewritten from
all results. Run folders go to runs/bench-BUDGET.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import selfsup  # noqa: E402
from record import SMOKE_DATA, cached, record, smoke_dir  # noqa: E402
from selfsup.app.bench import unit_key  # noqa: E402
from selfsup.app.budgets import get_budget  # noqa: E402
from selfsup.app.train import load_method  # noqa: E402

PLAN = [("rotation", "fashion-mnist"), ("jigsaw", "fashion-mnist"), ("inpainting", "fashion-mnist"),
        ("rotation", "shapes"), ("jigsaw", "shapes"), ("colorization", "shapes"), ("inpainting", "shapes")]
DATASETS = {"fashion-mnist": "fashion-mnist", "shapes": "shapes:colors=class"}
SMOKE_PLAN = [(m, "shapes") for m in ("rotation", "jigsaw", "colorization", "inpainting")]   # each method once
RESULTS = HERE / "results"


def results_dir(budget) -> Path:
    """Where each unit's result JSON is kept (committed: the tables are rebuilt from these files)."""
    return RESULTS / budget.name


def smoke(args, datasets: dict = DATASETS) -> None:
    """``--smoke`` of this script and the ones built on it: the smoke budget, one seed, tiny shapes in
    place of every data set (keys kept), and the results, run folders and BENCHMARKS.md in ``args.out``
    (default: a temp folder) instead of the repository."""
    global RESULTS
    args.out, args.budget, args.seeds = smoke_dir(args.out), "smoke", 1
    RESULTS = args.out / "results"
    for k in datasets:
        datasets[k] = SMOKE_DATA


@torch.no_grad()
def pretext_score(run_dir: Path, method_name: str, test_images: torch.Tensor, seed: int) -> dict:
    """The method's own task on test images (eval mode, seeded augmentation) beside a trivial reference
    (None for methods without one)."""
    if method_name not in ("rotation", "jigsaw", "inpainting", "colorization"):
        return None
    method = load_method(run_dir)
    torch.manual_seed(seed)
    if method_name == "inpainting":
        g = torch.Generator().manual_seed(seed)
        err = method.reconstruction_error(test_images, generator=g)
        return {"metric": "hole MSE ([0,1] pixels)", "model": err["model"],
                "reference": {"mean fill": err["mean_fill"], "border interpolation": err["border_interpolation"]}}
    if method_name == "colorization":
        return {"metric": "ab L1 (Lab units)", **method.colorization_error(test_images)}
    accs, n = 0.0, 0
    for chunk in test_images.split(256):
        _, logs = method({"images": chunk})
        accs += float(logs["pretext_acc"]) * len(chunk)
        n += len(chunk)
    chance = 0.25 if method_name == "rotation" else 1 / len(method.permutations)
    return {"metric": "pretext accuracy", "model": accs / n, "reference": {"chance": chance}}


def run_one(method: str, ds_name: str, data, seed: int, budget, out: Path, backbone: str | None = None,
            tag: str = "") -> dict:
    backbone = backbone or budget.backbone
    run_dir = out / f"{method}{tag}-{ds_name}-seed{seed}"

    def make() -> dict:
        t0 = time.time()
        res = selfsup.train(method, data=data, out=run_dir, overwrite=True, progress=False, backbone=backbone,
                            time_limit=budget.minutes, epochs=budget.max_epochs, seed=seed)
        train_min = (time.time() - t0) / 60
        ev = selfsup.evaluate(["knn", "linear"], checkpoint=run_dir, data=data, seed=seed, layer="auto")
        return {"method": method, "data": ds_name, "seed": seed, "steps": res.steps,
                "epochs": round(res.steps * res.config.batch_size / len(data.train), 2), "train_min": round(train_min, 2),
                "images_per_s": round(res.images_per_s), "knn": ev["knn"]["accuracy"],
                "linear": ev["linear"]["accuracy"], "layer": ev["knn"]["layer"],
                "selection": ev["knn"]["layer_selection"],
                "pretext": pretext_score(run_dir, method, data.test.images, seed),
                "config": json.loads((run_dir / "config.json").read_text())}
    return cached(results_dir(budget) / f"{method}{tag}-{ds_name}-seed{seed}.json", make,
                  key=unit_key(method, backbone, data, seed, budget))


def run_baseline(kind: str, ds_name: str, data, seed: int, budget, out: Path) -> dict:
    backbone = "" if kind == "pixels" else budget.backbone

    def make() -> dict:
        kw = {"baseline": "pixels"} if kind == "pixels" else {"baseline": "random", "backbone": backbone, "layer": "auto"}
        ev = selfsup.evaluate(["knn", "linear"], data=data, seed=seed, **kw)
        return {"method": kind, "data": ds_name, "seed": seed, "knn": ev["knn"]["accuracy"],
                "linear": ev["linear"]["accuracy"], "layer": ev["knn"]["layer"],
                "selection": ev["knn"].get("layer_selection")}
    name = f"{kind}-{ds_name}-seed{seed}.json" if kind == "pixels" else f"{kind}-{backbone}-{ds_name}-seed{seed}.json"
    return cached(results_dir(budget) / name, make, key=unit_key(kind, backbone, data, seed, budget))


def ms(xs) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


TRIED = """Where the verdict column says no, what was tried (single-seed trials on the validation split, \
3 minutes each, in the sections `tune-jigsaw-fashion-mnist` and `tune-inpainting-fashion-mnist` below): for jigsaw a \
1000-permutation set and 16-px tiles, for inpainting twice the learning rate and the paper's central hole. No trial \
reached raw pixels' validation kNN, and none moved the linear probe by more than 0.007 (about the noise of one \
seed), so the defaults stayed. At three CPU-minutes these tasks run 0.5 to 1.5 epochs of Fashion-MNIST and their best features sit in \
the earliest stages, barely past a random network's. Later trials (2026-12-03, a faster machine: 2.2 epochs of \
jigsaw and 3.4 of inpainting in 3 minutes; kNN k chosen on the bank) tried longer training: 6 minutes moved jigsaw's validation kNN / linear \
from 0.856 / 0.890 to 0.864 / 0.891 and inpainting's from 0.855 / 0.893 to 0.862 / 0.883, still in \
stage 1 and short of the bars (pixels' kNN 0.867 and the random-init linear 0.885, each plus a \
point); jigsaw crop_min=0.3 (0.861 / 0.891) and inpainting hole_fraction=0.5 (0.854 / 0.880) fell \
short too, as did, in a third session, jigsaw gap=4 (0.863 / 0.887), lr=0.004 (0.866 / 0.889) and \
lr=0.008 (0.862 / 0.892), and inpainting overlap=0 (the loss on the hidden pixels only: 0.858 / 0.880), \
decoder_width=32 (0.851 / 0.884) and smaller blocks block_min=0.15,block_max=0.3 (0.856 / 0.891). In a fourth \
session jigsaw's board=true (the shuffled tiles laid out as one 36 px image for the backbone, so its deep stages see \
about the evaluated images' scale, rather than one 12 px pass per tile) gave 0.863 / 0.893, and with lr=0.004 \
0.865 / 0.892: the best jigsaw linear probe so far, still short of both bars and still in stage 1. \
Colorization's backbone sees \
only the Lab lightness, while the baselines see colour, which in `shapes:colors=class` gives the class away: its \
linear verdict is expected to be no, and it was not tuned. The same colour cue puts raw pixels' linear probe on shapes \
at 0.98; jigsaw (per-tile normalisation, grayscale) and inpainting learn little about colour, and no shapes-specific \
trials were run. The baselines were not weakened: the random-init backbone \
gets the same stage selection as every method."""


def verdict(rs: list[dict], sub: list[dict]) -> str:
    """Whether the mean of ``rs`` beats the means of both baselines, per probe (computed, not written)."""
    if rs[0]["method"] in ("random", "pixels"):
        return "—"
    out = []
    for probe in ("knn", "linear"):
        mine = statistics.mean(r[probe] for r in rs)
        lost = [b for b in ("random", "pixels")
                if any(r["method"] == b for r in sub) and mine <= statistics.mean(r[probe] for r in sub if r["method"] == b)]
        out.append("yes" if not lost else "no (" + ", ".join({"random": "random-init", "pixels": "pixels"}[b] for b in lost) + ")")
    return " / ".join(out)


def write_table(rows: list[dict], budget, seeds: int, command: str) -> str:
    lines = []
    for ds in DATASETS:
        sub = [r for r in rows if r["data"] == ds]
        if not sub:
            continue
        lines += [f"\n**{ds}** ({DATASETS[ds]})\n",
                  "| subject | kNN (best stage) | linear (best stage) | beats both baselines? kNN / linear | stage chosen on val (per seed) | "
                  "val kNN of the final embedding | pretext: model | pretext: trivial reference | epochs in budget |",
                  "|---|---:|---:|---|---|---:|---|---|---:|"]
        for name in ["rotation", "jigsaw", "colorization", "inpainting", "random", "pixels"]:
            rs = sorted([r for r in sub if r["method"] == name], key=lambda r: r["seed"])
            if not rs:
                continue
            label = {"random": "random-init", "pixels": "raw pixels"}.get(name, name)
            stages = ", ".join(str(r["layer"] or "last") for r in rs) if name != "pixels" else "—"
            final = ms([r["selection"]["final/default"] for r in rs]) if rs[0].get("selection") else "—"
            if "pretext" in rs[0]:
                p = rs[0]["pretext"]
                model = f"{p['metric']}: {ms([r['pretext']['model'] for r in rs])}"
                ref = "; ".join(f"{k} {statistics.mean(r['pretext']['reference'][k] for r in rs):.4f}" for k in p["reference"])
                ep = f"{statistics.mean(r['epochs'] for r in rs):.2f}"
            else:
                model = ref = ep = "—"
            lines.append(f"| {label} | {ms([r['knn'] for r in rs])} | {ms([r['linear'] for r in rs])} | {verdict(rs, sub)} "
                         f"| {stages} | {final} | {model} | {ref} | {ep} |")
    return ("Command: `" + command + f"`. Budget `{budget.name}`: {budget.minutes:g} wall-clock minutes of training per "
            f"method, dataset and seed on this 2-core machine, backbone `{budget.backbone}`, each method's own defaults "
            f"(batch size, lr: `selfsup/methods/*.py`); {seeds} seed(s), mean ± sample std. Probes on the official test "
            "split (shapes: its fixed 2k test set); the probed stage is chosen per run by kNN on a validation sixth of "
            "the labelled train split (candidates: each earlier stage average-pooled to a grid of at most 512 numbers, "
            "and the final embedding), the same selection for the random-init backbone; raw pixels have no stages. "
            "Pretext scores on test images with the method's own augmentation, eval mode.\n" + "\n".join(lines)
            + "\n\n" + TRIED)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of method:dataset to run (default: the whole plan)")
    ap.add_argument("--out", default=None, help="default runs/bench-BUDGET (results shared with the other benchmarks)")
    ap.add_argument("--smoke", action="store_true", help="seconds: the smoke budget on tiny shapes, one seed; "
                                                         "results and BENCHMARKS.md in --out (default: a temp folder)")
    args = ap.parse_args()
    if args.smoke:
        smoke(args)
    budget = get_budget(args.budget)
    out = Path(args.out or f"runs/bench-{budget.name}")
    plan = PLAN if not args.only else [tuple(x.split(":", 1)) for x in args.only.split(",")]
    if args.smoke and not args.only:
        plan = SMOKE_PLAN
    loaded = {ds: selfsup.load_dataset(spec) for ds, spec in DATASETS.items() if any(p[1] == ds for p in plan)}
    rows = []
    for seed in range(args.seeds):
        for ds, data in loaded.items():
            if seed == 0:  # raw pixels: no initialisation to vary (seed 0's val split for the linear penalty)
                rows.append(run_baseline("pixels", ds, data, seed, budget, out))
            rows.append(run_baseline("random", ds, data, seed, budget, out))
        for method, ds in plan:
            rows.append(run_one(method, ds, loaded[ds], seed, budget, out))
    cmd = "python benchmarks/pretext.py --budget " + args.budget + f" --seeds {args.seeds}" + (f" --only {args.only}" if args.only else "")
    body = write_table(rows, budget, args.seeds, cmd)
    print(body)
    if not args.only:
        record("pretext", "Pretext tasks: rotation, jigsaw, colorization, inpainting (issue 3)", body)


if __name__ == "__main__":
    main()
