"""Choosing a method's defaults on the validation part of a dataset's train split (any method).

Each trial pretrains for a fixed wall-clock budget with some settings over the method's current
defaults, then scores kNN (T=0.1, k chosen on a held-out part of the bank, as ``eval knn`` does) and
the linear probe with a held-out stratified 1/6 of the train split as queries (``eval --on val``),
on the stage chosen by ``--layer auto`` inside the other 5/6: the test split is never looked at. The
random-init backbone and raw pixels get the same probes on the same split. Rows accumulate in
benchmarks/results/tune-METHOD-DATA.json and the table is rewritten into BENCHMARKS.md (section
tune-METHOD-DATA). With ``--attention`` (a ViT on a dataset with object masks, e.g. ``shapes``) each
trial also records the share of the last block's CLS attention inside the object on the same
held-out sixth, against the object's share of the image (``selfsup.eval.attention``): DINO's
attention target is chosen there, never on test.

    python benchmarks/tune.py jigsaw --data fashion-mnist --minutes 3 --trial "" --trial "lr=0.001"
    python benchmarks/tune.py dino --data shapes --backbone vit_micro --minutes 10 --attention --trial ""
    python benchmarks/tune.py --smoke [METHOD] [--out DIR]   # the smoke budget on tiny shapes (rotation), in seconds
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
from selfsup.app.budgets import get_budget  # noqa: E402


def parse_trial(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip()
    return out


def file_slug(spec: str) -> str:
    """The data spec as it names results files and sections: the options count, since
    ``shapes:colors=free`` is another dataset than ``shapes`` (their baselines differ)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in spec).strip("-")


def probe(**kw) -> dict:
    ev = selfsup.evaluate(["knn", "linear"], on="val", **kw)
    return {"val_knn": round(ev["knn"]["accuracy"], 4), "val_linear": round(ev["linear"]["accuracy"], 4),
            "layer": ev["knn"].get("layer"), "knn_k": ev["knn"].get("k")}


