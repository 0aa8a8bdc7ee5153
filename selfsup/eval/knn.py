"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018; DINO, MoCo).

Each test point takes its k most similar bank points; each votes for its label with weight
exp(sim / T). Defaults k=200, T=0.1 (the MoCo CIFAR / lightly monitor); DINO uses k=20, T=0.07.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 200,
                temperature: float = 0.1, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (M,) for ``queries`` (M, D) given a labelled ``bank`` (N, D)."""
    num_classes = num_classes or int(bank_labels.max()) + 1
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    preds = []
    for i in range(0, len(queries), chunk):
        q = F.normalize(queries[i:i + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)                      # (m, k)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, bank_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(bank, bank_labels, queries, query_labels, k: int = 200, temperature: float = 0.1,
                 num_classes: int | None = None) -> float:
    pred = knn_predict(bank, bank_labels, queries, k, temperature, num_classes)
    return float((pred == query_labels).float().mean())
