"""The prepared GPU check (issue 19): what has never run on a GPU, run once on one CUDA GPU in at
most 8 minutes, printed as one markdown table.

Rows:

- ``train_speed``: SimCLR with ``resnet18`` at batch 512, bf16 autocast and channels_last: images/s
  end to end (the engine's own loop through ``selfsup.train``, batched augmentation in the step)
  against the model-only bound (the same method stepped on pre-made views: forward, loss,
  backward, optimiser; no data work), as ``benchmarks/train_speed.py`` defines them;
- ``method:NAME`` for every method of ``selfsup.METHODS``, trained for ``--method-seconds`` on
  ``shapes`` (colour, labels, captions: every method can use it) at the ``gpu`` budget's backbones
  (``resnet18``; ``vit_tiny`` for MAE and DINO): a finite loss and its images/s. DINO's row is the
  attention row's run;
- ``torchrun_sync_bn``: ``torchrun --standalone --nproc_per_node 1 -m selfsup train simclr ...
  --set sync_bn=true`` in a subprocess;
- ``dino_attention``: DINO with ``vit_tiny`` on ``shapes`` for ``--dino-seconds``, then the share of
  its last block's CLS attention inside the object masks, beside the object's share of the image
  and a random-init ViT of the same architecture (``selfsup.eval.attention.attention_vs_random``,
  the figure of ``benchmarks/contrastive.py``).

Each row says its seconds; a row that fails is one line in the table (never a traceback that
stops the others), and the script exits 1 when any row failed.

    python benchmarks/gpu_check.py              # on the GPU: about 7 minutes; --record writes BENCHMARKS.md
    python benchmarks/gpu_check.py --dry-run    # the same code path on the CPU in seconds (tiny nets, tiny data)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import selfsup  # noqa: E402
from selfsup.app.budgets import get_budget  # noqa: E402

LIMIT_S = 8 * 60   # the whole check must fit in this on the GPU


class Plan:
    """What each row trains on and for how long: the GPU plan, or the dry run's tiny one."""

    def __init__(self, dry_run: bool, method_seconds: float, dino_seconds: float):
        self.dry_run = dry_run
        budget = get_budget("gpu")
        if dry_run:
            self.device = "cpu"
            self.backbone, self.vit = "resnet18_quarter", "vit_micro"
            self.data = "shapes:n=32,n_test=16,size=16"
            self.speed_backbone, self.speed_batch, self.speed_steps = "resnet18_quarter", 16, 2
            self.batch_size = 16            # every method; the data has 32 images: 2 steps an epoch
            self.epochs = 1.0               # dry run: stop by epochs, not by the clock
            self.method_seconds = self.dino_seconds = 0.0
            self.attention_images = 16
            self.torchrun_timeout = 120
        else:
            self.device = "cuda"
            self.backbone, self.vit = budget.backbone, budget.vit
            self.data = "shapes"            # 10k train / 2k test, 32 px, class colours, captions, masks
            self.speed_backbone, self.speed_batch, self.speed_steps = "resnet18", 512, 15
            self.batch_size = None          # each method's own default
            self.epochs = 1000.0            # a cap the clock reaches first
            self.method_seconds, self.dino_seconds = method_seconds, dino_seconds
            self.attention_images = 1000
            self.torchrun_timeout = 150

    def backbone_for(self, method: str) -> str:
        return self.vit if method in ("mae", "dino") else self.backbone

    def train_kwargs(self, seconds: float) -> dict:
        kw = {"device": self.device, "epochs": self.epochs, "progress": False}
        if self.batch_size:
            kw["batch_size"] = self.batch_size
        if seconds and not self.dry_run:
            kw["time_limit"] = seconds / 60
        return kw

    def estimate(self, methods: list[str]) -> list[tuple[str, float]]:
        """Expected seconds per part (training time plus a margin for building, pictures, checks)."""
        if self.dry_run:
            return [("train_speed", 5), (f"{len(methods)} methods", 3 * len(methods)), ("torchrun_sync_bn", 15),
                    ("dino_attention", 5)]
        others = [m for m in methods if m != "dino"]
        return [("train_speed", 30), (f"{len(others)} methods x {self.method_seconds:g} s", len(others) * (self.method_seconds + 4)),
                ("torchrun_sync_bn", 20 + self.method_seconds), ("dino_attention", self.dino_seconds + 15)]


# ----------------------------------------------------------------------------- rows