def val_attention(run_dir: Path | None, data, seed: int, backbone: str = "") -> dict:
    """Attention-in-mask of the run's ViT (``run_dir``), or with ``run_dir`` None of a random-init
    ``backbone`` (initialised as ``eval --baseline random --seed SEED`` does), on the held-out sixth of
    train that ``eval --on val`` scores on."""
    from selfsup.app.evaluate import eval_splits, random_encoder
    from selfsup.eval.attention import attention_report
    from selfsup.runs import load_backbone
    bank, held = eval_splits(data, seed, "val")
    if held.masks is None:
        raise SystemExit(f"--attention: {data.name} has no object masks (use shapes)")
    encoder = random_encoder(backbone, bank, seed) if run_dir is None else load_backbone(run_dir)
    rep = attention_report(encoder, held.images, held.masks)
    return {"val_in_mask": round(rep["in_mask"], 4), "val_best_head": round(rep["best_head"], 4),
            "val_area_share": round(rep["area_share"], 4), "val_lift": round(rep["lift"], 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method", nargs="?", help="the method to tune (required, but for --smoke: default rotation)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--budget", default="cpu", help="named budget: its backbone and minutes (--minutes overrides)")
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--trial", action="append", default=[], help="comma-separated key=value settings ('' = defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default runs/tuning (--smoke: a temp folder)")
    ap.add_argument("--attention", action="store_true", help="also the ViT's CLS attention inside the object masks "
                                                              "(shapes), on the validation sixth")
    ap.add_argument("--table-only", action="store_true", help="rewrite the BENCHMARKS.md table from the results file")
    ap.add_argument("--smoke", action="store_true", help="seconds: the smoke budget on tiny shapes; results and "
                                                         "BENCHMARKS.md in --out")
    args = ap.parse_args()
    results_root = HERE / "results"
    if args.smoke:
        args.out, args.data, args.budget = smoke_dir(args.out), SMOKE_DATA, "smoke"
        args.method = args.method or "rotation"
        results_root = args.out / "results"
    if not args.method:
        ap.error("the following arguments are required: method")
    args.out = args.out or "runs/tuning"
    budget = get_budget(args.budget)
    minutes = args.minutes or budget.minutes
    backbone = args.backbone or budget.backbone
    data_slug = "shapes" if args.smoke else file_slug(args.data)   # smoke: one fixed dataset, in a temp folder
    slug = f"{args.method}-{data_slug}"
    results = results_root / f"tune-{slug}.json"
    state = json.loads(results.read_text()) if results.exists() else {"baselines": {}, "rows": []}
    data = selfsup.load_dataset(args.data)

    def save():
        results.parent.mkdir(exist_ok=True)
        results.write_text(json.dumps(state, indent=1) + "\n")

    shared_path = results_root / f"tune-baselines-{data_slug}-seed{args.seed}.json"
    shared = json.loads(shared_path.read_text()) if shared_path.exists() else {}
    for kind in ("pixels", f"random:{backbone}"):
        # a baseline without "knn_k" was probed with the old fixed k=200: probe it again
        if "knn_k" not in state["baselines"].get(kind, {}):   # absent, or stale
            if "knn_k" not in shared.get(kind, {}):   # the same probes on the same split for every method: computed once
                kw = {"baseline": "pixels"} if kind == "pixels" else {"baseline": "random", "backbone": backbone, "layer": "auto"}
                shared[kind] = probe(data=data, seed=args.seed, **kw)
                shared_path.parent.mkdir(exist_ok=True)
                shared_path.write_text(json.dumps(shared, indent=1) + "\n")
            if kind in state["baselines"]:   # stale: kept beside the new figures, since older rows were compared with it
                state.setdefault("old_baselines", {})[kind] = state["baselines"][kind]
            state["baselines"][kind] = dict(shared[kind])
        elif not (args.attention and kind != "pixels" and "val_lift" not in state["baselines"][kind]):
            continue
        if args.attention and kind != "pixels":   # the random ViT's attention: a lift of about 1
            state["baselines"][kind].update(val_attention(None, data, args.seed, backbone))
        print(kind, state["baselines"][kind], flush=True)
        save()
    for trial in ([] if args.table_only else args.trial or [""]):
        settings = parse_trial(trial)
        run_dir = Path(args.out) / slug / backbone / (trial.replace(",", "_").replace("=", "") or "defaults")   # one per backbone
        t0 = time.time()
        res = selfsup.train(args.method, data=data, out=run_dir, overwrite=True, progress=False, backbone=backbone,
                            time_limit=minutes, epochs=budget.max_epochs, seed=args.seed, **settings)
        train_s = time.time() - t0
        row = {"settings": trial or "(defaults)", "backbone": backbone, "minutes": minutes, "seed": args.seed,
               "steps": res.steps, "epochs": round(res.steps * res.config.batch_size / len(data.train), 2),
               "train_s": round(train_s), **probe(checkpoint=run_dir, data=data, seed=args.seed, layer="auto"),
               **(val_attention(run_dir, data, args.seed) if args.attention else {}),
               "config": json.loads((run_dir / "config.json").read_text())}
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
        state["rows"].append(row)
        save()
    b = state["baselines"]
    att = any("val_lift" in r for r in state["rows"])
    table = ["| settings (over the defaults of the time) | backbone | budget (min) | seed | epochs | stage | kNN k | val kNN | val linear |"
             + (" attention inside the object (val) | object's share | lift |" if att else ""),
             "|---|---|---:|---:|---:|---|---:|---:|---:|" + ("---:|---:|---:|" if att else "")]
    for r in state["rows"]:
        a = (f" {r['val_in_mask']:.4f} | {r['val_area_share']:.4f} | {r['val_lift']:.2f} |" if "val_lift" in r else " — | — | — |") \
            if att else ""
        table.append(f"| `{r['settings']}`{' (' + r['note'] + ')' if r.get('note') else ''} | {r['backbone']} | {r['minutes']:g} | "
                     f"{r['seed']} | {r['epochs']} | {r['layer'] or 'last'} | {r.get('knn_k') or 200} | {r['val_knn']:.4f} | "
                     f"{r['val_linear']:.4f} |" + a)
    for kind, v in b.items():
        table.append(f"| baseline: {kind} | | | {args.seed} | | {v['layer'] or '—'} | {v.get('knn_k') or 200} | "
                     f"{v['val_knn']:.4f} | {v['val_linear']:.4f} |"
                     + ((f" {v['val_in_mask']:.4f} | {v['val_area_share']:.4f} | {v['val_lift']:.2f} |" if "val_lift" in v
                         else " | | |") if att else ""))
    body = ("Validation = a seeded stratified 1/6 of the train split as queries, the other 5/6 as the bank and "
            "linear training set (`selfsup eval knn linear --on val --layer auto`); the test split is not used. "
            "kNN k: the k chosen on a held-out part of the bank (200: the fixed k of rows probed before that). "
            "Each row is one trial run through this script (earlier rows came from the same script with other "
            "`--trial` values; each row's full config is in the results JSON).\n\n" + "\n".join(table))
    print(body)
    record(f"tune-{slug}", f"{args.method}: settings chosen on the validation split ({args.data})", body)


if __name__ == "__main__":
    main()
