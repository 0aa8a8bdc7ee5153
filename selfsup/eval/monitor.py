"""Online monitor: kNN (and linear-probe) accuracy of the backbone every few epochs of pretraining,
a hook that the app passes into ``fit`` (the engine knows nothing of it),
as ``{"step", "epoch", "monitor_knn", "monitor_linear", "monitor_s"}`` rows of metrics.jsonl.

It is scored on a fixed, seeded, labelled part of the *training* images: a stratified sixth held
out as queries (at most QUERY_N) and a bank from the rest (at most BANK_N), as ``eval --on val``
does, never on the test split, since a curve one picks an epoch from must not have seen test.
The features and probes are the evaluation's own (``features.extract``, ``knn_accuracy``,
``linear_probe``), from ``method.export_backbone()`` in eval mode with no gradient. Afterwards the
RNG state and every module's train/eval mode are as before, so a monitored run trains the same
weights as an unmonitored one (tested); only its wall-clock time grows (``monitor_s``).
"""
from __future__ import annotations

import json
import logging
import time

import torch

from .. import models
from ..data.datasets import ImageSet, label_subset, stratified_split
from ..errors import SelfSupError
from .features import extract
from .knn import knn_accuracy
from .linear import linear_probe

log = logging.getLogger("selfsup")

PROTOCOLS = ("knn", "linear")
BANK_N, QUERY_N = 5000, 1000


def parse_protocols(spec: str) -> list[str]:
    """``"knn,linear"`` -> ["knn", "linear"]; an unknown name is a one-line error."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in names if p not in PROTOCOLS]
    if bad or not names:
        raise SelfSupError(f"--set monitor={spec}: expected knn, linear or knn,linear")
    return names


class Monitor:
    """Scores the backbone of a method on ``bank``/``queries`` every ``every`` optimiser steps."""

    def __init__(self, bank: ImageSet, queries: ImageSet, every: int, protocols: list[str], seed: int):
        self.bank, self.queries, self.every, self.protocols, self.seed = bank, queries, every, protocols, seed

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def after_step(self, method, step: int, steps_per_epoch: int, device: torch.device, metrics=None) -> dict | None:
        """The engine's hook (``selfsup.engine.loop.Hook``): score when due and return the row, which
        the loop writes to metrics.jsonl and to its sinks (TensorBoard)."""
        if not self.due(step):
            return None
        return self.run(method, step, steps_per_epoch, device)

    def run(self, method, step: int, steps_per_epoch: int, device: torch.device, metrics=None) -> dict:
        """Score ``method``'s backbone now; write the row to the open ``metrics`` file, if any, and return it."""
        t0 = time.time()
        modes = [(m, m.training) for m in method.modules()]
        encoder = models.Encoder(method.export_backbone(), method.data.mean, method.data.std, type(method).input_space)
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                bank_x = extract(encoder, self.bank.images, device=device, progress=False)
                query_x = extract(encoder, self.queries.images, device=device, progress=False)
                scores = {}
                if "knn" in self.protocols:
                    scores["monitor_knn"] = knn_accuracy(bank_x, self.bank.labels, query_x, self.queries.labels,
                                                         num_classes=self.bank.num_classes, progress=False)
                if "linear" in self.protocols:
                    scores["monitor_linear"] = linear_probe(bank_x, self.bank.labels, query_x, self.queries.labels,
                                                            num_classes=self.bank.num_classes, seed=self.seed,
                                                            progress=False)["accuracy"]
        finally:
            for m, training in modes:  # exactly as before: a method may keep a teacher in eval mode
                m.training = training
        row = {"step": step, "epoch": round(step / steps_per_epoch, 4), **{k: round(v, 4) for k, v in scores.items()},
               "monitor_s": round(time.time() - t0, 3)}
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        log.info("epoch %g: %s", row["epoch"], ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return row


def make_monitor(cfg, data, steps_per_epoch: int) -> Monitor | None:
    """The run's monitor (``cfg.monitor_every`` epochs apart, ``cfg.monitor`` protocols), or None
    when it is off or the training data has no labels (then with one warning)."""
    if not cfg.monitor_every:
        return None
    if not isinstance(data, ImageSet) or data.labels is None:
        log.warning("monitor_every=%g: the training data has no labels (in memory), so there is no online monitor",
                    cfg.monitor_every)
        return None
    keep, held = stratified_split(data.labels, len(data), 1 / 6, cfg.seed)
    if not len(keep) or not len(held):
        log.warning("monitor_every=%g: too few labelled training images (%d) to hold queries out; no online monitor",
                    cfg.monitor_every, len(data))
        return None
    bank, queries = data.subset(keep), data.subset(held)
    if len(bank) > BANK_N:
        bank = label_subset(bank, BANK_N / len(bank), cfg.seed)
    if len(queries) > QUERY_N:
        queries = label_subset(queries, QUERY_N / len(queries), cfg.seed)
    every = max(1, round(cfg.monitor_every * steps_per_epoch))
    return Monitor(bank, queries, every, parse_protocols(cfg.monitor), cfg.seed)
