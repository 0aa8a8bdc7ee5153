"""``selfsup demo`` / ``make demo``: pretrain SimCLR on Fashion-MNIST with the CPU default backbone
for a few minutes, then print kNN and linear accuracy beside the random-init and raw-pixel baselines.
Both networks are probed at the stage ``--layer auto`` picks on validation (never on test): SimCLR's
best features sit in stage 2 on Fashion-MNIST, 3 points above its last stage (BENCHMARKS.md,
simclr-fmnist-5ep), and a random network's in stage 1.

When Fashion-MNIST cannot be had it says so and runs on the synthetic ``shapes`` set instead.
"""
from __future__ import annotations

import time

from ..atomic import check_writable
from ..errors import SelfSupError


def run_demo(minutes: float = 10.0, out: str = "runs/demo", data: str = "fashion-mnist", fallback: str = "shapes",
             progress: bool | None = None) -> int:
    """``progress``: the training bar, then a bar over the three evaluated subjects over each one's
    features / kNN / linear-probe bars, all on stderr (None: when stderr is a terminal)."""
    from ..data.datasets import load_dataset
    from ..progress import bar
    from .evaluate import evaluate
    from .train import train

    check_writable(out, "--out")   # before any work
    try:
        dataset = load_dataset(data)
    except SelfSupError as e:
        if data != "fashion-mnist":
            raise
        print(f"notice: {e}\nnotice: running the demo on the synthetic '{fallback}' dataset instead.")
        dataset = load_dataset(fallback)
    print(f"selfsup demo: SimCLR on {dataset.name} ({len(dataset.train)} training images), "
          f"{minutes:g} minutes of training on {'the GPU' if _cuda() else 'the CPU'}; run folder {out}")
    t0 = time.time()
    result = train("simclr", data=dataset, out=out, overwrite=True, time_limit=minutes, epochs=1000, progress=progress)
    train_s = time.time() - t0
    print(f"trained {result.steps} steps in {train_s / 60:.1f} min ({result.images_per_s:.0f} images/s)")
    rows = []
    subjects = [("SimCLR (this run)", {"checkpoint": out, "layer": "auto"}),
                ("random-init backbone", {"baseline": "random", "backbone": result.config.backbone, "layer": "auto"}),
                ("raw pixels", {"baseline": "pixels"})]
    with bar(total=len(subjects), progress=progress, desc="demo evaluation", unit="subject") as shown:
        for label, kw in subjects:
            shown.set_postfix_str(f"{label}: kNN and linear probe", refresh=True)
            res = evaluate(["knn", "linear"], data=dataset, progress=progress, **kw)
            where = res["knn"]["layer"]
            if "layer" in kw:
                label = f"{label}, stage {where or 'last'}"
            rows.append((label, res["knn"]["accuracy"], res["linear"]["accuracy"]))
            shown.update(1)
    print(f"\n{dataset.name} test accuracy (kNN T=0.1 on the full train bank, k chosen on a held-out sixth of it; "
          "linear probe on frozen features; each network at the stage chosen by kNN on a validation part of train)")
    print(f"{'':36s}{'kNN':>8s}{'linear':>8s}")
    for label, knn, lin in rows:
        print(f"{label:36s}{knn:8.4f}{lin:8.4f}")
    ours, rand, pix = rows
    beats = ours[1] > max(rand[1], pix[1]) and ours[2] > max(rand[2], pix[2])
    print("\nSimCLR beats both baselines on both probes." if beats else
          "\nSimCLR does not beat both baselines on both probes at this budget; give it more time "
          "(--minutes; the default 10 did on Fashion-MNIST, see BENCHMARKS.md).")
    print(f"results: {out}/eval/")
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()
