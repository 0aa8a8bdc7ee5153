"""Fine-tuning, and its honest comparison: the same network trained supervised from scratch.

``finetune(checkpoint=RUN)`` trains the run's backbone with a new head end to end on the labelled
train split (or a stratified ``label_fraction`` of it); ``finetune(baseline="supervised",
backbone=NAME)`` trains the same architecture from random initialisation. Both go through the
registered ``supervised`` method on the one training loop, so they share the augmentation, loss,
schedule and budget, and both get the same learning-rate search: each candidate trains on 5/6 of
the labelled images and is scored on the other sixth; the best retrains on all of them and is
scored once on the test split (``on="val"`` replaces test by a held-out sixth of train, for
choosing settings without touching test).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from ..data.datasets import DatasetSplits, ImageSet, label_subset, stratified_split
from .. import runs
from ..errors import SelfSupError
from ..progress import bar
from ..runs import check_result_out, load_backbone
from .evaluate import eval_splits
from .tblog import log_evaluation


FT_LRS = (3e-4, 1e-3, 3e-3, 1e-2)   # AdamW peak rates: a log grid spanning 33x, extended once at an edge
MIN_EPOCHS = 3.0    # a run with fewer epochs over its labelled images is flagged as too short to converge
MIN_STEPS = 100     # ... and so is one with fewer optimiser steps
FT_EPOCHS = 10.0    # the default budget: this many epochs over the labelled images,
FT_MIN_STEPS = 1000  # but at least this many steps (small label fractions; see default_steps)


def default_steps(n_labelled: int, batch_size: int, epochs: float = FT_EPOCHS, min_steps: int = FT_MIN_STEPS) -> int:
    """Optimiser steps for fine-tuning on ``n_labelled`` images: ``epochs`` over them, but never
    fewer than ``min_steps``. A fixed number of epochs starves small label fractions (1% of
    Fashion-MNIST is 600 images: 10 epochs are 47 steps); a fixed number of steps for every
    fraction (the common semi-supervised protocol) spends the 100% run's cost on the 1% run."""
    return max(int(min_steps), math.ceil(epochs * n_labelled / batch_size))


