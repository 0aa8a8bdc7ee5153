"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018; DINO, MoCo).

Each test point takes its k most similar bank points; each votes for its label with weight
exp(sim / T), T=0.1 (the MoCo CIFAR / lightly monitor; DINO uses k=20, T=0.07). Unless k is given,
:func:`choose_k` picks it on a held-out sixth of the labelled bank from ``K_GRID``: the fixed k=200
of ImageNet-sized banks drowns a bank of a hundred images per class in far neighbours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.datasets import stratified_split
from ..progress import bar

K_GRID = (5, 10, 20, 50, 100, 200)


@torch.no_grad()
def knn_predict_many(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, ks, temperature: float = 0.1,
                     num_classes: int | None = None, chunk: int = 1024, progress: bool | None = False,
                     desc: str = "kNN") -> dict[int, torch.Tensor]:
    """{k: predicted labels (M,)} for each k of ``ks``, from one top-k search of the largest;
    ``progress``: a bar of queries done (None: when stderr is a terminal)."""
    num_classes = num_classes or int(bank_labels.max()) + 1
    bank = F.normalize(bank.float(), dim=1)
    ks = sorted({min(int(k), len(bank)) for k in ks})
    preds = {k: [] for k in ks}
    shown = bar(total=len(queries), progress=progress, desc=f"{desc} k={','.join(map(str, ks))}", unit="query")
    for i in range(0, len(queries), chunk):
        q = F.normalize(queries[i:i + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(ks[-1], dim=1)                  # (m, k), most similar first
        weights, labels = (sim / temperature).exp(), bank_labels[idx]
        for k in ks:
            votes = torch.zeros(len(q), num_classes)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            preds[k].append(votes.argmax(dim=1))
        shown.update(len(q))
    shown.close()
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 200,
                temperature: float = 0.1, num_classes: int | None = None, chunk: int = 1024,
                progress: bool | None = None, desc: str = "kNN") -> torch.Tensor:
    """Predicted labels (M,) for ``queries`` (M, D) given a labelled ``bank`` (N, D); ``progress``:
    a bar of queries done (None: when stderr is a terminal)."""
    many = knn_predict_many(bank, bank_labels, queries, [k], temperature, num_classes, chunk, progress, desc)
    return next(iter(many.values()))


def knn_accuracy(bank, bank_labels, queries, query_labels, k: int = 200, temperature: float = 0.1,
                 num_classes: int | None = None, progress: bool | None = None, desc: str = "kNN") -> float:
    pred = knn_predict(bank, bank_labels, queries, k, temperature, num_classes, progress=progress, desc=desc)
    return float((pred == query_labels).float().mean())


def choose_k(bank: torch.Tensor, bank_labels: torch.Tensor, temperature: float = 0.1, num_classes: int | None = None,
             seed: int = 0, grid=K_GRID) -> tuple[int, dict]:
    """The k of ``grid`` whose kNN accuracy is best on a seeded stratified sixth of the bank, voted
    on by the other five sixths (ties -> the smaller k). Returns (k, {k: validation accuracy}); a
    k larger than the voting part is left out, and a bank too small to split gets the smallest k."""
    num_classes = num_classes or int(bank_labels.max()) + 1
    if len(bank) < 12:
        return min(grid), {}
    fit_idx, val_idx = stratified_split(bank_labels, len(bank), 1 / 6, seed)
    ks = [k for k in grid if k <= len(fit_idx)] or [min(grid)]
    preds = knn_predict_many(bank[fit_idx], bank_labels[fit_idx], bank[val_idx], ks, temperature, num_classes)
    scores = {k: float((preds[min(k, len(fit_idx))] == bank_labels[val_idx]).float().mean()) for k in ks}
    best = max(ks, key=lambda k: (scores[k], -k))
    return best, {str(k): round(v, 4) for k, v in scores.items()}