def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def _fmt(x, digits=0) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def row_train_speed(plan: Plan, data, out: Path) -> dict:
    """End-to-end images/s through ``selfsup.train`` against the model-only bound (pre-made views)."""
    from selfsup.methods import DataInfo, get_method

    device = torch.device(plan.device)
    bs, steps = plan.speed_batch, plan.speed_steps
    amp = device.type == "cuda"
    train = data.train
    spe = len(train) // bs
    # end to end: warm-up window, then `steps` timed steps (the engine's images/s is its last log window)
    total = 2 * steps
    res = selfsup.train("simclr", data=train, out=None, backbone=plan.speed_backbone, batch_size=bs,
                        epochs=(total - 0.5) / spe, log_every=steps, warmup_epochs=0, amp=amp, channels_last=True,
                        checkpoint_every_minutes=0, device=plan.device, progress=False)
    e2e = res.images_per_s

    # the bound: the same method stepped on views made once, on the device
    mean, std = train.mean_std()
    cls = get_method("simclr")
    torch.manual_seed(0)
    backbone = selfsup.create_backbone(plan.speed_backbone, in_chans=train.channels, img_size=train.image_size[-1])
    method = cls(backbone, cls.Config(), DataInfo(train.channels, train.image_size[-1], mean, std)).to(device)
    if device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    method.train()
    images = train.images[:bs].to(device)
    views = method.views(images)
    method.views = lambda _images: views
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3, weight_decay=1e-4)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)

    def step():
        opt.zero_grad(set_to_none=True)
        with ctx:
            loss, _ = method({"images": images})
        loss.backward()
        opt.step()
        return float(loss.detach())   # the engine syncs on the loss every step too

    for _ in range(steps):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    bound = steps * bs / (time.perf_counter() - t0)
    ok = _finite(res.last_loss) and _finite(loss) and e2e > 0
    return {"ok": ok, "images_per_s": e2e, "loss": res.last_loss,
            "detail": f"SimCLR {plan.speed_backbone} batch {bs}, {'bf16, channels_last' if amp else 'fp32'}; "
                      f"{steps} timed steps: end to end {e2e:.0f} img/s, model-only bound {bound:.0f} img/s, "
                      f"ratio {e2e / bound:.3f}" + ("" if ok else "; non-finite loss")}


def row_method(plan: Plan, name: str, data, out: Path) -> dict:
    backbone = plan.backbone_for(name)
    res = selfsup.train(name, data=data, out=out / name, overwrite=True, backbone=backbone,
                        **plan.train_kwargs(plan.method_seconds))
    ok = _finite(res.last_loss) and res.steps > 0
    pics = sorted(p.name for p in (out / name / "pictures").glob("*.png"))
    return {"ok": ok, "images_per_s": res.images_per_s, "loss": res.last_loss,
            "detail": f"{backbone}, {res.steps} steps, batch {res.config.batch_size}"
                      + (f", pictures: {', '.join(pics)}" if pics else "") + ("" if ok else "; non-finite loss")}


TRAINED = re.compile(r"trained (\S+) for (\d+) steps: loss (\S+), (\S+) images/s")


def row_torchrun(plan: Plan, out: Path) -> dict:
    run = out / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "selfsup", "train", "simclr", "--data", plan.data, "--out", str(run), "--overwrite",
           "--backbone", plan.backbone, "--device", plan.device, "--no-progress"]
    if plan.dry_run:
        cmd += ["--epochs", str(plan.epochs), "--batch-size", str(plan.batch_size)]
        note = "CPU dry run: without sync_bn (PyTorch's SyncBatchNorm needs CUDA)"
    else:
        cmd += ["--epochs", "1000", "--time-limit", f"{plan.method_seconds / 60:.4f}", "--set", "sync_bn=true"]
        note = "sync_bn=true"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=plan.torchrun_timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": f"torchrun did not finish within {plan.torchrun_timeout} s"}
    m = TRAINED.search(p.stdout)
    if p.returncode != 0 or m is None:
        lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "no output")
        return {"ok": False, "detail": f"exit {p.returncode}: {err.strip()[:300]}"}
    cfg = json.loads((run / "config.json").read_text())
    loss, ips = float(m.group(3)), float(m.group(4))
    ok = _finite(loss) and cfg.get("sync_bn") == (not plan.dry_run)
    return {"ok": ok, "images_per_s": ips, "loss": loss,
            "detail": f"1 process, {plan.backbone}, {m.group(2)} steps, {note}; config.json sync_bn={cfg.get('sync_bn')} "
                      "(one process: the engine converts to SyncBatchNorm only when world size > 1)"}


def row_dino_attention(plan: Plan, data, out: Path) -> dict:
    from selfsup.eval.attention import attention_vs_random

    run = out / "dino"
    # 64 prototypes: chosen for ViT attention on shapes on the validation split (BENCHMARKS.md, tune-dino-shapes)
    res = selfsup.train("dino", data=data, out=run, overwrite=True, backbone=plan.vit, out_dim=64,
                        **plan.train_kwargs(plan.dino_seconds))
    rep = attention_vs_random(run, data=plan.data, n=plan.attention_images)
    t, r = rep["trained"], rep["random"]
    ok = _finite(res.last_loss) and all(_finite(x) for x in (t["in_mask"], r["in_mask"], t["area_share"]))
    return {"ok": ok, "images_per_s": res.images_per_s, "loss": res.last_loss, "steps": res.steps,
            "attention": {"trained": t["in_mask"], "random": r["in_mask"], "area_share": t["area_share"],
                          "lift": t["lift"], "best_head": t["best_head"], "chosen_head_lift": t.get("chosen_head_lift")},
            "detail": f"{plan.vit}, {res.steps} steps; attention inside the object {t['in_mask']:.3f} "
                      f"(best head {t['best_head']:.3f}) against its area share {t['area_share']:.3f} "
                      f"(lift {t['lift']:.2f}); random-init {plan.vit} {r['in_mask']:.3f}; "
                      f"{rep['n']} test images" + ("" if ok else "; non-finite figure")}


