"""The evaluation protocol, one code path for trained backbones and the baselines.

A *subject* is what gets evaluated: a run folder's backbone, a randomly initialised backbone
of the same architecture (``random``), or the raw pixels (``pixels``). Its frozen features of
the labelled train split (optionally a stratified ``label_fraction`` of it) and of the test
split feed the kNN and linear probes.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import models, runs
from ..data.datasets import DatasetSplits, label_subset, stratified_split
from ..errors import SelfSupError
from ..eval import features as feat
from ..eval.knn import choose_k, knn_accuracy
from ..eval.linear import linear_probe
from ..progress import bar
from ..runs import check_result_out, load_backbone, run_config
from .device import pick_device
from .tblog import log_evaluation

__all__ = ["PROTOCOLS", "evaluate", "eval_splits", "select_layer", "load_backbone", "run_config"]

PROTOCOLS = ("knn", "linear")


def eval_splits(data: DatasetSplits, seed: int = 0, on: str = "test") -> tuple:
    """(train, test) labelled splits.

    A dataset without a test split gets a seeded stratified 20% split of train. With
    ``on="val"`` the test split is not touched: a seeded stratified 1/6 of train is held out
    and plays the test split's part, for choosing settings.
    """
    train, test = data.train, data.test
    if train.labels is None:
        raise SelfSupError(f"--data {data.name}: has no labels; kNN and linear evaluation need labelled data")
    if on not in ("test", "val"):
        raise SelfSupError(f"--on {on}: expected test or val")
    if on == "val" or test is None or test.labels is None:
        keep, held = stratified_split(train.labels, len(train), 1 / 6 if on == "val" else 0.2, seed)
        train, test = train.subset(keep), train.subset(held)
    return train, test


def random_encoder(name: str, train, seed: int) -> models.Encoder:
    """The ``--baseline random`` subject: backbone ``name`` initialised from ``seed``, with ``train``'s
    channels, side and normalisation."""
    torch.manual_seed(seed)
    return models.Encoder(models.create_backbone(name, in_chans=train.channels, img_size=train.image_size[0]),
                          *train.mean_std())


def evaluate(protocols=("knn", "linear"), checkpoint: str | Path | None = None, data: str | DatasetSplits | None = None,
             baseline: str | None = None, backbone: str | None = None, label_fraction: float = 1.0, seed: int = 0,
             k: int | None = None, temperature: float = 0.1, layer: int | None = None, pool: str | None = None,
             device: str = "auto", data_dir: str | None = None, download: bool = False, out: str | Path | None = None,
             batch_size: int = 512, on: str = "test", progress: bool | None = None) -> dict:
    """Evaluate a run's backbone (``checkpoint``) or a ``baseline`` ("random" | "pixels") with each protocol.

    Returns {protocol: result dict}; writes one JSON per protocol when ``out`` is given (a folder,
    or a file when there is one protocol) or when evaluating a run folder (its ``eval/``, and its
    TensorBoard log when it has one). ``progress``: bars for the features, kNN and the linear
    probe on stderr (None: when stderr is a terminal; False: never).
    """
    protocols = [protocols] if isinstance(protocols, str) else list(protocols)
    for p in protocols:
        if p not in PROTOCOLS:
            raise SelfSupError(f"unknown evaluation {p!r} (known: {', '.join(PROTOCOLS)})")
    if (checkpoint is None) == (baseline is None):
        raise SelfSupError("give either --checkpoint RUN_DIR or --baseline random|pixels")
    if baseline not in (None, "random", "pixels"):
        raise SelfSupError(f"--baseline {baseline}: expected random or pixels")
    if isinstance(layer, (list, tuple)):
        layer = tuple(layer)
        if len(layer) < 2 or len(set(layer)) != len(layer):
            raise SelfSupError(f"--layer {','.join(map(str, layer))}: expected two or more different stages")
    if layer is not None and layer != "auto" and \
            not all(isinstance(x, int) and x >= 1 for x in (layer if isinstance(layer, tuple) else (layer,))):
        raise SelfSupError(f"--layer {layer}: expected a stage number (1, 2, ...), several joined by commas, or auto")
    if (k is not None and k <= 0) or temperature <= 0:
        raise SelfSupError(f"--k and --temperature must be positive, got {k}, {temperature}")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise SelfSupError(f"--checkpoint {checkpoint}: no such run folder")
    check_result_out(out, checkpoint)
    dataset = runs.run_data(checkpoint, data, data_dir=data_dir, download=download)
    spec = runs.data_spec(checkpoint, data, dataset)
    train, test = eval_splits(dataset, seed, on)
    bank = label_subset(train, label_fraction, seed)
    dev = pick_device(device)
    t0 = time.time()
    if baseline == "pixels":
        mean, std = train.mean_std()
        fx = lambda images, what: feat.raw_pixels(images, mean, std, progress=progress, desc=f"pixels ({what})")  # noqa: E731
        subject = {"baseline": "pixels"}
    else:
        if baseline == "random":
            name = backbone or models.DEFAULT_BACKBONE
            encoder = random_encoder(name, train, seed)
            subject = {"baseline": "random", "backbone": name, "init_seed": seed}
        else:
            encoder = load_backbone(checkpoint)
            subject = {"checkpoint": str(checkpoint), "backbone": encoder.meta["backbone"], "method": encoder.meta.get("method")}
            if encoder.meta["in_chans"] != train.channels:
                raise SelfSupError(f"--data {dataset.name}: has {train.channels} channel(s) but the backbone was trained on {encoder.meta['in_chans']}")
        fx = lambda images, what: feat.extract(encoder, images, batch_size, dev, layer=layer, pool=pool,  # noqa: E731
                                               progress=progress, desc=f"features ({what})")
    selection = None
    if layer == "auto":
        if baseline == "pixels":
            raise SelfSupError("--layer auto: raw pixels have no layers")
        layer, pool, selection = select_layer(encoder, bank, k or LAYER_K, temperature, seed, batch_size, dev, progress)
    bank_x, test_x = fx(bank.images, "train"), fx(test.images, on)
    feat_s = time.time() - t0
    common = {"data": spec, "split": on, "label_fraction": label_fraction, "seed": seed, "n_train": len(bank),
              "n_test": len(test), "feature_dim": bank_x.shape[1],
              "layer": list(layer) if isinstance(layer, tuple) else layer, "pool": pool, **subject}
    if selection is not None:
        common["layer_selection"] = selection
    prov = runs.provenance(dev, 1, dataset.fingerprint)  # once: it hashes the data and asks git
    results = {}
    for p in protocols:
        t1 = time.time()
        if p == "knn":
            chosen, k_search = (k, None) if k is not None else \
                choose_k(bank_x, bank.labels, temperature, train.num_classes, seed)
            acc = knn_accuracy(bank_x, bank.labels, test_x, test.labels, k=chosen, temperature=temperature,
                               num_classes=train.num_classes, progress=progress)
            res = {"protocol": "knn", "accuracy": acc, "k": min(chosen, len(bank)), "temperature": temperature,
                   "similarity": "cosine"}
            if k_search is not None:
                res["k_search"] = k_search   # validation accuracy of each candidate k (a held-out sixth of the bank)
        else:
            lin = linear_probe(bank_x, bank.labels, test_x, test.labels, num_classes=train.num_classes, seed=seed,
                               progress=progress)
            res = {"protocol": "linear", **lin, "standardised": True, "solver": "L-BFGS logistic regression"}
        res.update(common)
        res["seconds"] = round(feat_s + time.time() - t1, 2)
        res["provenance"] = prov
        results[p] = res
    _write(results, out, checkpoint, label_fraction, layer, runs.foreign_tag(checkpoint, spec))
    if checkpoint is not None and Path(checkpoint).is_dir():
        log_evaluation(checkpoint, results)
    return results


LAYER_K = 20        # the kNN k that scores candidate stages when --k is not given (DINO's)
SELECT_N = 10_000   # labelled images the stage selection looks at, at most (a stratified subset)


def select_layer(encoder, bank, k: int, temperature: float, seed: int, batch_size: int, dev,
                 progress: bool | None = None) -> tuple:
    """The (layer, pool) whose kNN accuracy is best on a validation sixth of the labelled ``bank``
    (of a stratified subset of at most SELECT_N of it, for speed).

    Only the labels the probe itself may use take part (at 1% labels, the 1%), and the test
    split is never seen. Returns (layer, pool, {"layer/pool": val accuracy, ...})."""
    if len(bank) > SELECT_N:
        bank = label_subset(bank, SELECT_N / len(bank), seed)
    choices = feat.candidates(encoder)
    fit_idx, val_idx = stratified_split(bank.labels, len(bank), 1 / 6, seed)
    feats = feat.extract_many(encoder, bank.images, choices, batch_size, dev, progress=progress,
                              desc=f"features ({len(choices)} layers)")
    scores = {}
    for c, x in bar(feats.items(), progress=progress, desc="layer selection (kNN)", unit="layer"):
        scores[c] = knn_accuracy(x[fit_idx], bank.labels[fit_idx], x[val_idx], bank.labels[val_idx],
                                 k=min(k, len(fit_idx)), temperature=temperature, num_classes=bank.num_classes,
                                 progress=False)
    best = max(choices, key=lambda c: scores[c])  # ties -> the earliest candidate
    return (*best, {f"{c[0] or 'final'}/{c[1] or 'default'}": round(v, 4) for c, v in scores.items()})


def _write(results: dict, out, checkpoint, label_fraction: float, layer, tag: str = "") -> None:
    if out is None and checkpoint is None:
        return
    for p, res in results.items():
        if out is not None and str(out).endswith(".json") and len(results) == 1:
            path = Path(out)
        else:
            folder = Path(out) if out is not None else runs.result_path(checkpoint)
            path = folder / runs.result_name(p, label_fraction, res["split"], layer, tag)
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(path, res)
        res["written_to"] = str(path)
