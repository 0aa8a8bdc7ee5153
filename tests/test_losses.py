import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import nt_xent


def naive_nt_xent(z1, z2, t):
    """SimCLR's loss written as the paper's double loop: l(i, j) over all 2N anchors."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


@pytest.mark.parametrize("n", [1, 2, 5, 16])
@pytest.mark.parametrize("t", [0.07, 0.2, 0.5, 1.0])
def test_nt_xent_matches_naive_loop(n, t):
    g = torch.Generator().manual_seed(n * 100 + int(t * 100))
    z1, z2 = torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randn(n, 8, generator=g, dtype=torch.float64)
    loss, _ = nt_xent(z1, z2, t)
    assert loss.item() == pytest.approx(naive_nt_xent(z1, z2, t), rel=1e-9, abs=1e-9)


def test_nt_xent_perfect_pairs_give_low_loss_and_full_accuracy():
    z = torch.eye(8, dtype=torch.float64)
    loss, acc = nt_xent(z, z.clone(), 0.05)
    assert acc.item() == 1.0
    assert loss.item() < 1e-6
    # shuffled partners: the positive is never the best match
    loss2, acc2 = nt_xent(z, z.roll(1, 0), 0.05)
    assert acc2.item() == 0.0 and loss2.item() > 10


def test_nt_xent_gradient_flows_to_both_views():
    z1 = torch.randn(4, 6, requires_grad=True)
    z2 = torch.randn(4, 6, requires_grad=True)
    loss, _ = nt_xent(z1, z2, 0.2)
    loss.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


@pytest.mark.parametrize("device_autocast", ["cpu"])
def test_contrastive_losses_run_in_fp32_under_bf16_autocast(device_autocast):
    """Under bf16 autocast (cpu_bf16, CUDA amp) the similarity matmuls of NT-Xent, MoCo's InfoNCE and
    CLIP still run in float32: the loss and its gradient equal the fp32 ones, where a bf16 matmul
    divided by the temperature would be off by whole hundredths."""
    from selfsup.methods.clip import clip_loss
    from selfsup.methods.moco import batch_contrast, info_nce
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    neg = F.normalize(torch.randn(64, 16, generator=g), dim=1)
    cases = [lambda a, b: nt_xent(a, b, 0.1)[0],
             lambda a, b: info_nce(F.normalize(a, dim=1), F.normalize(b, dim=1), neg, 0.1)[0],
             lambda a, b: batch_contrast(F.normalize(a, dim=1), F.normalize(b, dim=1), 0.1)[0],
             lambda a, b: clip_loss(F.normalize(a, dim=1), F.normalize(b, dim=1), torch.tensor(10.0))[0]]
    for loss in cases:
        a, b = z1.clone().requires_grad_(), z2.clone()
        ref = loss(a, b)
        ref.backward()
        a2 = z1.clone().requires_grad_()
        with torch.autocast(device_autocast, dtype=torch.bfloat16):
            got = loss(a2, b)
        got.backward()
        assert got.dtype == torch.float32
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6), (float(got), float(ref))
        assert torch.allclose(a2.grad, a.grad, rtol=1e-4, atol=1e-6)
    # the guard is what makes the difference: the same matmul left to autocast is bf16
    with torch.autocast(device_autocast, dtype=torch.bfloat16):
        assert (z1 @ z2.T).dtype == torch.bfloat16
