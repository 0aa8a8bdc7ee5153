"""(b) End-to-end training images/s against the model-only bound.

End to end: the real engine (``selfsup.app.train.fit``) stepping SimCLR on Fashion-MNIST,
uint8 batches gathered from memory and augmented as batched tensor ops inside the step.
Bound: the same engine and method with the views replaced by pre-made tensors, so the step is
the model alone (forward, loss, backward, optimiser). images/s counts source images (2 views each).

    python benchmarks/train_speed.py [--steps N] [--backbones resnet18_quarter,resnet18]
    python benchmarks/train_speed.py --smoke [--out DIR]   # 2 steps of batch 32, resnet18_quarter, tiny shapes
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from record import SMOKE_DATA, record, smoke_dir  # noqa: E402
from selfsup.data.datasets import load_dataset  # noqa: E402
from selfsup.app.train import build_method, pick_device, resolve_config  # noqa: E402
from selfsup.engine.batches import BatchSource, data_info  # noqa: E402
from selfsup.engine.loop import fit  # noqa: E402


class FixedSource(BatchSource):
    """The same pre-gathered batch at every step: no data work at all. ``data`` is the data set the
    batch came from, which the loop reads beside the batches (its online monitor, when one is on)."""

    def __init__(self, data, batch, steps_per_epoch):
        self.data, self.fixed, self.steps_per_epoch = data, batch, steps_per_epoch
        self.rank, self.world, self.global_batch = 0, 1, len(batch["images"])

    def epoch(self, epoch, start=0):
        for _ in range(start, self.steps_per_epoch):
            yield self.fixed


def measure(backbone: str, data, steps: int, batch_size: int, device, amp: bool, bound: bool) -> float:
    cfg, mcfg = resolve_config("simclr", {"backbone": backbone, "batch_size": batch_size, "log_every": steps,
                                          "checkpoint_every_minutes": 0, "amp": amp, "warmup_epochs": 0})
    info = data_info(data)
    method = build_method(cfg, mcfg, info)
    source = BatchSource(data, batch_size, cfg.seed)
    if bound:
        views = [v.to(device) for v in method.views(data.images[:batch_size])]
        method.views = lambda images: views
        source = FixedSource(data, {"images": data.images[:batch_size]}, source.steps_per_epoch)
    cfg.epochs = (steps + 1) / source.steps_per_epoch  # 1 warm-up step, then `steps` timed steps
    return fit(method, source, cfg, None, device, progress=False).images_per_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbones", default="resnet18_quarter,resnet18")
    ap.add_argument("--steps", type=int, default=30, help="timed steps for the quarter-width net (resnet18 gets a fifth)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 steps of batch 32 of resnet18_quarter on tiny shapes, into --out or a temp folder")
    ap.add_argument("--out", default=None, help="--smoke only: where its BENCHMARKS.md goes")
    args = ap.parse_args()
    if args.smoke:
        smoke_dir(args.out)
        args.steps, args.batch_size, args.backbones = 2, 32, "resnet18_quarter"
    device = pick_device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    data = load_dataset(SMOKE_DATA if args.smoke else "fashion-mnist").train
    amp = device.type == "cuda"
    rows = []
    for name in args.backbones.split(","):
        steps = args.steps if "quarter" in name or device.type == "cuda" else max(3, args.steps // 5)
        e2e = measure(name, data, steps, args.batch_size, device, amp, bound=False)
        bnd = measure(name, data, steps, args.batch_size, device, amp, bound=True)
        rows.append((name, steps, e2e, bnd, e2e / bnd))
        print(f"{name:18s} batch {args.batch_size} ({steps} steps): end-to-end {e2e:8.1f} img/s, "
              f"model-only bound {bnd:8.1f} img/s, ratio {e2e / bnd:.3f}")
    precision = "bf16 autocast" if amp else "fp32"
    table = ["| backbone | batch | timed steps | end-to-end images/s | model-only images/s (bound) | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {n} | {args.batch_size} | {s} | {e:.1f} | {b:.1f} | {r:.3f} |" for n, s, e, b, r in rows]
    notes = (f"SimCLR on Fashion-MNIST (28x28 grey), {device.type}, {precision}; images/s counts source images "
             "(2 views each). End to end = the engine's own loop with batched augmentation in the step; bound = the same "
             "loop with pre-made views. Target on CPU: ratio >= 0.9.")
    record(f"train-speed-{device.type}", f"Training throughput (b), {device.type}", "\n".join(table) + "\n\n" + notes)


if __name__ == "__main__":
    main()
