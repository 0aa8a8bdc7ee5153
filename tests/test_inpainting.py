"""Inpainting (context encoder): masks, the weighted loss, one training step, references, pictures."""
import math

import pytest
import torch

import selfsup.methods.inpainting as inp
from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo
from selfsup.methods.inpainting import (Config, Inpainting, erode, fill_border_interpolation, fill_mean,
                                        loss_weights, masked_l2, region_masks)
from selfsup.models import create_backbone

from conftest import tiny_images


def make(name="resnet18_quarter", channels=1, size=28, **cfg):
    torch.manual_seed(0)
    info = DataInfo(channels, size, [0.3] * channels, [0.3] * channels)
    return Inpainting(create_backbone(name, in_chans=channels, img_size=size), Config(**cfg), info)


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_blocks_cover_exactly_the_fraction_per_sample(size, fraction):
    torch.manual_seed(1)
    m = region_masks(256, size, "blocks", fraction)
    assert m.shape == (256, 1, size, size) and m.dtype == torch.bool
    # exact up to rounding to whole pixels, in every sample
    assert (m.sum((1, 2, 3)) == round(fraction * size * size)).all()
    assert len({tuple(r.nonzero().flatten().tolist()) for r in m[:16]}) == 16, "masks are not random per sample"


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_center_mask_is_a_centred_square_of_the_fraction(size, fraction):
    m = region_masks(3, size, "center", fraction)
    cov = m.float().mean((1, 2, 3))
    assert (cov - fraction).abs().max() <= math.sqrt(fraction) / size + 1 / size ** 2   # side rounded to a pixel
    rows, cols = m[0, 0].any(1).nonzero().flatten(), m[0, 0].any(0).nonzero().flatten()
    side = round(math.sqrt(fraction) * size)
    assert len(rows) == len(cols) == side and m[0].sum() == side ** 2
    assert abs(rows[0].item() - (size - 1 - rows[-1].item())) <= 1   # centred
    assert torch.equal(m[0], m[2])


def test_center_hole_band_geometry():
    mask = region_masks(1, 28, "center", 0.25)     # 14 x 14 at rows/cols 7..20
    hole = erode(mask, 2)
    want = torch.zeros(28, 28, dtype=torch.bool)
    want[9:19, 9:19] = True                        # shrunk by 2 px per side
    assert torch.equal(hole[0, 0], want)
    band = mask & ~hole
    assert band.sum() == 14 ** 2 - 10 ** 2
    assert torch.equal(erode(mask, 0), mask)


@pytest.mark.parametrize("px", [1, 2])
def test_erode_matches_a_naive_loop_on_block_masks(px):
    torch.manual_seed(2)
    masks = region_masks(4, 16, "blocks", 0.3, (0.2, 0.6))
    hole = erode(masks, px)
    for m, h in zip(masks[:, 0], hole[:, 0]):
        for y in range(16):
            for x in range(16):
                # a pixel stays hidden iff every pixel within px (Chebyshev), inside the image, is in the region
                win = m[max(0, y - px):y + px + 1, max(0, x - px):x + px + 1]
                assert bool(h[y, x]) == bool(win.all()), (y, x)
    assert (hole <= masks).all()


# ----------------------------------------------------------------------------- loss

def test_masked_l2_weights_band_tenfold_and_ignores_the_outside():
    mask = region_masks(2, 16, "center", 0.25)
    hole = erode(mask, 1)
    w = loss_weights(mask, hole, 10.0)
    assert set(w.unique().tolist()) == {0.0, 1.0, 10.0}
    assert torch.equal(w == 10.0, mask & ~hole) and torch.equal(w == 1.0, hole)
    target = torch.randn(2, 3, 16, 16)
    pred = (target + 1.0).requires_grad_()         # the same error everywhere
    loss = masked_l2(pred, target, w)
    assert torch.isclose(loss, torch.tensor(1.0))  # normalised by the sum of weights: independent of the hole size
    loss.backward()
    g = pred.grad
    assert (g[~mask.expand_as(g)] == 0).all()
    assert torch.allclose(g[(mask & ~hole).expand_as(g)], 10 * g[hole.expand_as(g)][0])
    assert (g[hole.expand_as(g)] > 0).all()


def test_pixels_outside_the_region_do_not_enter_the_method_loss(monkeypatch):
    method = make(size=32, mask="blocks", overlap=1)
    masks, preds = [], []
    real_masks, real_predict = inp.region_masks, method.predict
    monkeypatch.setattr(inp, "region_masks", lambda *a, **k: masks.append(real_masks(*a, **k)) or masks[-1])

    def spy(x, hole):
        out = real_predict(x, hole)
        out.retain_grad()
        preds.append(out)
        return out
    monkeypatch.setattr(method, "predict", spy)
    loss, _ = method({"images": tiny_images(8, 1, 32)})
    loss.backward()
    g, m = preds[0].grad, masks[0].expand_as(preds[0])
    assert (g[~m] == 0).all() and (g[m] != 0).float().mean() > 0.9


