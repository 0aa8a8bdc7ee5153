"""Colorization: Lab conversions, the ab bins, soft encoding, rebalancing, decoding, one step."""
import pytest
import torch

from selfsup.data.color import lab_to_rgb, lightness_input, rgb_to_lab
from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo
from selfsup.methods.colorization import Colorization, Config, annealed_mean, gamut_bins
from selfsup.models import create_backbone

RGB = DataInfo(channels=3, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, num_classes=10)


def colour_images(n=8, size=32, seed=0):
    """uint8 (n, 3, size, size): a saturated random-coloured square on a random-coloured background."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, size, size).clone()
    img[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = torch.rand(n, 3, 1, 1, generator=g)
    return (img * 255).round().to(torch.uint8)


def method(backbone="resnet18_quarter", **cfg):
    torch.manual_seed(0)
    return Colorization(create_backbone(backbone, in_chans=1, img_size=32), Config(**cfg), RGB)


def rgb_grid(n=33):
    t = torch.linspace(0, 1, n)
    return torch.stack(torch.meshgrid(t, t, t, indexing="ij")).reshape(1, 3, -1, 1)   # every colour of an n^3 grid


# ---------------------------------------------------------------- colour space
def test_rgb_lab_round_trip_and_known_values():
    x = torch.cat([rgb_grid(), torch.rand(1, 3, 4096, 1)], 2)
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-4
    known = {(1.0, 1.0, 1.0): (100.0, 0.0, 0.0), (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
             (1.0, 0.0, 0.0): (53.24, 80.09, 67.20), (0.0, 0.0, 1.0): (32.30, 79.19, -107.86)}   # skimage / Lindbloom
    for rgb, lab in known.items():
        got = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten()
        assert torch.allclose(got, torch.tensor(lab), atol=0.01), (rgb, got)


def test_lightness_input_is_scaled_L_for_uint8_float_and_grey():
    img = colour_images(4)
    x = lightness_input(img)
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, (rgb_to_lab(img.float() / 255)[:, :1] - 50) / 50)
    assert torch.allclose(x, lightness_input(img.float() / 255), atol=1e-6)
    grey = img[:, :1]
    assert torch.allclose(lightness_input(grey), lightness_input(grey.expand(-1, 3, -1, -1)))
    assert x.min() >= -1 and x.max() <= 1


# ---------------------------------------------------------------- bins, encoding, decoding
def test_bins_cover_the_gamut():
    bins = gamut_bins(10)
    assert 250 <= len(bins) <= 320                              # 262; the paper's looser hull has 313
    assert len(torch.unique(bins, dim=0)) == len(bins) and torch.equal(bins, (bins / 10).round() * 10)
    x = torch.cat([rgb_grid(), torch.rand(1, 3, 10000, 1)], 2)
    ab = rgb_to_lab(x)[0, 1:].flatten(1).T                       # (N, 2) in-gamut colours
    # max-norm distance to the nearest bin centre: every colour lies in some bin's cell
    dist = (ab[:, None, :] - bins[None]).abs().amax(-1).amin(1)
    assert dist.max() <= 5 + 1e-3


def test_soft_encoding_weights_sum_to_one_nearest_first():
    m = method()
    ab = torch.rand(500, 2) * 160 - 80
    idx, w = m.soft_encode(ab)
    assert idx.shape == w.shape == (500, 10)
    assert torch.allclose(w.sum(1), torch.ones(500))
    assert torch.equal(idx[:, 0], torch.cdist(ab, m.bins).argmin(1))
    assert (w[:, :1] >= w).all() and (w[:, :-1] >= w[:, 1:]).all()
    at_centre, _ = m.soft_encode(m.bins[:5].clone())
    assert torch.equal(at_centre[:, 0], torch.arange(5))


def test_annealed_mean_between_mode_and_mean():
    bins = gamut_bins(10)
    logits = torch.randn(2, len(bins), 3, 3)
    logits[:, 7] += 10                                           # a clear mode at bin 7
    mean = torch.einsum("bqhw,qc->bchw", logits.softmax(1), bins)
    assert torch.allclose(annealed_mean(logits, bins, 1.0), mean, atol=1e-4)
    cold = annealed_mean(logits, bins, 0.01)
    assert torch.allclose(cold, bins[7].view(1, 2, 1, 1).expand_as(cold), atol=1e-2)


def test_rebalancing_weights_normalised_and_rare_bins_weigh_more():
    m = method()
    assert torch.equal(m.weights, torch.ones(len(m.bins)))      # before prepare: no rebalancing
    m.prepare(colour_images(64, seed=1))
    p, w = m.prior, m.weights
    assert torch.isclose(p.sum(), torch.tensor(1.0)) and torch.isclose((p * w).sum(), torch.tensor(1.0))
    order = p.argsort()                                         # w is a decreasing function of p
    assert (w[order][:-1] >= w[order][1:] - 1e-5).all() and w[order[0]] > 2 * w[order[-1]]
    grey = method()
    grey.prepare(colour_images(8)[:, :1].expand(-1, 3, -1, -1).contiguous())
    assert torch.equal(grey.weights, torch.ones(len(grey.bins)))  # grey images are left out


# ---------------------------------------------------------------- the method
def test_refuses_grey_data_and_unknown_loss_in_one_line():
    bb = create_backbone("resnet18_quarter", in_chans=1, img_size=28)
    with pytest.raises(SelfSupError, match="--data") as e:
        Colorization(bb, Config(), DataInfo(channels=1, image_size=28, mean=[0.5], std=[0.25]))
    assert "\n" not in str(e.value) and "colour" in str(e.value)
    with pytest.raises(SelfSupError, match="--set loss=l2"):
        Colorization(create_backbone("resnet18_quarter", in_chans=1), Config(loss="l2"), RGB)


@pytest.mark.parametrize("backbone", ["resnet18_quarter", "vit_micro"])
@pytest.mark.parametrize("loss", ["classification", "regression"])
def test_one_step_reaches_the_backbone(backbone, loss):
    m = method(backbone, loss=loss)
    m.prepare(colour_images(16, seed=2))
    loss_v, logs = m({"images": colour_images(4)})
    assert loss_v.dim() == 0 and torch.isfinite(loss_v)
    assert set(logs) == {"pretext_acc", "ab_l1"} and all(torch.isfinite(v) and not v.requires_grad for v in logs.values())
    loss_v.backward()
    grads = [p.grad for p in m.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    first = next(m.backbone.parameters())
    assert first.shape[1] == 1 and first.grad.abs().sum() > 0   # the one-channel input layer learns


def test_backbone_sees_exactly_the_lightness_input():
    m = method(crop_min=1.0, flip_p=0.0)                       # no augmentation: the crop is the image
    seen, features = [], m.backbone.forward_features

    def spy(x, stage=None):
        seen.append(x)
        return features(x, stage)
    m.backbone.forward_features = spy
    images = colour_images(4)
    m({"images": images})
    assert torch.allclose(seen[0], lightness_input(images), atol=1e-6)


def test_grey_images_are_masked_out_of_the_loss():
    m = method()
    grey = colour_images(4)[:, :1].expand(-1, 3, -1, -1).contiguous()
    loss, logs = m({"images": grey})
    assert loss.item() == 0 and logs["pretext_acc"] == 0


def test_buffers_are_saved_and_pictures_are_three_rows_of_eight():
    m = method()
    m.prepare(colour_images(16, seed=3))
    state = m.state_dict()
    assert {"bins", "prior", "weights"} <= set(state)
    fresh = method()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weights, m.weights) and torch.equal(fresh.prior, m.prior)
    m.eval()
    images = colour_images(8)
    pics = m.pictures({"images": images})["colorization"].images
    assert pics.shape == (24, 3, 32, 32) and pics.min() >= 0 and pics.max() <= 1
    assert torch.allclose(pics[16:], images.float() / 255)                        # row 3: ground truth
    assert (pics[:8].amax(1) - pics[:8].amin(1)).max() < 1e-3                   # row 1: grey
    assert torch.allclose(rgb_to_lab(pics[8:16])[:, 0], rgb_to_lab(pics[16:])[:, 0], atol=1.0)  # row 2 keeps L
    assert m.pictures({"images": images[:3]})["colorization"].images.shape == (24, 3, 32, 32)
