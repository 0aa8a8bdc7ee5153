"""Issue 16's side-by-side: end-to-end training images/s of selfsup against the per-image pipeline
that lightly and solo-learn use, for each method's own recipe, backbone and batch size.

- **per-image pipeline**: the method's views built per image by torchvision ``transforms.v2``
  (RandomResizedCrop, flip, RandomApply(ColorJitter), RandomGrayscale, blur, solarize, ToDtype,
  Normalize: the same recipe as the method's ``ViewConfig``) in a DataLoader with 2 workers, then
  the same method module stepped eagerly in fp32 with AdamW: what a user of a per-image library
  gets on this CPU.
- **selfsup, fp32**: ``selfsup.train`` with ``cpu_bf16=false``: batched augmentation inside the
  step (``augment_threads`` at its default), eager fp32.
- **selfsup, bf16** (on a CPU with native bf16 only): ``cpu_bf16=true``: bf16 autocast with
  channels_last (losses in fp32), for every backbone.
- **selfsup, default**: ``selfsup.train`` with no options: on a CPU with native bf16,
  ``cpu_bf16=auto`` times the method's step in both precisions on its first batch and takes bf16
  only where it is faster (the table says which it took); elsewhere the same as fp32. These runs
  are too short for ``compile=auto``, which compiles only when 5 minutes or more are left.
- **selfsup, compiled** (for the methods ``compile=auto`` compiles, where the default trains in
  fp32): ``compile=true``, ``cpu_bf16=false``, timed after the compiling step (given up to
  ``COMPILE_ALLOWANCE`` seconds on top): what a default run of 5 minutes or more trains at once
  compiled. The last ratio is the long default run's: this figure where it applies, else the
  default's.

On the CPU, ViT attention runs timm's plain matmul-softmax path on both sides (the model is the
same module; in fp32 it runs as fast as torch's fused kernel there: BENCHMARKS.md, vit-bf16).

images/s counts source images. Each figure is timed over about ``--seconds`` after a warm-up;
the load average before and after is printed with the table, since machines here differ about
2x and anything else running changes the figures.

    python benchmarks/step_speed.py [--methods simclr,rotation,moco,dino,mae] [--seconds 25]
    python benchmarks/step_speed.py --smoke [--out DIR]   # tiny shapes, a fraction of a second each
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import selfsup  # noqa: E402
from per_image import PerImageViews, tv_transform  # noqa: E402
from record import SMOKE_DATA, record, smoke_dir  # noqa: E402
from selfsup.app.train import build_method, resolve_config  # noqa: E402
from selfsup.data.datasets import load_dataset  # noqa: E402
from selfsup.engine.batches import data_info  # noqa: E402
from selfsup.engine.loop import native_bf16  # noqa: E402

WORKERS = 2
TARGET = 2.0   # issue 16: selfsup's default end to end >= 2x the per-image pipeline
COMPILE_ALLOWANCE = 90.0   # seconds added to the compiled arm's time limit for its (cold) compile


def has_views(method) -> bool:
    """Whether the method's step takes its views from ``method.views`` (else one ``make_view``)."""
    c, s = method.data.channels, method.data.image_size
    return method.views(torch.zeros(2, c, s, s, dtype=torch.uint8)) is not None


def recipes(method, multi: bool) -> list:
    """The method's view recipes, in the order its step uses them."""
    if getattr(method, "recipes", None):
        return list(method.recipes)                              # DINO: global and local crops
    return [method.view] * (2 if multi else 1)


def per_image(name: str, images, seconds: float, warmup: int = 3) -> tuple[float, str, int]:
    """images/s of the per-image pipeline for ``name``; (rate, backbone, batch)."""
    cfg, mcfg = resolve_config(name, {})
    torch.manual_seed(0)
    method = build_method(cfg, mcfg, data_info(images))
    method.train()
    multi = has_views(method)
    rs = recipes(method, multi)
    loader = torch.utils.data.DataLoader(
        PerImageViews(images.images, [tv_transform(r, method.data.mean, method.data.std) for r in rs]),
        batch_size=cfg.batch_size, shuffle=True, num_workers=WORKERS, drop_last=True, persistent_workers=True,
        prefetch_factor=4)
    current: list = []
    module = sys.modules[type(method).__module__]
    original = getattr(module, "make_view", None)
    if multi:
        method.views = lambda imgs: current
    else:   # rotation, MAE: one view from make_view in their step
        module.make_view = lambda *a, **k: current[0]
    try:
        return _timed_steps(method, cfg, loader, current, images, seconds, warmup)
    finally:
        if original is not None:
            module.make_view = original
        del loader


def _timed_steps(method, cfg, loader, current: list, images, seconds: float, warmup: int) -> tuple[float, str, int]:
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    dummy = {"images": images.images[:cfg.batch_size]}
    it, steps, t0 = iter(loader), 0, None
    while True:
        try:
            views = next(it)
        except StopIteration:
            it = iter(loader)
            views = next(it)
        current[:] = list(views)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = method(dummy)
        loss.backward()
        optimizer.step()
        method.after_step(steps, 10 ** 6)
        steps += 1
        if steps == warmup:
            t0, timed = time.perf_counter(), 0
        elif steps > warmup:
            timed += 1
            if time.perf_counter() - t0 >= seconds:
                break
    return timed * cfg.batch_size / (time.perf_counter() - t0), cfg.backbone, cfg.batch_size


