"""Issue 17's ViT attention target: DINO on ``shapes`` with the settings chosen on validation
(BENCHMARKS.md, "dino: settings chosen on the validation split (shapes)"), trained for a fixed number
of epochs per seed, then the share of the last block's CLS attention inside the object masks on the
first 1,000 *test* images (``selfsup.eval.attention.attention_vs_random``), against the object's
share of the image (uniform attention: 1x) and a random-init ViT of the same architecture.

Three figures per network: the mean over heads; the head ranked first on 1,000 *training* images
and scored on the test images (picked without looking at them: the honest per-head figure); and the
best head on the test images themselves (an upper bound, shown for reference). The picture of the
first seed's attention on 8 test images is written beside the results.

    python benchmarks/dino_attention.py --epochs 20 --seeds 3
    python benchmarks/dino_attention.py --smoke [--out DIR]   # tiny shapes, in seconds

Results are kept per seed in benchmarks/results/dino-attention/ and not recomputed.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import selfsup  # noqa: E402
import record as rec  # noqa: E402
from tune import parse_trial as parse_settings  # noqa: E402  (key=value,... settings)
from selfsup.eval.attention import attention_pictures, attention_vs_random  # noqa: E402
from selfsup.runs import load_backbone  # noqa: E402
from selfsup.runs.pictures import Picture, save_picture  # noqa: E402

TARGET = 2.0          # issue 17: at least twice the object's share of the image inside the mask
SETTINGS = "out_dim=64"   # chosen on validation (tune-dino-shapes): the mean-over-heads lift 1.25 -> 1.48 -> 1.65


def seed_key(seed: int, args) -> dict:
    """Everything that decides one seed's row: the resolved training config (defaults, this script's
    settings, the seed), the data's fingerprint and the number of scored images."""
    from selfsup.app.train import resolved_config
    config = resolved_config("dino", {"backbone": args.backbone, "epochs": args.epochs, "seed": seed,
                                      **parse_settings(args.settings)})
    data = dataset(args.data)
    return {"config": config, "data": data.name, "fingerprint": data.fingerprint, "n": args.n}


@functools.lru_cache(maxsize=2)
def dataset(spec: str):
    """The dataset ``spec`` names, loaded once for every seed's key."""
    return selfsup.load_dataset(spec)


def run_seed(seed: int, args, results: Path, runs: Path) -> dict:
    """One seed's row, reused from ``results`` only when it was made under the same settings (record.cached)."""
    slug = "".join(c if c.isalnum() else "-" for c in args.settings)
    path = results / f"{args.backbone}-{args.epochs:g}ep-{slug}-seed{seed}.json"

    def make() -> dict:
        run_dir = runs / f"dino-{args.backbone}-seed{seed}"
        t0 = time.time()
        res = selfsup.train("dino", data=args.data, out=run_dir, overwrite=True, progress=False, backbone=args.backbone,
                            epochs=args.epochs, seed=seed, **parse_settings(args.settings))
        train_min = (time.time() - t0) / 60
        rep = attention_vs_random(run_dir, data=args.data, n=args.n, seed=seed)
        row = {"seed": seed, "backbone": args.backbone, "settings": args.settings, "epochs": args.epochs,
               "steps": res.steps, "train_min": round(train_min, 2), "images_per_s": round(res.images_per_s),
               "attention": rep}
        if seed == 0:
            row["picture"] = picture(run_dir, args, rep, path.with_suffix(".png"))
        t = rep["trained"]
        row["lift"], row["chosen_head_lift"] = round(t["lift"], 3), round(t["chosen_head_lift"], 3)
        return row
    return rec.cached(path, make, key=seed_key(seed, args))


def picture(run_dir: Path, args, rep: dict, path: Path) -> str:
    """The attention of every head on the first 8 test images, the chosen head's row marked."""
    from selfsup.data.datasets import load_dataset
    enc = load_backbone(run_dir)
    images = load_dataset(args.data).test.images[:8]
    att = attention_pictures(enc, images)
    heads = len(att) // len(images) - 2
    chosen = rep["trained"]["chosen_head"]
    rows = ("test image", *(f"head {h + 1}" + (" (chosen on train)" if h == chosen else "") for h in range(heads)),
            "image x mean attention")
    save_picture(Picture(att, rows), path)
    return path.name


