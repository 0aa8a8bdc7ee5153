"""Choosing SimCLR's small-grey-image defaults on the validation part of Fashion-MNIST's train split.

Each trial pretrains for a fixed wall-clock budget with some settings and scores kNN (k=200,
T=0.1) with a held-out 1/6 of the train split as queries (``eval --on val``): the test split is
never looked at. Results accumulate in benchmarks/results/simclr_tuning.json (one row per trial,
with its settings) and the whole table is rewritten into BENCHMARKS.md.

    python benchmarks/simclr_tuning.py --minutes 4 --trial "temperature=0.2" --trial "temperature=0.5,lr=0.001"
    python benchmarks/simclr_tuning.py --smoke [--out DIR]   # 2 epochs of tiny shapes per trial, in seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import selfsup  # noqa: E402
from record import SMOKE_DATA, record, smoke_dir  # noqa: E402
from selfsup.app.train import resolve_config  # noqa: E402
from tune import parse_trial  # noqa: E402

RESULTS = HERE / "results" / "simclr_tuning.json"
BASE_KEYS = ("color_strength", "temperature", "crop_min")


def main():
    global RESULTS
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--trial", action="append", default=[], help="comma-separated key=value settings ('' = defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default runs/tuning (--smoke: a temp folder)")
    ap.add_argument("--table-only", action="store_true", help="rewrite the BENCHMARKS.md table from the results file")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: 2 epochs of tiny shapes per trial; the results file and BENCHMARKS.md in --out")
    args = ap.parse_args()
    data, epochs = "fashion-mnist", 1000   # the wall clock ends each trial
    if args.smoke:
        args.out, data, epochs = smoke_dir(args.out), SMOKE_DATA, 2
        RESULTS = args.out / RESULTS.name
    args.out = args.out or "runs/tuning"
    n_train = len(selfsup.load_dataset(data).train)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    cfg, mcfg = resolve_config("simclr")
    base = ",".join(f"{k}={getattr(c, k)}" for c, keys in ((cfg, ("lr", "batch_size")), (mcfg, BASE_KEYS)) for k in keys)
    for trial in ([] if args.table_only else args.trial or [""]):
        settings = parse_trial(trial)
        run_dir = Path(args.out) / (trial.replace(",", "_").replace("=", "") or "defaults")
        t0 = time.time()
        res = selfsup.train("simclr", data=data, out=run_dir, overwrite=True, progress=False,
                            time_limit=args.minutes, epochs=epochs, seed=args.seed, **settings)
        train_s = time.time() - t0
        knn = selfsup.evaluate("knn", checkpoint=run_dir, on="val")["knn"]["accuracy"]
        row = {"settings": trial or "(defaults)", "base": base, "minutes": args.minutes, "seed": args.seed, "steps": res.steps,
               "epochs": round(res.steps * res.config.batch_size / n_train, 2), "val_knn": round(knn, 4),
               "train_s": round(train_s), "images_per_s": round(res.images_per_s)}
        print(json.dumps(row))
        rows.append(row)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    table = ["| settings | over the defaults then | budget (min) | seed | steps | epochs | val kNN |",
             "|---|---|---:|---:|---:|---:|---:|"]
    table += [f"| `{r['settings']}` | `{r['base']}` | {r['minutes']:g} | {r['seed']} | {r['steps']} | {r['epochs']} | "
              f"{r['val_knn']:.4f} |" for r in rows]
    pix = selfsup.evaluate("knn", baseline="pixels", data=data, on="val")["knn"]["accuracy"]
    rnd = selfsup.evaluate("knn", baseline="random", data=data, on="val")["knn"]["accuracy"]
    print(f"baselines on the validation split: raw pixels {pix:.4f}, random-init {rnd:.4f}")
    record("simclr-tuning", "SimCLR settings chosen on the validation split (Fashion-MNIST)",
           "Validation = a seeded stratified 1/6 of the train split as kNN queries, the other 5/6 as the bank "
           "(`selfsup eval knn --on val`); the test split is not used. Every trial ran through this script "
           "(one row per trial; the command above is the latest invocation, earlier rows came from the same "
           "script with other `--trial` values). The same probe on the same split gives raw pixels "
           f"{pix:.4f} and a random-init resnet18_quarter {rnd:.4f}.\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
