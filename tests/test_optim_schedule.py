import math

import pytest
import torch
from torch import nn

from selfsup.engine.optim import LARS, build_optimizer, param_groups
from selfsup.schedules import cosine_to_one, warmup_cosine
from selfsup.errors import SelfSupError


def test_no_weight_decay_on_biases_and_norms():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 0.1)
    assert {p.shape for p in decay["params"]} == {torch.Size([4, 4]), torch.Size([2, 4])}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_each_optimizer_minimises_a_least_squares_problem(name):
    torch.manual_seed(0)
    x, w_true = torch.randn(256, 8), torch.randn(8, 1)
    y = x @ w_true
    model = nn.Linear(8, 1, bias=False)
    opt = build_optimizer(model, name, lr={"adamw": 0.05, "sgd": 0.05, "lars": 20.0}[name], weight_decay=0.0)
    first = None
    for _ in range(200):
        loss = (model(x) - y).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_adamw_takes_the_fused_kernel_where_torch_has_it_on_the_cpu_with_the_loops_update():
    """build_optimizer's AdamW is torch's fused one from torch 2.4 (CPU and CUDA); its parameters
    after 20 steps with weight decay equal the per-parameter loop's within 1e-6."""
    from selfsup.engine.optim import fused_adamw
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 3)
    models = [nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0][0].weight.detach().clone()
    fused = build_optimizer(models[0], "adamw", lr=1e-2, weight_decay=0.05, beta2=0.95)
    loop = torch.optim.AdamW(param_groups(models[1], 0.05), lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert bool(fused.defaults["fused"]) == fused_adamw() and fused_adamw() == (torch.__version__ >= "2.4")
    for _ in range(20):
        for model, opt in zip(models, (fused, loop)):
            opt.zero_grad()
            (model(x) - y).pow(2).mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())
    assert (models[0][0].weight - start).abs().max() > 1e-2          # the steps moved the weights


def test_lars_trust_ratio_scales_the_step_by_weight_norm():
    p = nn.Parameter(torch.full((10,), 2.0))
    opt = LARS([p], lr=1.0, momentum=0.0, eta=0.001)
    p.grad = torch.full((10,), 100.0)
    opt.step()
    # step = lr * eta * |p| / |g| * g: independent of the gradient's scale
    assert torch.allclose(p.detach(), torch.full((10,), 2.0 - 0.001 * 2.0))


def test_unknown_optimizer():
    with pytest.raises(SelfSupError, match="unknown optimizer"):
        build_optimizer(nn.Linear(2, 2), "adam9", 0.1, 0.0)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 0.0, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 0.1, 1.0) == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi)))
    assert warmup_cosine(50, 10, 0.5, 1.0, final=0.2) == pytest.approx(0.6)
    assert warmup_cosine(100, 10, 1.0, 1.0) == pytest.approx(0.0)
    assert cosine_to_one(0.0, 0.99) == pytest.approx(0.99) and cosine_to_one(1.0, 0.99) == pytest.approx(1.0)


@pytest.mark.parametrize("budget", ["steps", "time"])
def test_warmup_ends_by_a_tenth_of_the_run_and_the_rate_decays_to_zero(budget):
    """A warm-up of 1,000 steps (say one epoch) in a run of 300: under either kind of budget the
    rate peaks by 10% of the run and is near zero at its end."""
    total, warmup_steps = 300, 1000
    lrs = []
    for step in range(total):
        # a wall-clock budget: progress is elapsed time / limit, here a run whose steps slow down
        progress = step / total if budget == "steps" else ((step + 1) / total) ** 0.8
        lrs.append(warmup_cosine(step, warmup_steps, progress, 1.0))
    peak = max(range(total), key=lambda i: lrs[i])
    assert peak <= 0.1 * total
    assert lrs[peak] > 0.95
    assert lrs[-1] < 0.01
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:peak], lrs[1:peak + 1]))   # a ramp up to the peak


def test_warmup_cap_off_keeps_the_epoch_warmup():
    assert warmup_cosine(99, 1000, 0.5, 1.0, warmup_max=0) == pytest.approx(0.1 * 0.5)