def ms(xs: list[float], digits: int = 2) -> str:
    if len(xs) > 1:
        return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"
    return f"{xs[0]:.{digits}f}"


def table(rows: list[dict], args) -> str:
    area = statistics.mean(r["attention"]["trained"]["area_share"] for r in rows)
    lines = [f"DINO `--backbone {args.backbone} --epochs {args.epochs:g} --set {args.settings}` on `{args.data}`, "
             f"{len(rows)} seed(s), mean ± sample std. Attention = the last block's CLS attention over the patches, "
             f"renormalised; scored on the first {rows[0]['attention']['n']} test images (object's share of the "
             f"image: {area:.4f}). The chosen head is ranked first on {rows[0]['attention']['head_chosen_on']} "
             "training images, then scored on test. Lift = share inside the object / object's share "
             f"(uniform attention: 1.00). Target (issue 17): lift ≥ {TARGET:g}.\n",
             "| network | mass inside the object, mean over heads | lift | chosen head: mass inside | chosen head: lift | "
             "best head on test (upper bound): lift |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, name in (("trained", f"DINO-trained {args.backbone}"), ("random", f"random-init {args.backbone}")):
        reps = [r["attention"][key] for r in rows]
        lines.append(f"| {name} | {ms([x['in_mask'] for x in reps], 4)} | {ms([x['lift'] for x in reps])} | "
                     f"{ms([x['chosen_head_in_mask'] for x in reps], 4)} | {ms([x['chosen_head_lift'] for x in reps])} | "
                     f"{ms([x['best_head'] / x['area_share'] for x in reps])} |")
    chosen = [r["attention"]["trained"]["chosen_head_lift"] for r in rows]
    mean_lift = [r["attention"]["trained"]["lift"] for r in rows]
    met = all(c >= TARGET for c in chosen)
    lines += ["", "| seed | epochs | steps | minutes | images/s | lift (mean over heads) | chosen head | its lift |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = r["attention"]["trained"]
        lines.append(f"| {r['seed']} | {r['epochs']:g} | {r['steps']} | {r['train_min']:.1f} | {r['images_per_s']} | "
                     f"{t['lift']:.2f} | {t['chosen_head'] + 1} | {t['chosen_head_lift']:.2f} |")
    lines += ["", f"- Chosen head ≥ {TARGET:g}x on every seed: **{'met' if met else 'missed'}** "
              f"({', '.join(f'{c:.2f}' for c in chosen)}).",
              f"- Mean over heads ≥ {TARGET:g}x: **{'met' if all(m >= TARGET for m in mean_lift) else 'missed'}** "
              f"({', '.join(f'{m:.2f}' for m in mean_lift)}).",
              f"- Picture (seed 0, 8 test images, a row per head): `{rows[0].get('picture', '')}` in the results folder."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--backbone", default="vit_micro_p8")
    ap.add_argument("--settings", default=SETTINGS, help="comma-separated key=value DINO settings")
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--n", type=int, default=1000, help="test images scored (and training images the head is chosen on)")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 epoch, 1 seed, all into --out")
    args = ap.parse_args()
    if args.smoke:
        out = rec.smoke_dir(args.out)
        args.data, args.epochs, args.seeds, args.n = rec.SMOKE_DATA, 1, 1, 32
        results = out / "results" / "dino-attention"
    else:
        import tempfile
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dino-attention-"))
        results = HERE / "results" / "dino-attention"
    rows = [run_seed(s, args, results, out / "runs") for s in range(args.seeds)]
    body = table(rows, args)
    print(body)
    rec.record("dino-attention", "DINO's attention on shapes, on test, 3 seeds (issue 17)", body)


if __name__ == "__main__":
    main()
