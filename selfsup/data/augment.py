"""Batched augmentation: every op takes a whole float batch ``x: [B, C, H, W]`` in [0, 1]
(C = 1 grey or 3 RGB) and gives each sample its own random parameters, with no Python loop
over images, so the same code runs on CPU and GPU.

Random parameters are drawn on the CPU (``generator=None`` means the global RNG) in a fixed
order and then moved to ``x.device``, so a seeded ``torch.Generator`` reproduces a view exactly
on any device. The colour ops follow ``torchvision.transforms.v2.functional`` (same formulas,
per-sample factors); ``tests/test_augment.py`` checks each against it with a stated tolerance.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


# CPU threads for building views (0: torch's own setting). Views are many small elementwise ops on
# [B, C, 28, 28] tensors, where starting threads costs more than they give: one thread built 1.1-1.2x
# the views/s of two on the 2-core machine (BENCHMARKS.md, augment-speed), and left the model its
# threads. The training loop sets it from TrainConfig.augment_threads.
THREADS = 1


@contextlib.contextmanager
def view_threads(x: torch.Tensor):
    """Run the enclosed view building with :data:`THREADS` CPU threads (CPU tensors only)."""
    old = torch.get_num_threads()
    if x.device.type != "cpu" or THREADS <= 0 or THREADS >= old:
        yield
        return
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------- random parameters (on the CPU)
def _uniform(shape, lo: float, hi: float, generator=None) -> torch.Tensor:
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


def _coin(n: int, p: float, generator=None) -> torch.Tensor:
    """Bool (n,): True with probability p. Always draws, so the RNG stream does not depend on p."""
    return torch.rand(n, generator=generator) < p


def _per_sample(v, x: torch.Tensor) -> torch.Tensor:
    """A float or a (B,) tensor -> (B, 1, 1, 1) (or (1,1,1,1)) on x's device, for broadcasting."""
    v = torch.as_tensor(v, dtype=x.dtype).to(x.device, non_blocking=True)
    return v.reshape(-1, 1, 1, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 in [0, 1] (as ``v2.ToDtype(float32, scale=True)``);
    float input is returned unchanged."""
    if images.is_floating_point():
        return images
    return images.to(torch.float32).mul_(1.0 / 255)


# ---------------------------------------------------------------- geometry
def sample_crop_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      generator=None, tries: int = 10) -> torch.Tensor:
    """Random crop boxes ``[n, 4]`` = (top, left, h, w) in whole pixels (float), with
    torchvision ``RandomResizedCrop.get_params`` semantics: area fraction uniform in ``scale``,
    aspect ratio w/h log-uniform in ``ratio``, the first of ``tries`` draws that fits the image,
    else the centre crop clipped to ``ratio``. All tries of all samples are drawn at once."""
    area = height * width
    target = area * _uniform((n, tries), *scale, generator=generator)
    log_r = _uniform((n, tries), math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)           # (n, tries)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)               # index of the first True
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)

    # torchvision's fallback: the whole image, narrowed to the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    h = torch.where(found, h, torch.tensor(float(fh)))
    w = torch.where(found, w, torch.tensor(float(fw)))
    u = torch.rand(2, n, generator=generator)
    top = torch.where(found, (u[0] * (height - h + 1)).floor(), (height - h) // 2)
    left = torch.where(found, (u[1] * (width - w + 1)).floor(), (width - w) // 2)
    return torch.stack([top, left, h, w], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Crop ``boxes [B, 4]`` (top, left, h, w in pixels) out of ``x [B, C, H, W]`` and resize each
    to ``[B, C, size, size]`` with bilinear interpolation: one ``grid_sample`` for the batch.
    ``flip [B]`` (bool) mirrors the selected crops horizontally, folded into the affine map.
    Matches ``F.resized_crop(..., antialias=False)`` (and ``F.horizontal_flip``) to float rounding."""
    B, C, H, W = x.shape
    top, left, h, w = boxes.to(device=x.device, dtype=x.dtype)[:, :, None].unbind(1)   # each (B, 1)
    u = (torch.arange(size, dtype=x.dtype, device=x.device) + 0.5) / size    # output pixel centres in (0, 1)
    ux = u if flip is None else torch.where(flip.to(x.device)[:, None], 1 - u, u)          # (B, S)
    # The map is axis-aligned (scale + shift), so the sampling grid is the outer product of one
    # column and one row coordinate per sample: cheaper than F.affine_grid, which multiplies a
    # 2x3 matrix into every output pixel, and it lets us clamp per axis. Source coordinates are
    # in pixels (centre of pixel i at i); like F.interpolate we never read outside the box (an
    # upscaled crop's outer ring would otherwise blend in its neighbours): clamp to the centres
    # of the box's edge pixels.
    px = torch.minimum(torch.maximum(left + ux * w - 0.5, left), left + w - 1)             # (B, S)
    py = torch.minimum(torch.maximum(top + u * h - 0.5, top), top + h - 1)                 # (B, S)
    gx, gy = (2 * px + 1) / W - 1, (2 * py + 1) / H - 1       # to grid_sample's [-1, 1] (align_corners=False)
    # (B, S, S, 2) written by two broadcast copies: torch.stack of the two broadcast views cost
    # about 40% as much as grid_sample itself here (cat of stride-0 inputs)
    grid = torch.empty(B, size, size, 2, dtype=x.dtype, device=x.device)
    grid[..., 0] = gx[:, None, :]
    grid[..., 1] = gy[:, :, None]
    # Every sample point lies within the image (clamped above), so padding only ever meets a
    # neighbour with weight 0 (a point on the last pixel's centre): "zeros" gives the same views
    # as "border" and skipped its clamping, about 8% of grid_sample's time on CPU.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------- colour (torchvision semantics)
# Each op returns a new tensor, or with ``inplace=True`` overwrites ``x`` (what make_view does on
# the views it owns). On CPU, fewer fresh allocations matter: large freed blocks go back to the
# OS and every new one pays page faults, which cost as much as the arithmetic here.

def _blend_(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's ``f * a + (1 - f) * b`` clamped to [0, 1], overwriting ``a``; written as
    ``(a - b) * f + b``, faster on CPU than ``torch.lerp`` with broadcast operands."""
    return a.sub_(b).mul_(f).add_(b).clamp_(0, 1)


# torchvision's luma weights for R, G, B
_LUMA = (0.2989, 0.587, 0.114)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``[B, 1, H, W]`` with torchvision's weights (0.2989, 0.587, 0.114); grey input as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def grayscale(x: torch.Tensor, apply: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Replace the samples where ``apply [B]`` (bool) is set by their luma, repeated over the
    3 channels; a no-op for grey input."""
    if x.shape[1] == 1:
        return x
    a = apply.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    gray = rgb_to_grayscale(x).mul_(a)                     # exact: x * 0 + luma * 1, or x * 1 + 0
    return (x.mul_(1 - a) if inplace else x * (1 - a)).add_(gray)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor | float, inplace: bool = False) -> torch.Tensor:
    """``x * factor`` clamped to [0, 1]; ``factor`` a float or ``[B]``."""
    f = _per_sample(factor, x)
    return (x.mul_(f) if inplace else x * f).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor | float, inplace: bool = False) -> torch.Tensor:
    """Blend each sample with the mean of its greyscale image; ``factor`` a float or ``[B]``."""
    m = x.mean((2, 3))                                                        # (B, C)
    if x.shape[1] == 3:   # the mean of the luma is the luma of the channel means
        m = m @ torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
    return _blend_(x if inplace else x.clone(), m.reshape(-1, 1, 1, 1), _per_sample(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor | float, inplace: bool = False) -> torch.Tensor:
    """Blend each sample with its greyscale image; a no-op for grey input."""
    if x.shape[1] == 1:
        return x
    return _blend_(x if inplace else x.clone(), rgb_to_grayscale(x), _per_sample(factor, x))


def adjust_hue(x: torch.Tensor, shift: torch.Tensor | float, inplace: bool = False) -> torch.Tensor:
    """Rotate the hue of each sample by ``shift`` (float or ``[B]``, in [-0.5, 0.5] turns); a no-op
    for grey input. Exact HSV, not an approximation: torchvision's hue formula (in sixths of a
    turn, picked by the largest channel), then the closed form of HSV -> RGB
    ``c = max - (max - min) * f(n_c + h)`` with ``f(k) = clamp(2 - |k - 2|, 0, 1)`` of period 6,
    ``n = 5, 3, 1`` for R, G, B. Written with arithmetic masks and in-place ops rather than
    ``where``/``remainder``/``gather``, which are several times slower on CPU. Measured against
    ``F.adjust_hue`` on random images: max abs error 1.7e-6, mean 5e-8 (float rounding)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)                                          # (B, H, W)
    rng = maxc - minc
    # which channel is largest; ties broken R > G > B like torchvision (a tie gives the same hue)
    is_r = r == maxc
    is_g = (g == maxc) & ~is_r
    is_b = ~(is_r | is_g)
    h = (g - b).mul_(is_r)                                                     # hue in sixths, [-1, 5)
    h += (b - r).add_(rng, alpha=2).mul_(is_g)
    h += (r - g).add_(rng, alpha=4).mul_(is_b)
    # grey pixels (rng = 0) have numerator 0; any hue gives c = max there
    h.div_(rng.clamp(min=1e-12)).add_(6 * _per_sample(shift, x)[:, 0])
    h -= torch.floor(h / 6).mul_(6)                                            # [0, 6)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.add(h.unsqueeze(1), n, out=x) if inplace else h.unsqueeze(1) + n   # x is no longer needed
    # k in [1, 11): f over two periods = trapezoids centred at 2 and 8
    f = (k - 2).abs_().neg_().add_(2).clamp_(0, 1)
    f += k.sub_(8).abs_().neg_().add_(2).clamp_(0, 1)                         # (B, 3, H, W)
    return torch.addcmul(maxc.unsqueeze(1), rng.unsqueeze(1), f, value=-1, out=k)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float = 0.8, generator=None, inplace: bool = False) -> torch.Tensor:
    """torchvision ``RandomApply([ColorJitter(b, c, s, h)], p)`` on a batch: factors uniform in
    [max(0, 1 - s), 1 + s] and hue shift uniform in [-h, h], drawn per sample; samples not picked
    (probability 1 - p) get identity factors. The order of the four ops is random per batch
    (torchvision draws it per image). Saturation and hue are skipped for grey input."""
    B, C = x.shape[:2]
    fb = _uniform(B, max(0.0, 1 - brightness), 1 + brightness, generator)
    fc = _uniform(B, max(0.0, 1 - contrast), 1 + contrast, generator)
    fs = _uniform(B, max(0.0, 1 - saturation), 1 + saturation, generator)
    fh = _uniform(B, -hue, hue, generator)
    keep = ~_coin(B, p, generator)
    order = torch.randperm(4, generator=generator).tolist()
    ops = [(brightness > 0, adjust_brightness, fb.masked_fill(keep, 1.0)),
           (contrast > 0, adjust_contrast, fc.masked_fill(keep, 1.0)),
           (saturation > 0 and C == 3, adjust_saturation, fs.masked_fill(keep, 1.0)),
           (hue > 0 and C == 3, adjust_hue, fh.masked_fill(keep, 0.0))]
    if not inplace and any(on for on, _, _ in ops):
        x = x.clone()
    for i in order:
        on, op, factor = ops[i]
        if on:
            x = op(x, factor, inplace=True)
    return x


# ---------------------------------------------------------------- blur, solarize, normalise
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float, kernel_size: int) -> torch.Tensor:
    """Gaussian blur with a per-sample ``sigma`` (float or ``[B]``) and an odd ``kernel_size``,
    reflect padding, as ``F.gaussian_blur``: two grouped 1-D convolutions (one group per
    sample and channel) so every sample gets its own kernel in one call."""
    B, C, H, W = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)        # (k,)
    s = _per_sample(sigma, x).view(-1, 1).expand(B, 1)
    kern = torch.softmax(-(t / s) ** 2 / 2, dim=1)                            # (B, k), sums to 1
    kern = kern.repeat_interleave(C, 0)                                       # (B*C, k)
    y = F.pad(x.reshape(1, B * C, H, W), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kern.view(B * C, 1, 1, kernel_size), groups=B * C)       # along W
    y = F.conv2d(y, kern.view(B * C, 1, kernel_size, 1), groups=B * C)       # along H
    return y.view(B, C, H, W)


def solarize(x: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert (1 - x) the pixels >= ``threshold`` of the samples where ``apply [B]`` is set."""
    return torch.where(apply.to(x.device).view(-1, 1, 1, 1) & (x >= threshold), 1 - x, x)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``mean``/``std`` of length C (or 1)."""
    if len(set(mean)) == 1 and len(set(std)) == 1:
        # one value for every channel (grey data, or 0.5 / 0.25 for all): scalar ops, without the
        # small tensors a per-channel broadcast needs, which cost as much as a pass on 28x28 views
        m, s = float(mean[0]), float(std[0])
        return (x.sub_(m) if inplace else x - m).mul_(1.0 / s)
    m = torch.as_tensor(mean, dtype=x.dtype).to(x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).to(x.device).view(1, -1, 1, 1)
    return (x.sub_(m) if inplace else x - m).div_(s)


# ---------------------------------------------------------------- view recipes
@dataclass
class ViewConfig:
    """One view recipe (SimCLR's defaults); probabilities are per sample."""
    size: int                                  # output side in pixels
    scale: tuple[float, float] = (0.08, 1.0)   # crop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h
    flip_p: float = 0.5
    jitter_p: float = 0.8                      # colour jitter applied with this probability
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 0                       # 0 -> about 10% of the side, odd, at least 3
    solarize_p: float = 0.0


def make_view(images: torch.Tensor, cfg: ViewConfig, mean: Sequence[float], std: Sequence[float],
              generator=None) -> torch.Tensor:
    """One augmented, normalised view ``[B, C, size, size]`` of ``images [B, C, H, W]`` (uint8 or
    float in [0, 1]): crop + flip, colour jitter, grayscale, blur, solarize, normalise; on the CPU
    with :data:`THREADS` threads."""
    with view_threads(images):
        return _make_view(images, cfg, mean, std, generator)


def _make_view(images, cfg: ViewConfig, mean, std, generator=None) -> torch.Tensor:
    x = to_float(images)
    B, C, H, W = x.shape
    boxes = sample_crop_boxes(B, H, W, cfg.scale, cfg.ratio, generator)
    flip = _coin(B, cfg.flip_p, generator)
    x = resized_crop(x, boxes, cfg.size, flip)
    if cfg.jitter_p > 0:
        x = color_jitter(x, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, cfg.jitter_p, generator,
                         inplace=True)   # x is the crop's fresh output from here on
    if cfg.gray_p > 0 and C == 3:
        x = grayscale(x, _coin(B, cfg.gray_p, generator), inplace=True)
    if cfg.blur_p > 0:
        k = cfg.blur_kernel or max(3, int(0.1 * cfg.size) | 1)
        sigma = _uniform(B, *cfg.blur_sigma, generator=generator)
        idx = _coin(B, cfg.blur_p, generator).nonzero()[:, 0]
        # blur only the picked samples: a Gaussian is never exactly the identity
        if len(idx):
            x[idx.to(x.device)] = gaussian_blur(x[idx.to(x.device)], sigma[idx], k)
    if cfg.solarize_p > 0:
        x = solarize(x, _coin(B, cfg.solarize_p, generator))
    return normalize(x, mean, std, inplace=True)


# Floats per _make_view call when make_views builds its views: each view is a chain of passes over
# its batch, which ran fastest while the batch stayed about L2-sized. Batches of 0.4-0.5 M floats
# (512 grey 28x28 images, 128 RGB 32x32) gave the most views/s, both larger and smaller fewer
# (BENCHMARKS.md, "Views in cache-sized calls"); larger runs are split, equal recipes merged.
CHUNK = 1 << 19


def make_views(images: torch.Tensor, cfgs: Sequence[ViewConfig], mean: Sequence[float], std: Sequence[float],
               generator=None) -> list[torch.Tensor]:
    """One view per recipe in ``cfgs`` (e.g. 2 global + k local crops), each ``[B, C, size, size]``;
    the batch is converted to float once. A run of k consecutive equal recipes (SimCLR's two views,
    DINO's local crops) is built as one batch of k * B images, cut into calls of about
    :data:`CHUNK` floats: every sample still draws its own crop, flip and colour factors, but the
    per-call work (parameter draws, small ops) is paid once per call and each call's passes stay
    in cache. The order of the four colour-jitter ops is drawn per call, so views built in one
    call share it."""
    with view_threads(images):
        x = to_float(images)
        B, C = x.shape[:2]
        out, i = [], 0
        while i < len(cfgs):
            cfg, k = cfgs[i], 1
            while i + k < len(cfgs) and cfgs[i + k] == cfg:
                k += 1
            total = k * B
            per_image = max(x[0].numel(), C * cfg.size * cfg.size)
            calls = -(-total // max(1, CHUNK // per_image))           # ceil
            step = -(-total // calls)                                  # equal calls, the last one shorter
            xs = x if k == 1 else x.repeat(k, 1, 1, 1)
            parts = [_make_view(xs[s:s + step], cfg, mean, std, generator) for s in range(0, total, step)]
            out += (parts[0] if calls == 1 else torch.cat(parts)).chunk(k)
            i += k
        return out


def multi_crop(images: torch.Tensor, global_cfg: ViewConfig, n_global: int, local_cfg: ViewConfig, n_local: int,
               mean: Sequence[float], std: Sequence[float], generator=None) -> list[torch.Tensor]:
    """Multi-crop (Caron et al., SwAV 2020; DINO): ``n_global`` views from ``global_cfg`` followed by
    ``n_local`` smaller views from ``local_cfg``."""
    return make_views(images, [global_cfg] * n_global + [local_cfg] * n_local, mean, std, generator)