def run_row(name: str, fn, *args) -> dict:
    """One row: its result, or one line saying why it failed. Never raises."""
    t0 = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    try:
        row = fn(*args)
    except BaseException as e:  # noqa: BLE001 - a failed row is one line in the table; the others go on
        if isinstance(e, KeyboardInterrupt):
            raise
        frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
        first = (str(e).strip().splitlines() or [""])[0][:300]
        row = {"ok": False, "detail": f"{type(e).__name__}: {first}{where}"}
    row["name"], row["seconds"] = name, time.time() - t0
    print(f"    {'ok' if row['ok'] else 'FAILED'} in {row['seconds']:.1f} s: {row['detail']}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| row | status | seconds | images/s | last loss | detail |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {'ok' if r['ok'] else '**FAILED**'} | {r['seconds']:.1f} | "
                     f"{_fmt(r.get('images_per_s'))} | {_fmt(r.get('loss'), 4)} | {r['detail'].replace('|', '/')} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", "--smoke", dest="dry_run", action="store_true", help="the same code path on the CPU in seconds: tiny nets, tiny data")
    ap.add_argument("--method-seconds", type=float, default=20.0, help="training seconds per method row (default 20)")
    ap.add_argument("--dino-seconds", type=float, default=120.0, help="DINO's training seconds before the attention figure")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every method in selfsup.METHODS)")
    ap.add_argument("--out", default=None, help="folder for the run folders (default: a temporary folder)")
    ap.add_argument("--record", action="store_true", help="write the table into BENCHMARKS.md (section gpu-check)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    if args.record and args.dry_run:
        print("gpu_check: error: a dry run is not recorded (drop --record)", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; run it on the GPU, or --dry-run for the CPU rehearsal",
              file=sys.stderr)
        return 2
    methods = args.methods.split(",") if args.methods else list(selfsup.METHODS)
    unknown = [m for m in methods if m not in selfsup.METHODS]
    if unknown:
        print(f"gpu_check: error: unknown method(s) {', '.join(unknown)} (known: {', '.join(selfsup.METHODS)})",
              file=sys.stderr)
        return 2
    plan = Plan(args.dry_run, args.method_seconds, args.dino_seconds)
    parts = plan.estimate(methods)
    total = sum(s for _, s in parts)
    where = "CPU dry run" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"gpu_check on {where}: budget about {total:.0f} s ({', '.join(f'{n} ~{s:.0f} s' for n, s in parts)}); "
          f"limit {LIMIT_S} s on the GPU", flush=True)

    t_start = time.time()
    tmp = None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gpu-check-")
        out = Path(tmp.name)
    rows = []
    try:
        data = selfsup.load_dataset(plan.data)
    except Exception as e:  # noqa: BLE001
        print(f"gpu_check: error: cannot load {plan.data}: {e}", file=sys.stderr)
        return 1
    rows.append(run_row("train_speed", row_train_speed, plan, data, out))
    for name in methods:
        if name != "dino":   # DINO's row is the attention run below
            rows.append(run_row(f"method:{name}", row_method, plan, name, data, out))
    rows.append(run_row("torchrun_sync_bn", row_torchrun, plan, out))
    att = run_row("dino_attention", row_dino_attention, plan, data, out)
    if "dino" in methods:
        d = {k: v for k, v in att.items() if k != "attention"}
        d.update(name="method:dino", seconds=0.0,
                 detail=f"{plan.vit}, the dino_attention run ({att.get('steps', '?')} steps)" if att["ok"] else att["detail"])
        rows.insert(1 + methods.index("dino"), d)
    rows.append(att)
    elapsed = time.time() - t_start
    if tmp is not None:
        tmp.cleanup()

    failed = [r for r in rows if not r["ok"]]
    over = not args.dry_run and elapsed > LIMIT_S
    body = table(rows)
    device = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    nets = ("the dry run's tiny nets" if args.dry_run else "the `gpu` budget's backbones") + \
        f" ({plan.backbone}; {plan.vit} for MAE and DINO)"
    notes = (f"{device}, torch {torch.__version__}; {len(rows)} rows in {elapsed:.0f} s (limit {LIMIT_S} s on the GPU"
             f"{', EXCEEDED' if over else ''}). Method rows: `{plan.data}` at {nets}, each method's own defaults"
             f"{'' if plan.batch_size is None else f' but batch {plan.batch_size}'}, "
             f"{'bf16 autocast and channels_last' if plan.device == 'cuda' else 'fp32'}; images/s counts source images "
             f"(the last log window). {len(failed)} row(s) failed.")
    print("\n" + body + "\n\n" + notes)
    if args.record:
        from record import record
        record("gpu-check", "GPU check (issue 19): bf16, channels_last, every method, torchrun, DINO attention",
               body + "\n\n" + notes)
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
