"""Linear probe: a logistic-regression layer on frozen, standardised features, trained in torch.

Standardising with the train split's statistics is the same as the affine-free BatchNorm that
MAE and others put before the linear layer. The L2 penalty is chosen on a held-out validation
part of the (labelled) train split, never on test, then the probe is refit on the whole split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.datasets import stratified_split
from ..progress import bar

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)
SELECT_N = 20_000   # the penalty is chosen on a stratified subset of at most this many train samples


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 200, on_eval=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: returns (W (D, K), b (K,)).
    ``on_eval(n)``, if given, is called after the n-th loss evaluation (a progress bar's postfix)."""
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    evals = 0

    def closure():
        nonlocal evals
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        evals += 1
        if on_eval is not None:
            on_eval(evals)
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int | None = None, weight_decays=WEIGHT_DECAYS, val_fraction: float = 0.1,
                 seed: int = 0, progress: bool | None = None, desc: str = "linear probe") -> dict:
    """Accuracy of a linear classifier; the L2 penalty picked on a validation split of train (of a
    stratified subset of at most SELECT_N samples: the full-batch fits are memory-bound on wide
    features, and the penalty's choice does not need all of them), then refit on all of train.
    ``progress``: a bar of L-BFGS fits (each candidate penalty, then the refit) with the current
    one's loss evaluations (None: when stderr is a terminal)."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    pool = torch.arange(len(train_y))
    if len(pool) > SELECT_N:
        pool = stratified_split(train_y, len(train_y), SELECT_N / len(train_y), seed)[1]
    fit_idx, val_idx = (pool[i] for i in stratified_split(train_y[pool], len(pool), val_fraction, seed))
    val_acc = {}
    weight_decays = list(weight_decays)
    with bar(total=len(weight_decays) + 1, progress=progress, desc=desc, unit="fit") as shown:
        def fit(x, y, wd, what):
            shown.set_postfix_str(f"{what} wd={wd:g}", refresh=False)
            w, b = fit_logistic(x, y, num_classes, wd,
                                on_eval=lambda n: n % 10 == 0 and shown.set_postfix_str(f"{what} wd={wd:g} iter {n}"))
            shown.update(1)
            return w, b

        for wd in weight_decays:
            w, b = fit(train_x[fit_idx], train_y[fit_idx], wd, "candidate")
            val_acc[wd] = float(((train_x[val_idx] @ w + b).argmax(1) == train_y[val_idx]).float().mean())
        best = max(val_acc, key=lambda k: (val_acc[k], k))  # ties -> the stronger penalty
        w, b = fit(train_x, train_y, best, "refit")
    acc = float(((test_x @ w + b).argmax(1) == test_y).float().mean())
    return {"accuracy": acc, "weight_decay": best, "val_accuracy": val_acc, "val_fraction": val_fraction}
