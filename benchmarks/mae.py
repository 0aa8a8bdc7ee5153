"""Issue 5's benchmark: MAE with the budget's ViT on Fashion-MNIST and ``shapes`` (colours by class, and free).

Per dataset and seed: MAE pretrains for the budget's wall-clock minutes; its masked-patch error on
test images against a trivial infill from the visible pixels (and against each patch's own mean),
with the training loss at the start and the end; kNN and linear on the stage chosen on validation,
beside a random-init ViT and raw pixels; and the claim that matters: the MAE backbone fine-tuned
against the same ViT trained from scratch (``supervised``) on the same labels (100% and 10%), with
the same augmentation, schedule (``--ft-minutes`` of wall clock per training run) and learning-rate
search (``--lrs``, chosen on a held-out sixth of the labelled images) for both arms.

    python benchmarks/mae.py --budget cpu --seeds 3
    python benchmarks/mae.py --smoke [--out DIR]   # the smoke budget on tiny shapes, one data set, in seconds

Results are kept per unit in benchmarks/results/BUDGET/*.json (committed) and not recomputed.
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
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import selfsup  # noqa: E402
from pretext import DATASETS, ms, results_dir, run_baseline, smoke  # noqa: E402
from record import cached, record  # noqa: E402
from selfsup.app.bench import unit_key  # noqa: E402
from selfsup.app.budgets import get_budget  # noqa: E402
from selfsup.app.finetune import FT_LRS  # noqa: E402
from selfsup.app.train import load_method, resolved_config  # noqa: E402

FRACTIONS = (1.0, 0.1)
# shapes with colours drawn independently of the class: in ``colors=class`` every arm reads the class off
# its colour and sits at the ceiling, so the fine-tuning claim cannot show there
MAE_DATASETS = {**DATASETS, "shapes-free": "shapes:colors=free"}


def pretrain(ds: str, data, seed: int, budget, out: Path) -> dict:
    run_dir = out / f"mae-{budget.vit}-{ds}-seed{seed}"

    def make():
        t0 = time.time()
        res = selfsup.train("mae", data=data, out=run_dir, overwrite=True, progress=False, backbone=budget.vit,
                            time_limit=budget.minutes, epochs=budget.max_epochs, seed=seed)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        method = load_method(run_dir)
        err = method.reconstruction_error(data.test.images[:2000], generator=torch.Generator().manual_seed(seed))
        ev = selfsup.evaluate(["knn", "linear"], checkpoint=run_dir, data=data, seed=seed, layer="auto")
        return {"method": "mae", "data": ds, "seed": seed, "steps": res.steps, "train_min": round((time.time() - t0) / 60, 2),
                "epochs": round(res.steps * res.config.batch_size / len(data.train), 2),
                "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"], "recon": err,
                "knn": ev["knn"]["accuracy"], "linear": ev["linear"]["accuracy"], "layer": ev["knn"]["layer"]}
    return cached(results_dir(budget) / f"mae-{budget.vit}-{ds}-seed{seed}.json", make,
                  key=unit_key("mae", budget.vit, data, seed, budget))


def finetune_arm(arm: str, ds: str, data, seed: int, fraction: float, budget, out: Path, lrs, minutes: float) -> dict:
    def make():
        kw = ({"checkpoint": out / f"mae-{budget.vit}-{ds}-seed{seed}"} if arm == "mae"
              else {"baseline": "supervised", "backbone": budget.vit})
        res = selfsup.finetune(data=data, label_fraction=fraction, seed=seed, lrs=lrs, time_limit=minutes, **kw)
        return {"arm": arm, "data": ds, "seed": seed, "fraction": fraction, "accuracy": res["accuracy"], "lr": res["lr"],
                "lr_search": res["lr_search"], "epochs": res["epochs"], "minutes": minutes}
    tag = "" if minutes == 1.0 else f"-{minutes:g}min"   # runs of other lengths are other units
    # the key holds the pretraining's (for the MAE arm), this run's settings and fine-tuning's own defaults (the
    # training recipe it resolves and the lr grid): a row made under other defaults is made again
    ft_config = resolved_config("supervised", {"backbone": budget.vit, "seed": seed, "time_limit": minutes, "epochs": 1000})
    key = {"pretrain": unit_key("mae", budget.vit, data, seed, budget) if arm == "mae" else None, "arm": arm,
           "backbone": budget.vit, "fingerprint": data.fingerprint, "seed": seed, "fraction": fraction,
           "lrs": [float(x) for x in (lrs or FT_LRS)], "minutes": minutes, "finetune_config": ft_config}
    return cached(results_dir(budget) / f"finetune-{arm}-{budget.vit}-{ds}-{fraction:g}-seed{seed}{tag}.json", make,
                  key=key)


def table(pre: list, base: list, ft: list, budget, args) -> str:
    lines = []
    for ds in MAE_DATASETS:
        ps = [r for r in pre if r["data"] == ds]
        if not ps:
            continue
        lines += [f"\n**{ds}** ({MAE_DATASETS[ds]}), {len(ps)} seed(s)\n",
                  "| | value |", "|---|---:|",
                  f"| epochs in the budget | {statistics.mean(r['epochs'] for r in ps):.2f} |",
                  f"| training loss, first / last log line | {ms([r['loss_first'] for r in ps])} / {ms([r['loss_last'] for r in ps])} |",
                  f"| masked-patch error on test: MAE ({ps[0]['recon']['metric']}) | {ms([r['recon']['model'] for r in ps])} |",
                  f"| ... infill from the visible pixels | {ms([r['recon']['infill'] for r in ps])} |",
                  f"| ... each patch's own mean (peeks at it) | {ms([r['recon']['patch_mean'] for r in ps])} |",
                  f"| kNN / linear: MAE (stage chosen on val: {', '.join(str(r['layer'] or 'last') for r in ps)}) | "
                  f"{ms([r['knn'] for r in ps])} / {ms([r['linear'] for r in ps])} |"]
        for kind, label in (("random", f"random-init {budget.vit}"), ("pixels", "raw pixels")):
            bs = [r for r in base if r["data"] == ds and r["method"] == kind]
            if bs:
                lines.append(f"| kNN / linear: {label} | {ms([r['knn'] for r in bs])} / {ms([r['linear'] for r in bs])} |")
        for fraction in FRACTIONS:
            for arm, label in (("mae", "MAE fine-tuned"), ("supervised", "same ViT from scratch")):
                fs = [r for r in ft if r["data"] == ds and r["arm"] == arm and r["fraction"] == fraction]
                if fs:
                    lrs = ", ".join(f"{r['lr']:g}" for r in fs)
                    lines.append(f"| fine-tuning, {fraction:.0%} labels: {label} (lr chosen: {lrs}) | {ms([r['accuracy'] for r in fs])} |")
    return (f"Budget `{budget.name}`: MAE pretrains `{budget.vit}` for {budget.minutes:g} wall-clock minutes per dataset "
            f"and seed on this 2-core machine with its defaults (`selfsup/methods/mae.py`); both fine-tuning arms train "
            f"{args.ft_minutes:g} wall-clock minutes per run with the `supervised` method's recipe, the learning rate "
            f"chosen from {args.lrs} on a held-out sixth of the labelled images (in the first {args.search_seeds} seed(s); "
            "later seeds reuse the rate seed 0 chose for the same arm, data and fraction), then retrained on all of them and "
            "scored once on the test split (shapes: its fixed 2k test set). kNN (k=200, T=0.1) and linear on the stage "
            "chosen per run on a validation sixth of train. Mean ± sample std over seeds.\n" + "\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ft-minutes", type=float, default=1.0, help="wall-clock minutes per fine-tuning run")
    ap.add_argument("--lrs", default="0.001,0.003")
    ap.add_argument("--search-seeds", type=int, default=1,
                    help="seeds that search --lrs; later seeds reuse the rate seed 0 chose for the same arm, data and fraction")
    ap.add_argument("--datasets", default=",".join(MAE_DATASETS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="seconds: the smoke budget on tiny shapes, one data set, one "
                    "seed, 0.01-minute fine-tuning at one rate; results and BENCHMARKS.md in --out (default: a temp folder)")
    args = ap.parse_args()
    if args.smoke:
        smoke(args, MAE_DATASETS)
        args.datasets, args.ft_minutes, args.lrs = "shapes-free", 0.01, "0.001"
    for ds in args.datasets.split(","):   # before any work, not after the first dataset's units
        if ds not in MAE_DATASETS:
            ap.error(f"--datasets {ds}: unknown (known: {', '.join(MAE_DATASETS)})")
    budget = get_budget(args.budget)
    out = Path(args.out or f"runs/bench-{budget.name}")
    lrs = [float(x) for x in args.lrs.split(",")]
    vit_budget = type(budget)(budget.name, budget.vit, budget.vit, budget.minutes, budget.max_epochs)  # baselines on the ViT
    pre, base, ft = [], [], []
    for seed in range(args.seeds):
        for ds in args.datasets.split(","):
            data = selfsup.load_dataset(MAE_DATASETS[ds])
            if seed == 0:
                base.append(run_baseline("pixels", ds, data, seed, budget, out))
            r = run_baseline("random", ds, data, seed, vit_budget, out)
            base.append(r)
            pre.append(pretrain(ds, data, seed, budget, out))
            for fraction in FRACTIONS:
                for arm in ("mae", "supervised"):
                    arm_lrs = lrs
                    if seed >= args.search_seeds:   # the learning rate the search chose for this arm at seed 0
                        arm_lrs = [next(r["lr"] for r in ft if r["data"] == ds and r["arm"] == arm
                                        and r["fraction"] == fraction and r["seed"] == 0)]
                    ft.append(finetune_arm(arm, ds, data, seed, fraction, budget, out, arm_lrs, args.ft_minutes))
    body = table(pre, base, ft, budget, args)
    print(body)
    if args.smoke or (args.datasets == ",".join(MAE_DATASETS) and args.ft_minutes == 1.0):
        record("mae", "MAE: reconstruction, probes and fine-tuning against the same ViT from scratch (issue 5)", body)


if __name__ == "__main__":
    main()
