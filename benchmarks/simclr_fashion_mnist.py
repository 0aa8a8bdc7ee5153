"""(c) SimCLR on Fashion-MNIST at a wall-clock budget: kNN and linear on the test split beside
the random-init and raw-pixel baselines, over several seeds, all through ``selfsup.evaluate``.

    python benchmarks/simclr_fashion_mnist.py --minutes 10 --seeds 3
    python benchmarks/simclr_fashion_mnist.py --smoke [--out DIR]   # 2 epochs of tiny shapes, one seed, in seconds
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

import selfsup  # noqa: E402
from record import SMOKE_DATA, record, smoke_dir  # noqa: E402


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--backbone", default="resnet18_quarter")
    ap.add_argument("--out", default=None, help="default runs/bench-simclr-fmnist (--smoke: a temp folder)")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 epochs of tiny shapes, one seed; everything into --out")
    args = ap.parse_args()
    epochs = 1000   # the wall clock ends each run
    if args.smoke:
        args.out, args.seeds, epochs = smoke_dir(args.out), 1, 2
    args.out = args.out or "runs/bench-simclr-fmnist"
    data = selfsup.load_dataset(SMOKE_DATA if args.smoke else "fashion-mnist")
    rows = {"SimCLR": {"knn": [], "linear": []}, "random-init": {"knn": [], "linear": []},
            "raw pixels": {"knn": [], "linear": []}}
    runs = []
    for seed in range(args.seeds):
        run_dir = Path(args.out) / f"seed{seed}"
        t0 = time.time()
        res = selfsup.train("simclr", data=data, out=run_dir, overwrite=True, progress=False, backbone=args.backbone,
                            time_limit=args.minutes, epochs=epochs, seed=seed)
        train_min = (time.time() - t0) / 60
        runs.append({"seed": seed, "steps": res.steps, "epochs": round(res.steps * res.config.batch_size / len(data.train), 2),
                     "train_min": round(train_min, 2), "images_per_s": round(res.images_per_s)})
        for name, kw in [("SimCLR", {"checkpoint": run_dir}),
                         ("random-init", {"baseline": "random", "backbone": args.backbone}),
                         ("raw pixels", {"baseline": "pixels"})]:
            r = selfsup.evaluate(["knn", "linear"], data=data, seed=seed, **kw)
            for p in ("knn", "linear"):
                rows[name][p].append(r[p]["accuracy"])
        print(json.dumps({**runs[-1], **{f"{n}/{p}": round(v[p][-1], 4) for n, v in rows.items() for p in v}}))
    table = ["| subject | kNN (k=200, T=0.1) | linear | per seed (kNN / linear) |", "|---|---:|---:|---|"]
    for name, v in rows.items():
        (km, ks), (lm, ls) = mean_std(v["knn"]), mean_std(v["linear"])
        per = ", ".join(f"{a:.4f} / {b:.4f}" for a, b in zip(v["knn"], v["linear"]))
        table.append(f"| {name} | {km:.4f} ± {ks:.4f} | {lm:.4f} ± {ls:.4f} | {per} |")
        print(f"{name:12s} kNN {km:.4f} ± {ks:.4f}   linear {lm:.4f} ± {ls:.4f}")
    cfg = json.loads((Path(args.out) / "seed0" / "config.json").read_text())
    settings = {k: cfg[k] for k in ("backbone", "optimizer", "lr", "weight_decay", "batch_size", "warmup_epochs")}
    runs_txt = "; ".join(f"seed {r['seed']}: {r['steps']} steps = {r['epochs']} epochs in {r['train_min']} min "
                         f"({r['images_per_s']} img/s)" for r in runs)
    body = ("\n".join(table) + f"\n\nTraining budget {args.minutes:g} wall-clock minutes per seed on this machine; "
            f"{runs_txt}.\nSettings: {json.dumps(settings)}; method: {json.dumps(cfg['method_config'])}.\n"
            "Evaluation on the official 10k test split, the 60k train split as kNN bank / linear-probe training set "
            "(L2 penalty chosen on a 10% validation part of train). Random-init: the same architecture, initialised "
            "with the seed, through the same code. Mean ± sample std over seeds.")
    record("simclr-fmnist", "SimCLR on Fashion-MNIST at a wall-clock budget (c)", body)


if __name__ == "__main__":
    main()
