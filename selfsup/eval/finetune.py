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

import time
from pathlib import Path

from ..data.datasets import DatasetSplits, ImageSet, label_subset, load_dataset, stratified_split
from ..engine import rundir
from ..errors import SelfSupError
from .evaluate import eval_splits, foreign_data, load_backbone, result_path, rundir_json


def _train_and_score(labelled: ImageSet, scored: ImageSet, settings: dict, run_dir: Path | None) -> tuple[float, object]:
    from ..engine.train import train
    res = train("supervised", data=labelled, out=run_dir, overwrite=True, progress=False, **settings)
    pred = res.method.predict(scored.images)
    return float((pred == scored.labels).float().mean()), res


def finetune(checkpoint: str | Path | None = None, data: str | DatasetSplits | None = None, baseline: str | None = None,
             backbone: str | None = None, label_fraction: float = 1.0, seed: int = 0, lrs=None, epochs: float | None = None,
             time_limit: float = 0.0, batch_size: int | None = None, on: str = "test", device: str = "auto",
             data_dir: str | None = None, download: bool = False, out: str | Path | None = None, **settings) -> dict:
    """Fine-tune a run's backbone (``checkpoint``) or train ``baseline="supervised"`` from scratch;
    return (and write) the test accuracy with the learning rate chosen on validation.

    ``lrs``: candidate peak learning rates (default: the ``supervised`` method's one); ``epochs`` /
    ``time_limit`` (minutes, per training run) and ``settings`` (``backbone_lr_scale``,
    ``layer_decay``, ``freeze_stages``, ``crop_min``, ...) pass to the training."""
    if (checkpoint is None) == (baseline is None):
        raise SelfSupError("give either --checkpoint RUN_DIR or --baseline supervised")
    if baseline not in (None, "supervised"):
        raise SelfSupError(f"--baseline {baseline}: expected supervised (fine-tuning's from-scratch arm)")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise SelfSupError(f"--checkpoint {checkpoint}: no such run folder")
    run_cfg = rundir_json(Path(checkpoint)) if checkpoint is not None and Path(checkpoint).is_dir() else {}
    data = data or run_cfg.get("data")
    if data is None:
        raise SelfSupError("--data is needed (the run folder does not name its dataset)")
    dataset = data if isinstance(data, DatasetSplits) else load_dataset(
        data, data_dir=data_dir or run_cfg.get("data_dir") or None, download=download)
    spec = data if isinstance(data, str) else dataset.name   # the name with its options, as the user gave it
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
    common = {"backbone": name, "seed": seed, "device": device, **settings}
    if epochs is not None:
        common["epochs"] = epochs
    if time_limit:
        common.update(time_limit=time_limit, epochs=common.get("epochs", 1000))
    bs = batch_size or 128
    common["batch_size"] = min(bs, max(8, len(labelled) * 5 // 6 // 2))   # at least two steps per epoch on the 5/6
    from ..engine.train import resolve_config
    default_lr = resolve_config("supervised")[0].lr
    lrs = [float(x) for x in (lrs or [default_lr])]
    if any(x <= 0 for x in lrs):
        raise SelfSupError(f"--lrs {lrs}: learning rates must be positive")
    t0 = time.time()
    search = {}
    if len(lrs) > 1:
        fit_idx, val_idx = stratified_split(labelled.labels, len(labelled), 1 / 6, seed)
        fit, val = labelled.subset(fit_idx), labelled.subset(val_idx)
        for lr in lrs:
            acc, _ = _train_and_score(fit, val, {**common, "lr": lr}, None)
            search[f"{lr:g}"] = round(acc, 4)
        best = max(lrs, key=lambda x: search[f"{x:g}"])   # ties -> the first listed
    else:
        best = lrs[0]
    folder = None
    if out is not None and not str(out).endswith(".json"):
        folder = Path(out)
    acc, res = _train_and_score(labelled, test, {**common, "lr": best}, None)
    result = {"protocol": "finetune", "accuracy": acc, "lr": best, "lr_search": search, **subject, "backbone": name,
              "data": spec, "split": on, "label_fraction": label_fraction, "seed": seed, "n_train": len(labelled),
              "n_test": len(test), "steps": res.steps, "epochs": round(res.steps * res.config.batch_size / len(labelled), 2),
              "batch_size": res.config.batch_size, "settings": {k: v for k, v in common.items() if k != "init"},
              "seconds": round(time.time() - t0, 1)}
    path = None
    if out is not None:
        path = Path(out) if folder is None else folder / "finetune.json"
    elif checkpoint is not None and Path(checkpoint).is_dir():
        path = result_path(Path(checkpoint) / "eval", "finetune", label_fraction, on,
                           tag=foreign_data(run_cfg, spec))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_json(path, result)
        result["written_to"] = str(path)
    return result