def batch_size_for(n_labelled: int, batch_size: int | None = None) -> int:
    """The fine-tuning batch: ``batch_size`` (128), but small enough for two steps per epoch on the
    5/6 of the labels that the lr search trains on."""
    return min(batch_size or 128, max(8, n_labelled * 5 // 6 // 2))


def epochs_over(steps: int, n_labelled: int, batch_size: int) -> float:
    """Epochs that ``steps`` make over ``n_labelled`` images, as the engine counts them: full batches
    only (3 epochs of 60,000 images at batch 128 are 1,404 steps, not 1,406.25)."""
    return steps / max(1, n_labelled // batch_size)


def too_short(steps: int, epochs: float) -> str | None:
    """Why a fine-tuning run is too short to have converged, or None."""
    if epochs < MIN_EPOCHS:
        return f"{epochs:.2f} epochs over the labelled images (< {MIN_EPOCHS:g})"
    if steps < MIN_STEPS:
        return f"{steps} optimiser steps (< {MIN_STEPS})"
    return None


def search_lr(lrs, score, extend: bool = True) -> tuple[float, dict, float | None]:
    """Score each learning rate of ``lrs`` (``score(lr) -> validation accuracy``) and take the best
    (ties -> the first listed). When the best sits at an edge of the grid, the grid extends once in
    that direction by its own ratio (the largest over the second largest, or the second smallest
    over the smallest), and the new rate is taken if it scores higher. Returns (best, {lr: score},
    the extension or None)."""
    lrs = [float(x) for x in lrs]
    scores = {f"{lr:g}": round(score(lr), 4) for lr in lrs}
    best = max(lrs, key=lambda x: scores[f"{x:g}"])
    extended = None
    ordered = sorted(set(lrs))
    if extend and len(ordered) >= 2 and best in (ordered[0], ordered[-1]):
        extended = ordered[-1] ** 2 / ordered[-2] if best == ordered[-1] else ordered[0] ** 2 / ordered[1]
        extended = float(f"{extended:.3g}")
        scores[f"{extended:g}"] = round(score(extended), 4)
        if scores[f"{extended:g}"] > scores[f"{best:g}"]:
            best = extended
    return best, scores, extended


def _train_and_score(labelled: ImageSet, scored: ImageSet, settings: dict, run_dir: Path | None,
                     progress: bool | None = False) -> tuple[float, object]:
    from .train import train
    res = train("supervised", data=labelled, out=run_dir, overwrite=True, progress=progress, **settings)
    pred = res.method.predict(scored.images)
    return float((pred == scored.labels).float().mean()), res


def finetune(checkpoint: str | Path | None = None, data: str | DatasetSplits | None = None, baseline: str | None = None,
             backbone: str | None = None, label_fraction: float = 1.0, seed: int = 0, lrs=None, steps: int | None = None,
             epochs: float | None = None, time_limit: float = 0.0, extend: bool = True, batch_size: int | None = None,
             on: str = "test", device: str = "auto", search_share: float = 1.0,
             data_dir: str | None = None, download: bool = False, out: str | Path | None = None,
             progress: bool | None = None, **settings) -> dict:
    """Fine-tune a run's backbone (``checkpoint``) or train ``baseline="supervised"`` from scratch;
    return (and write) the test accuracy with the learning rate chosen on validation.

    ``lrs``: candidate peak learning rates (default ``FT_LRS``), searched with :func:`search_lr`
    (``extend``: once past an edge). The budget of each run: ``steps`` (default
    :func:`default_steps`), or ``epochs``, or ``time_limit`` (minutes); the warm-up and the decay
    follow the run's own length under each. ``settings`` (``backbone_lr_scale``, ``layer_decay``,
    ``freeze_stages``, ``crop_min``, ...) pass to the training. The result carries ``short``: why
    the run was too short to converge, or None. ``search_share`` in (0, 1]: each learning-rate
    candidate trains for this share of the budget (the final run for all of it), a cheaper search
    whose winner is then trained in full. ``progress``: a bar of the training runs (each lr
    candidate, then the final run) over each run's own bar, on stderr (None: when stderr is a
    terminal; False: never)."""
    if (checkpoint is None) == (baseline is None):
        raise SelfSupError("give either --checkpoint RUN_DIR or --baseline supervised")
    if baseline not in (None, "supervised"):
        raise SelfSupError(f"--baseline {baseline}: expected supervised (fine-tuning's from-scratch arm)")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise SelfSupError(f"--checkpoint {checkpoint}: no such run folder")
    check_result_out(out, checkpoint)
    from .train import resolve_config
    given = {"epochs": epochs, "batch_size": batch_size, "time_limit": time_limit or None, **settings}
    resolve_config("supervised", {k: v for k, v in given.items() if v is not None})   # every value, before any work
    dataset = runs.run_data(checkpoint, data, data_dir=data_dir, download=download)
    spec = runs.data_spec(checkpoint, data, dataset)
    train_split, test = eval_splits(dataset, seed, on)
    labelled = label_subset(train_split, label_fraction, seed)
    if checkpoint is not None:
        meta = load_backbone(checkpoint).meta
        name, subject = meta["backbone"], {"checkpoint": str(checkpoint), "method": meta.get("method")}
        settings = {"init": str(checkpoint), **settings}
    else:
        from .. import models
        name, subject = backbone or models.DEFAULT_BACKBONE, {"baseline": "supervised"}
    if len(labelled) < 12:
        raise SelfSupError(f"--label-fraction {label_fraction}: leaves {len(labelled)} labelled images, too few to fine-tune")
    bs = batch_size_for(len(labelled), batch_size)
    common = {"backbone": name, "seed": seed, "device": device, "batch_size": bs, **settings}
    if steps is None and epochs is None and not time_limit:
        steps = default_steps(len(labelled), bs)
    if steps is not None:
        if steps < 1:
            raise SelfSupError(f"--steps {steps}: must be at least 1")
        common["steps"] = int(steps)
    elif epochs is not None:
        common["epochs"] = epochs
    if time_limit:
        common.update(time_limit=time_limit, epochs=common.get("epochs", 1000))
    if not 0 < search_share <= 1:
        raise SelfSupError(f"--search-share {search_share}: must be in (0, 1]")
    candidate = dict(common)   # each learning-rate candidate's budget: search_share of the final run's
    if "steps" in common:
        candidate["steps"] = max(1, round(common["steps"] * search_share))
    elif "epochs" in common and not time_limit:
        candidate["epochs"] = common["epochs"] * search_share
    if time_limit:
        candidate["time_limit"] = time_limit * search_share
    lrs = [float(x) for x in (lrs or FT_LRS)]
    if any(x <= 0 for x in lrs):
        raise SelfSupError(f"--lrs {lrs}: learning rates must be positive")
    t0 = time.time()
    what = "fine-tune" if checkpoint is not None else "supervised"
    with bar(total=len(lrs) + 1 if len(lrs) > 1 else 1, progress=progress, desc=what, unit="run") as shown:
        search, extended = {}, None
        if len(lrs) > 1:
            fit_idx, val_idx = stratified_split(labelled.labels, len(labelled), 1 / 6, seed)
            fit, val = labelled.subset(fit_idx), labelled.subset(val_idx)
            if len(val) == 0 or len(fit) < 2:
                raise SelfSupError(f"--label-fraction {label_fraction}: {len(labelled)} labelled images are too few to "
                                   "hold out a sixth for the learning-rate search; give one rate (--lrs)")
            tried: dict = {}

            def score(lr: float) -> float:
                if len(tried) >= len(lrs):   # the grid extends past an edge: one more run
                    shown.total += 1
                shown.set_description_str(f"{what} lr search {len(tried) + 1} (lr {lr:g})")
                tried[f"{lr:g}"] = _train_and_score(fit, val, {**candidate, "lr": lr}, None, progress)[0]
                shown.set_postfix_str(", ".join(f"lr {k}: {v:.3f}" for k, v in tried.items()), refresh=False)
                shown.update(1)
                return tried[f"{lr:g}"]
            best, search, extended = search_lr(lrs, score, extend=extend)
        else:
            best = lrs[0]
        shown.set_description_str(f"{what} final run (lr {best:g})")
        acc, res = _train_and_score(labelled, test, {**common, "lr": best}, None, progress)
        shown.update(1)
    epochs_run = epochs_over(res.steps, len(labelled), res.config.batch_size)
    short = too_short(res.steps, epochs_run)
    result = {"protocol": "finetune", "accuracy": acc, "lr": best, "lr_search": search, "lr_extended": extended,
              **subject, "backbone": name, "data": spec, "split": on, "label_fraction": label_fraction, "seed": seed,
              "n_train": len(labelled), "n_test": len(test), "steps": res.steps, "epochs": round(epochs_run, 2),
              "batch_size": res.config.batch_size, "short": short, "search_share": search_share,
              "settings": {k: v for k, v in common.items() if k != "init"}, "seconds": round(time.time() - t0, 1),
              "curve": [{"step": r["step"], "epoch": r["epoch"], "loss": round(r["loss"], 5), "lr": r["lr"],
                         "images_per_s": round(r["images_per_s"], 1)} for r in res.history if "loss" in r]}
    path, folder = None, None
    if out is not None and not str(out).endswith(".json"):
        folder = Path(out)
    if out is not None:
        path = Path(out) if folder is None else folder / "finetune.json"
    elif checkpoint is not None and Path(checkpoint).is_dir():
        path = runs.result_path(checkpoint, runs.result_name("finetune", label_fraction, on,
                                                             tag=runs.foreign_tag(checkpoint, spec)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(path, result)
        result["written_to"] = str(path)
    if checkpoint is not None and Path(checkpoint).is_dir():
        log_evaluation(checkpoint, {"finetune": result})
    return result
