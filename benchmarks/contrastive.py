"""Issue 4's benchmark: MoCo v2 (``moco``), MoCo v3 (``mocov3``) and DINO beside SimCLR, on
Fashion-MNIST and ``shapes`` (class-dependent colours), each trained for the ``cpu`` budget's
wall-clock minutes with its own defaults, probed by kNN and linear on the stage chosen on a
validation part of train (``layer="auto"``), beside the random-init backbone (same selection) and
raw pixels; then DINO with the budget's ViT on ``shapes`` and the share of its CLS attention inside
the object masks, against a random-init ViT of the same architecture.

    python benchmarks/contrastive.py --budget cpu --seeds 3
    python benchmarks/contrastive.py --smoke [--out DIR]   # the smoke budget on tiny shapes, in seconds

Results are kept per (method, dataset, seed) in benchmarks/results/BUDGET/*.json (shared with
benchmarks/pretext.py, so the baselines are computed once) and not recomputed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import selfsup  # noqa: E402
from pretext import DATASETS, ms, results_dir, run_baseline, run_one, smoke, verdict  # noqa: E402
from record import cached, record  # noqa: E402
from selfsup.app.bench import unit_key  # noqa: E402
from selfsup.app.budgets import get_budget  # noqa: E402
from selfsup.eval.attention import attention_vs_random  # noqa: E402

METHODS = ["simclr", "moco", "mocov3", "dino"]


def run_attention(data, seed: int, budget, out: Path) -> dict:
    """DINO on shapes with the budget's ViT, then attention-in-mask of it and of a random-init ViT."""
    def make() -> dict:
        row = run_one("dino", "shapes", data, seed, budget, out, backbone=budget.vit, tag=f"-{budget.vit}")
        rep = attention_vs_random(out / f"dino-{budget.vit}-shapes-seed{seed}", data=DATASETS["shapes"], n=1000, seed=seed)
        t, r = rep["trained"], rep["random"]
        print(json.dumps({"seed": seed, "in_mask": t["in_mask"], "random_in_mask": r["in_mask"], "area": t["area_share"]}),
              flush=True)
        return {**row, "attention": rep}
    return cached(results_dir(budget) / f"dino-{budget.vit}-attention-shapes-seed{seed}.json", make,
                  key=unit_key("dino", budget.vit, data, seed, budget) | {"attention_images": 1000})


def table(rows: list[dict], att: list[dict], budget, seeds: int, note: str = "") -> str:
    lines = []
    for ds in DATASETS:
        sub = [r for r in rows if r["data"] == ds]
        if not sub:
            continue
        lines += [f"\n**{ds}** ({DATASETS[ds]})\n",
                  "| subject | kNN | linear | beats both baselines? kNN / linear | stage chosen on val (per seed) | steps (per seed) | epochs in budget | images/s |",
                  "|---|---:|---:|---|---|---:|---:|---:|"]
        for name in METHODS + ["random", "pixels"]:
            rs = sorted([r for r in sub if r["method"] == name], key=lambda r: r["seed"])
            if not rs:
                continue
            label = {"random": "random-init", "pixels": "raw pixels"}.get(name, name)
            stages = ", ".join(str(r["layer"] or "last") for r in rs) if name != "pixels" else "—"
            ep = f"{statistics.mean(r['epochs'] for r in rs):.2f}" if "epochs" in rs[0] else "—"
            ips = f"{statistics.mean(r['images_per_s'] for r in rs):.0f}" if "images_per_s" in rs[0] else "—"
            steps = ", ".join(str(r["steps"]) for r in rs) if "steps" in rs[0] else "—"
            lines.append(f"| {label} | {ms([r['knn'] for r in rs])} | {ms([r['linear'] for r in rs])} | {verdict(rs, sub)} "
                         f"| {stages} | {steps} | {ep} | {ips} |")
    if att:
        lines += [f"\n**DINO attention on shapes** (`dino --backbone {budget.vit}`, {len(att)} seed(s); "
                  "last block's CLS attention, mean over heads and the first 1000 test images)\n",
                  "| subject | attention mass inside the object | best head | head chosen on training images: its mass | "
                  "object's share of the image | lift (mass / share) | chosen head's lift | kNN | linear |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, label in (("trained", f"DINO-trained {budget.vit}"), ("random", f"random-init {budget.vit}")):
            reps = [a["attention"][key] for a in att]
            knn = ms([a["knn"] for a in att]) if key == "trained" else "—"
            lin = ms([a["linear"] for a in att]) if key == "trained" else "—"
            chosen = [r for r in reps if "chosen_head" in r]
            ch = ms([r["chosen_head_in_mask"] for r in chosen]) if len(chosen) == len(reps) else "—"
            chl = ms([r["chosen_head_lift"] for r in chosen]) if len(chosen) == len(reps) else "—"
            lines.append(f"| {label} | {ms([r['in_mask'] for r in reps])} | {ms([r['best_head'] for r in reps])} | {ch} | "
                         f"{ms([r['area_share'] for r in reps])} | {ms([r['lift'] for r in reps])} | {chl} | {knn} | {lin} |")
    return (f"Budget `{budget.name}`: {budget.minutes:g} wall-clock minutes of training per method, dataset and seed on "
            f"this 2-core machine, backbone `{budget.backbone}`, each method's own defaults (`selfsup/methods/*.py`); "
            f"{seeds} seed(s), mean ± sample std. Probes (kNN k=200 T=0.1, linear) on the official test split "
            "(shapes: its fixed 2k test set), on the stage chosen per run by kNN on a validation sixth of the "
            "labelled train split (the same selection for the random-init backbone); raw pixels have no stages. "
            "DINO's saved backbone is its EMA teacher.\n" + (f"\n{note}\n" if note else "") + "\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attention-seeds", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=None, help="default runs/bench-BUDGET (shared with benchmarks/pretext.py)")
    ap.add_argument("--note", default="", help="a remark recorded with the table (e.g. how the runs were made)")
    ap.add_argument("--smoke", action="store_true", help="seconds: the smoke budget on tiny shapes only, one seed; "
                                                         "results and BENCHMARKS.md in --out (default: a temp folder)")
    args = ap.parse_args()
    if args.smoke:
        smoke(args)
    budget = get_budget(args.budget)
    out = Path(args.out or f"runs/bench-{budget.name}")
    # --smoke: shapes only (the attention part needs it), so each method trains once
    loaded = {ds: selfsup.load_dataset(spec) for ds, spec in DATASETS.items() if not args.smoke or ds == "shapes"}
    rows, att = [], []
    for seed in range(args.seeds):
        for ds, data in loaded.items():
            if seed == 0:
                rows.append(run_baseline("pixels", ds, data, seed, budget, out))
            rows.append(run_baseline("random", ds, data, seed, budget, out))
        for method in args.methods.split(","):
            for ds, data in loaded.items():
                rows.append(run_one(method, ds, data, seed, budget, out))
    for seed in range(args.attention_seeds):
        att.append(run_attention(loaded["shapes"], seed, budget, out))
    body = table(rows, att, budget, args.seeds, args.note)
    print(body)
    if args.methods == ",".join(METHODS):   # (--smoke: into its own folder's BENCHMARKS.md)
        record("contrastive", "MoCo v2, MoCo v3 and DINO beside SimCLR; DINO's attention maps (issue 4)", body)


if __name__ == "__main__":
    main()
