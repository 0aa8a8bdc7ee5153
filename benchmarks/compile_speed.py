"""Does ``torch.compile`` pay for the model step on this CPU? SimCLR's step (forward, loss, backward,
AdamW) on a fixed pre-made pair of views, eager against compiled (``compile=true``: the backbone and
the projector through inductor), in fp32 and in bf16 autocast with channels_last (``cpu_bf16``).
Reports images/s over the timed steps and the time of the first two steps (where compilation
happens).

    python benchmarks/compile_speed.py [--batch-size 256] [--steps 8]
    python benchmarks/compile_speed.py --smoke [--out DIR]   # dynamo's "eager" backend, tiny data, seconds
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from record import SMOKE_DATA, record, smoke_dir  # noqa: E402
from selfsup.app.train import build_method, resolve_config  # noqa: E402
from selfsup.data.datasets import load_dataset  # noqa: E402
from selfsup.engine import loop  # noqa: E402
from selfsup.engine.batches import data_info  # noqa: E402


def measure(images, batch: int, steps: int, compiled: bool, bf16: bool, backend: str | None) -> tuple[float, float]:
    """(images/s over ``steps`` timed steps, seconds of the first two steps)."""
    cfg, mcfg = resolve_config("simclr", {"backbone": "resnet18_quarter", "batch_size": batch})
    torch.manual_seed(0)
    method = build_method(cfg, mcfg, data_info(images))
    x = images.images[:batch]
    views = method.views(x)
    method.views = lambda imgs: views
    if bf16:
        method.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(method.parameters(), 1e-3)
    done = []
    if compiled:
        done = loop.compile_modules(method, backend=backend)
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with context():
            loss, _ = method({"images": x})
        loss.backward()
        optimizer.step()
    try:
        t = time.perf_counter()
        step()
        step()
        first = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            step()
        rate = steps * batch / (time.perf_counter() - t)
    finally:
        loop.uncompile(done) if done else None
    return rate, first


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="--smoke only: where its BENCHMARKS.md goes")
    args = ap.parse_args()
    backend = "inductor"
    if args.smoke:
        smoke_dir(args.out)
        args.batch_size, args.steps, backend = 16, 2, "eager"
    images = load_dataset(SMOKE_DATA if args.smoke else "fashion-mnist").train
    native = loop.native_bf16()
    load_before = os.getloadavg()
    rows = []
    for bf16 in ((False, True) if native or args.smoke else (False,)):
        for compiled in (False, True):
            rate, first = measure(images, args.batch_size, args.steps, compiled, bf16, backend)
            name = f"{'compiled' if compiled else 'eager'}, {'bf16 + channels_last' if bf16 else 'fp32'}"
            rows.append((name, rate, first))
            print(f"{name}: {rate:.1f} images/s, first two steps {first:.1f} s", flush=True)
    load_after = os.getloadavg()
    base = {bf16: rate for name, rate, _ in rows for bf16 in (name.endswith("fp32"),) if name.startswith("eager")}
    lines = ["| step | images/s | against eager, same precision | first two steps (s) |", "|---|---:|---:|---:|"]
    for name, rate, first in rows:
        lines.append(f"| {name} | {rate:.1f} | {rate / base[name.endswith('fp32')]:.2f}x | {first:.1f} |")
    body = ("\n".join(lines) + f"\n\nSimCLR step on fixed views (no data work), resnet18_quarter, batch {args.batch_size}, "
            f"{args.steps} timed steps after two (which compile); {'dynamo eager backend (smoke)' if backend == 'eager' else 'inductor'}. "
            f"Load average {', '.join(f'{v:.2f}' for v in load_before)} before, "
            f"{', '.join(f'{v:.2f}' for v in load_after)} after.")
    print(body)
    record("compile-speed", "torch.compile on the CPU model step (issue 16)", body)


if __name__ == "__main__":
    main()