def compiled_by_auto(name: str) -> bool:
    """Whether compile=auto compiles ``name`` with its default backbone (a long enough fp32 CPU run)."""
    from selfsup.methods import get_method
    from selfsup.models import family
    return family(resolve_config(name, {})[0].backbone) in get_method(name).compile_pays


def ours(name: str, images, seconds: float, bf16: bool | None, log_every: int = 5,
         compile: bool = False) -> tuple[float, bool]:
    """(images/s of ``selfsup.train``: its own metrics rows after the first, whether it trained in
    bf16); ``bf16`` None = the default; ``compile``: compile=true, timed after the compiling step."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = {} if bf16 is None else {"cpu_bf16": bf16}
        if compile:
            extra["compile"] = True
            seconds += COMPILE_ALLOWANCE
        res = selfsup.train(name, data=images, out=Path(tmp) / "run", time_limit=seconds / 60, epochs=1000,
                            log_every=log_every, progress=False, logger="none", checkpoint_every_minutes=0, seed=0,
                            **extra)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r]
    rates = rates[1:] or rates   # the first window holds the warm-up (and the default's probe)
    return sum(rates) / max(len(rates), 1), res.bf16


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="simclr,rotation,moco,dino,mae")
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="--smoke only: where its BENCHMARKS.md goes")
    args = ap.parse_args()
    data = SMOKE_DATA if args.smoke else "fashion-mnist"
    if args.smoke:
        global COMPILE_ALLOWANCE
        smoke_dir(args.out)
        args.seconds, COMPILE_ALLOWANCE = 0.3, 1.0
        from selfsup.engine import loop   # the compiled arm through dynamo's "eager" backend: seconds, no C++
        compile_modules = loop.compile_modules
        loop.compile_modules = lambda method: compile_modules(method, backend="eager")
    images = load_dataset(data).train
    if args.smoke:
        images = images.subset(torch.arange(min(len(images), 256)))
    load_before = os.getloadavg()
    native = native_bf16()
    rows = []
    for name in args.methods.split(","):
        tv, backbone, batch = per_image(name, images, args.seconds)
        every = 1 if args.smoke else 5
        fp32, _ = ours(name, images, args.seconds, bf16=False, log_every=every)
        bf16 = ours(name, images, args.seconds, bf16=True, log_every=every)[0] if native else None
        default, chose_bf16 = ours(name, images, args.seconds, bf16=None, log_every=every)
        comp = None
        if not chose_bf16 and compiled_by_auto(name):
            comp = ours(name, images, args.seconds, bf16=False, log_every=every, compile=True)[0]
        rows.append((name, backbone, batch, tv, fp32, bf16, default, chose_bf16, comp))
        print(f"{name}: per-image {tv:.0f}, selfsup fp32 {fp32:.0f}, "
              f"{f'bf16 {bf16:.0f}, ' if bf16 is not None else ''}default {default:.0f} images/s "
              f"({'bf16' if chose_bf16 else 'fp32'}; {default / tv:.2f}x)"
              f"{f', compiled {comp:.0f} ({comp / tv:.2f}x)' if comp is not None else ''}", flush=True)
    load_after = os.getloadavg()
    lines = ["| method | backbone | batch | per-image pipeline, fp32 (images/s) | selfsup, fp32 | "
             + ("selfsup, bf16 + channels_last (cpu_bf16=true) | " if native else "")
             + "selfsup, default | the default's precision | default / per-image | target >= "
             f"{TARGET:g}x | selfsup, fp32 compiled (a default run of 5+ min) | long default run / per-image | target >= "
             f"{TARGET:g}x |",
             "|---|---|---:|---:|---:|" + ("---:|" if native else "") + "---:|---|---:|---|---:|---:|---|"]
    for name, backbone, batch, tv, fp32, bf16, default, chose_bf16, comp in rows:
        long = comp if comp is not None else default
        lines.append(f"| {name} | {backbone} | {batch} | {tv:.0f} | {fp32:.0f} | "
                     + (f"{bf16:.0f} | " if native else "")
                     + f"{default:.0f} | {'bf16 (probed)' if chose_bf16 else ('fp32 (probed)' if native else 'fp32')} | "
                     f"{default / tv:.2f}x | {'met' if default / tv >= TARGET else 'missed'} | "
                     f"{f'{comp:.0f}' if comp is not None else '— (not compiled)'} | {long / tv:.2f}x | "
                     f"{'met' if long / tv >= TARGET else 'missed'} |")
    notes = (f"\n{data}, {os.cpu_count()} cores, {WORKERS} DataLoader workers for the per-image pipeline, each figure "
             f"timed for about {args.seconds:g} s after a warm-up; images/s counts source images. Load average "
             f"(1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_before)} before and "
             f"{', '.join(f'{x:.2f}' for x in load_after)} after.")
    body = "\n".join(lines) + "\n" + notes
    print(body)
    record("step-speed", "End to end against the per-image pipeline, per method (issue 16)", body)


if __name__ == "__main__":
    main()
