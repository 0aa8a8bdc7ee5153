"""Batched augmentation: per-sample parameters, ranges, seeding, and agreement with
torchvision.transforms.v2.functional image by image."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup.data import augment as A

MEAN3, STD3 = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def rand_images(b=6, c=3, h=20, w=24, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def smooth_images(b=4, c=3, h=20, w=24, seed=0):
    """Random images with saturated, varied colours (hue is ill-defined on flat grey)."""
    x = rand_images(b, c, h // 4, w // 4, seed)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- parameters
def test_crop_boxes_in_range_and_differ():
    n, H, W, scale, ratio = 500, 28, 32, (0.08, 1.0), (3 / 4, 4 / 3)
    top, left, h, w = A.sample_crop_boxes(n, H, W, scale, ratio, generator=gen(0)).unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + h <= H) & (left + w <= W) & (h >= 1) & (w >= 1)).all()
    for v in (top, left, h, w):
        assert torch.equal(v, v.round())                      # whole pixels, as torchvision
    # rounding h and w to whole pixels moves area and aspect by at most half a pixel per side
    area = h * w / (H * W)
    lo = ((h - 0.5).clamp(min=0) * (w - 0.5).clamp(min=0)) / (H * W)
    hi = (h + 0.5) * (w + 0.5) / (H * W)
    assert ((hi >= scale[0]) & (lo <= scale[1])).all(), area.min()
    assert (((w + 0.5) / (h - 0.5) >= ratio[0]) & ((w - 0.5) / (h + 0.5) <= ratio[1])).all()
    assert len(set(map(tuple, torch.stack([top, left, h, w], 1).tolist()))) > n // 2  # samples differ


def test_crop_boxes_distribution_and_fallback():
    # no rounding issue at a large size: the fraction and aspect ratio stay inside their ranges
    top, left, h, w = A.sample_crop_boxes(2000, 1000, 1000, (0.2, 0.6), (0.5, 2.0), generator=gen(1)).unbind(1)
    frac = h * w / 1e6
    assert frac.min() > 0.2 - 0.003 and frac.max() < 0.6 + 0.003
    assert (w / h).min() > 0.5 - 0.01 and (w / h).max() < 2.0 + 0.01
    assert abs(frac.mean().item() - 0.4) < 0.01               # uniform in the area fraction
    assert abs(torch.log(w / h).mean().item()) < 0.05         # log-uniform aspect: symmetric
    # a request that can never fit falls back to torchvision's centre crop (all of a 10x10 image)
    b = A.sample_crop_boxes(4, 10, 10, scale=(2.0, 3.0), generator=gen(0))
    assert torch.equal(b, torch.tensor([[0.0, 0, 10, 10]] * 4))
    b = A.sample_crop_boxes(2, 10, 40, scale=(2.0, 3.0), ratio=(0.5, 2.0), generator=gen(0))
    assert torch.equal(b, torch.tensor([[0.0, 10, 10, 20]] * 2))  # wide image: narrowed to w/h = 2


def test_jitter_factors_per_sample_and_in_range(monkeypatch):
    seen = {}
    for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        def spy(x, f, _name=name, _op=getattr(A, name), **kw):
            seen[_name] = f.clone()
            return _op(x, f, **kw)
        monkeypatch.setitem(A.color_jitter.__globals__, name, spy)
    x = rand_images(400, 3, 4, 4)
    A.color_jitter(x, 0.4, 0.3, 0.6, 0.1, p=0.8, generator=gen(0))
    for name, lo, hi, ident in (("adjust_brightness", 0.6, 1.4, 1.0), ("adjust_contrast", 0.7, 1.3, 1.0),
                                ("adjust_saturation", 0.4, 1.6, 1.0), ("adjust_hue", -0.1, 0.1, 0.0)):
        f = seen[name]
        assert f.min() >= lo and f.max() <= hi, name
        assert len(f.unique()) > 250, name                    # one factor per sample
        untouched = (f == ident).float().mean().item()
        assert 0.12 < untouched < 0.28, (name, untouched)     # p = 0.8 applies to ~80%
    # which samples are jittered is one draw shared by the four ops
    assert torch.equal(seen["adjust_brightness"] == 1, seen["adjust_hue"] == 0)


# ---------------------------------------------------------------- seeding, shapes, devices
@pytest.mark.parametrize("c", [1, 3])
def test_make_view_seeded(c):
    imgs = (rand_images(8, c, 28, 28) * 255).to(torch.uint8)
    cfg = A.ViewConfig(size=20, blur_p=0.5, solarize_p=0.3)
    mean, std = MEAN3[:c], STD3[:c]
    v1 = A.make_view(imgs, cfg, mean, std, generator=gen(3))
    v2 = A.make_view(imgs, cfg, mean, std, generator=gen(3))
    v3 = A.make_view(imgs, cfg, mean, std, generator=gen(4))
    assert v1.shape == (8, c, 20, 20) and v1.dtype == torch.float32
    assert torch.equal(v1, v2)
    assert not torch.allclose(v1, v3)
    # samples in one batch get different crops: the same image repeated gives different views
    same = imgs[:1].expand(8, -1, -1, -1)
    v = A.make_view(same, cfg, mean, std, generator=gen(5))
    assert all(not torch.allclose(v[0], v[i]) for i in range(1, 8))
    # the global RNG is used when no generator is given
    torch.manual_seed(7)
    g1 = A.make_view(imgs, cfg, mean, std)
    torch.manual_seed(7)
    assert torch.equal(g1, A.make_view(imgs, cfg, mean, std))


def test_grey_stays_grey_and_multi_crop():
    imgs = (rand_images(5, 1, 28, 28) * 255).to(torch.uint8)
    g, l = A.ViewConfig(size=24), A.ViewConfig(size=12, scale=(0.05, 0.4), blur_p=1.0)
    views = A.multi_crop(imgs, g, 2, l, 3, (0.5,), (0.25,), generator=gen(0))
    assert [tuple(v.shape) for v in views] == [(5, 1, 24, 24)] * 2 + [(5, 1, 12, 12)] * 3
    assert not torch.equal(views[0], views[1])
    # saturation, hue and grayscale leave a grey batch untouched (and do not make it RGB)
    x = rand_images(3, 1, 8, 8)
    f = torch.tensor([0.2, 1.0, 1.7])
    assert torch.equal(A.adjust_saturation(x, f), x) and torch.equal(A.adjust_hue(x, f - 1), x)
    assert torch.equal(A.grayscale(x, torch.ones(3, dtype=torch.bool)), x)


def test_equal_recipes_are_built_as_one_batch(monkeypatch):
    imgs = (rand_images(6, 3, 28, 28) * 255).to(torch.uint8)
    g, l = A.ViewConfig(size=24), A.ViewConfig(size=12, scale=(0.05, 0.4))
    calls = []
    real = A._make_view
    monkeypatch.setattr(A, "_make_view", lambda x, cfg, *a, **k: calls.append(len(x)) or real(x, cfg, *a, **k))
    views = A.make_views(imgs, [g, g, l, l, l, g], MEAN3, STD3, generator=gen(0))
    assert calls == [12, 18, 6]                      # runs of equal recipes: one call each, k * B images
    assert [tuple(v.shape) for v in views] == [(6, 3, 24, 24)] * 2 + [(6, 3, 12, 12)] * 3 + [(6, 3, 24, 24)]
    # every sample of every view draws its own parameters: no two views of an image are equal
    for i in range(6):
        assert not torch.allclose(views[0][i], views[1][i])
        assert not torch.allclose(views[2][i], views[3][i]) and not torch.allclose(views[3][i], views[4][i])
    # seeded as before: the same generator gives the same views
    again = A.make_views(imgs, [g, g, l, l, l, g], MEAN3, STD3, generator=gen(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again))


def test_large_runs_are_cut_into_cache_sized_calls(monkeypatch):
    imgs = (rand_images(10, 3, 16, 16) * 255).to(torch.uint8)
    cfg = A.ViewConfig(size=16)
    calls = []
    real = A._make_view
    monkeypatch.setattr(A, "_make_view", lambda x, c, *a, **k: calls.append(len(x)) or real(x, c, *a, **k))
    monkeypatch.setattr(A, "CHUNK", 7 * 3 * 16 * 16)                 # 7 images per call
    views = A.make_views(imgs, [cfg, cfg], MEAN3, STD3, generator=gen(0))
    assert calls == [7, 7, 6]                                          # 20 images in 3 near-equal calls
    assert [tuple(v.shape) for v in views] == [(10, 3, 16, 16)] * 2
    assert not torch.allclose(views[0], views[1])
    calls.clear()
    again = A.make_views(imgs, [cfg, cfg], MEAN3, STD3, generator=gen(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again)) and calls == [7, 7, 6]


def test_any_device():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    imgs = (rand_images(4, 3, 16, 16) * 255).to(torch.uint8)
    cfg = A.ViewConfig(size=12, blur_p=0.5, solarize_p=0.5)
    ref = A.make_view(imgs, cfg, MEAN3, STD3, generator=gen(0))
    for d in devices:
        out = A.make_view(imgs.to(d), cfg, MEAN3, STD3, generator=gen(0))   # CPU generator, any device
        assert out.device.type == d
        torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=0)      # same parameters everywhere


# ---------------------------------------------------------------- agreement with torchvision
def test_to_float_and_normalize():
    u8 = (rand_images(2, 3, 5, 5) * 255).to(torch.uint8)
    x = A.to_float(u8)
    assert torch.equal(x, TF.to_dtype(u8, torch.float32, scale=True))      # exact
    assert torch.equal(A.normalize(x, MEAN3, STD3), TF.normalize(x, list(MEAN3), list(STD3)))  # exact


@pytest.mark.parametrize("c", [1, 3])
def test_resized_crop_and_flip_match_torchvision(c):
    x = rand_images(3, c, 20, 24)
    # downscaling and upscaling crops, boxes at the border and inside; flips folded in
    flip = torch.tensor([False, True, True, False, True, False])
    for size, boxes in ((12, [[0.0, 0, 20, 24], [2, 3, 16, 18], [4, 1, 13, 20]]),
                        (28, [[3.0, 5, 7, 9], [0, 0, 5, 5], [13, 17, 7, 7]])):
        boxes = torch.tensor(boxes)
        out = A.resized_crop(x, boxes, size, flip[:3] if size == 12 else flip[3:])
        assert out.shape == (3, c, size, size)
        for i, (t, l, h, w) in enumerate(boxes.int().tolist()):
            ref = TF.resized_crop(x[i], t, l, h, w, [size, size], antialias=False)
            ref = TF.horizontal_flip(ref) if (flip[i] if size == 12 else flip[3 + i]) else ref
            # tolerance 2e-6: float rounding of the sample positions only; reading one pixel
            # outside the box, or an off-by-half-pixel grid, gives errors of ~0.1
            torch.testing.assert_close(out[i], ref, atol=2e-6, rtol=0, msg=f"box {t, l, h, w} -> {size}")


@pytest.mark.parametrize("c", [1, 3])
def test_colour_ops_match_torchvision(c):
    x = smooth_images(5, c, 16, 16)
    f = torch.tensor([0.0, 0.5, 1.0, 1.3, 2.0])
    pairs = [(A.adjust_brightness, TF.adjust_brightness), (A.adjust_contrast, TF.adjust_contrast),
             (A.adjust_saturation, TF.adjust_saturation)]
    for ours, theirs in pairs:
        out = ours(x, f)
        for i in range(len(x)):
            # tolerance 1e-6: the same formula, float rounding only
            torch.testing.assert_close(out[i], theirs(x[i], float(f[i])), atol=1e-6, rtol=0,
                                       msg=f"{ours.__name__} sample {i}")
    apply = torch.tensor([True, False, True, True, False])
    out = A.grayscale(x, apply)
    for i in range(len(x)):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=c) if apply[i] else x[i]
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)          # same weights, rounding only
    out = A.solarize(x, apply, 0.4)
    for i in range(len(x)):
        assert torch.equal(out[i], TF.solarize(x[i], 0.4) if apply[i] else x[i])  # exact


def test_hue_matches_torchvision():
    # exact HSV, so only float rounding: max abs error measured 1.7e-6 on random images (bound 5e-6)
    x = torch.cat([smooth_images(6, 3, 16, 16), rand_images(2, 3, 16, 16),
                   torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16)])  # + pure colours
    x[-1, :, :4] = 0.3                                                      # + flat grey pixels
    shift = torch.linspace(-0.5, 0.5, len(x))
    out = A.adjust_hue(x, shift)
    errs = torch.stack([(out[i] - TF.adjust_hue(x[i], float(shift[i]))).abs().max() for i in range(len(x))])
    assert errs.max() < 5e-6, errs


@pytest.mark.parametrize("c", [1, 3])
def test_gaussian_blur_matches_torchvision(c):
    x = rand_images(4, c, 17, 20)
    sigma = torch.tensor([0.1, 0.7, 1.5, 3.0])
    for k in (3, 7):
        out = A.gaussian_blur(x, sigma, k)
        for i in range(len(x)):
            ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2)
            torch.testing.assert_close(out[i], ref, atol=2e-6, rtol=0)      # separable vs 2-D kernel: rounding only


def test_inplace_flag():
    # the default leaves the input alone; inplace=True gives the same values in x's own storage
    x = smooth_images(4, 3, 8, 8)
    f = torch.tensor([0.5, 0.9, 1.2, 1.6])
    calls = [(A.adjust_brightness, (f,)), (A.adjust_contrast, (f,)), (A.adjust_saturation, (f,)),
             (A.adjust_hue, (f - 1.05,)), (A.grayscale, (f > 1,)), (A.normalize, (MEAN3, STD3)),
             (A.color_jitter, (0.4, 0.4, 0.4, 0.1))]
    for op, args in calls:
        before = x.clone()
        kw = {"generator": gen(0)} if op is A.color_jitter else {}
        out = op(x, *args, **kw)
        assert torch.equal(x, before), op.__name__
        y = x.clone()
        kw = {"generator": gen(0)} if op is A.color_jitter else {}
        out2 = op(y, *args, inplace=True, **kw)
        assert out2.data_ptr() == y.data_ptr() and torch.equal(out2, out), op.__name__


def test_color_jitter_identity_when_not_applied():
    x = smooth_images(4, 3, 8, 8)
    out = A.color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.0, generator=gen(0))
    torch.testing.assert_close(out, x, atol=2e-6, rtol=0)                   # hue 0 round-trips HSV