# ----------------------------------------------------------------------------- training step

@pytest.mark.parametrize("name, channels, size, mask", [
    ("resnet18_quarter", 1, 28, "blocks"), ("resnet18_quarter", 3, 32, "center"), ("vit_micro", 3, 32, "blocks")])
def test_one_step_is_finite_and_reaches_the_backbone(name, channels, size, mask):
    method = make(name, channels, size, mask=mask)
    loss, logs = method({"images": tiny_images(8, channels, size)})
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert 0 <= logs["hole_mse"] <= 1 and not logs["hole_mse"].requires_grad
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert method.decoder[-1].weight.grad.abs().sum() > 0


def test_adversarial_step_trains_the_discriminator_only_with_its_own_loss():
    method = make(size=32, adversarial_weight=0.5)
    loss, logs = method({"images": tiny_images(8, 1, 32)})
    assert torch.isfinite(loss) and {"d_loss", "g_adv", "rec"} <= set(logs)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.disc.parameters())

    method.zero_grad(set_to_none=True)
    real = torch.randn(4, 1, 32, 32)
    fake = torch.randn(4, 1, 32, 32, requires_grad=True)
    d_loss, g_loss = method.adversarial_losses(real, fake)
    g_loss.backward(retain_graph=True)
    assert fake.grad.abs().sum() > 0                                    # G's term reaches the generator...
    assert all(p.grad is None for p in method.disc.parameters())        # ...and does not push D
    fake.grad = None
    d_loss.backward()
    assert fake.grad is None                                            # D's term sees a detached fake
    assert all(p.grad.abs().sum() > 0 for p in method.disc.parameters())


def test_config_errors_name_the_option():
    for bad, key in [({"mask": "ring"}, "mask"), ({"hole_fraction": 1.5}, "hole_fraction"),
                     ({"overlap": 7}, "overlap"), ({"adversarial_weight": 1.0}, "adversarial_weight")]:
        with pytest.raises(SelfSupError, match=f"--set {key}="):
            make(size=28, **bad)


# ----------------------------------------------------------------------------- references, pictures

def test_reference_fills():
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    ramp = torch.stack([0.1 + 0.02 * xx, 0.9 - 0.025 * yy, 0.2 + 0.01 * (xx + yy)]).unsqueeze(0)   # (1, 3, 28, 28)
    hole = erode(region_masks(1, 28, "center", 0.25), 1)
    mean = [0.2, 0.4, 0.6]
    filled = fill_mean(ramp, hole, mean)
    assert torch.equal(filled[hole.expand_as(ramp)].view(3, -1), torch.tensor(mean)[:, None].expand(3, int(hole.sum())))
    assert torch.equal(filled[~hole.expand_as(ramp)], ramp[~hole.expand_as(ramp)])
    interp = fill_border_interpolation(ramp, hole)
    assert (interp - ramp).abs().max() < 1e-3                          # a linear ramp is harmonic
    assert torch.equal(interp[~hole.expand_as(ramp)], ramp[~hole.expand_as(ramp)])


def test_reconstruction_error_compares_with_references_on_the_same_masks():
    method = make(size=28, mask="center")
    method.train()
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    smooth = ((0.5 + 0.4 * torch.sin(xx / 5)[None, None] * torch.rand(6, 1, 1, 1)) * 255).round().to(torch.uint8)
    err = method.reconstruction_error(smooth, batch_size=4)
    assert set(err) == {"model", "mean_fill", "border_interpolation"} and method.training
    assert all(math.isfinite(v) and v >= 0 for v in err.values())
    assert err["border_interpolation"] < err["mean_fill"]
    g = lambda: torch.Generator().manual_seed(3)   # noqa: E731
    blocks = make(size=28, mask="blocks")
    assert blocks.reconstruction_error(smooth, generator=g()) == blocks.reconstruction_error(smooth, generator=g())


def test_pictures_rows_masked_filled_original():
    method = make(channels=3, size=32, mask="center").eval()
    images = tiny_images(8, 3, 32)
    pics = method.pictures({"images": images})["inpainting"].images
    assert pics.shape == (24, 3, 32, 32) and pics.min() >= 0 and pics.max() <= 1
    original = images.float() / 255
    hole = erode(region_masks(8, 32, "center", 0.25), method.cfg.overlap).expand_as(original)
    assert torch.allclose(pics[16:], original, atol=1e-5)
    for row in (pics[:8], pics[8:16]):      # masked input and filled-in output keep the context
        assert torch.allclose(row[~hole], original[~hole], atol=1e-5)
    assert torch.allclose(pics[:8][hole], torch.tensor(0.3))   # the hole shows the dataset mean
