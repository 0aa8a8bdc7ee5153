"""The one training loop. It knows optimisers, schedules, precision, checkpoints and DDP, and
nothing about any method: a method is a module whose ``forward(batch)`` returns ``(loss, logs)``
(with ``progress``, ``after_step`` and ``optimizer_groups`` as :class:`selfsup.methods.Method`
declares them). What else runs during training comes in from the app layer: hooks (the online
monitor), which may return a metrics row of their own, and metrics sinks (TensorBoard), which
receive every metrics row as metrics.jsonl does.

Randomness is a pure function of (seed, step, rank): the data order of epoch e comes from a
generator seeded with (seed, e), and the global RNG is reseeded before every step, so a run
resumed from a checkpoint at step s continues exactly as the uninterrupted run would have.

Each step, in this order (exact resume depends on it; ``tests/test_engine.py`` pins it):

1. the learning rate and ``method.progress`` from (step, total), or from the agreed wall clock;
2. the global RNG reseeded from (seed, step, rank);
3. forward and backward over the micro-batches; whether the loss is finite, agreed by all processes;
4. a finite step: clip, optimiser step, ``method.after_step``. A non-finite one: skipped (counted,
   and the count saved in every checkpoint) up to ``cfg.skip_nonfinite``, then an error naming
   the last good checkpoint;
5. the step counter, the metrics row, the hooks (which leave the RNG as they found it); every row,
   the loop's or a hook's, goes to metrics.jsonl and to each sink;
6. the checkpoint clocks: every ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes``,
   and at the end of each full epoch;
7. the stop: ``total`` steps, or the time limit by the slowest process's clock.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .. import distributed as dist
from ..config import TrainConfig, to_dict
from ..data import augment
from ..errors import SelfSupError
from ..runs.checkpoint import save_checkpoint
from ..schedules import warmup_cosine
from .batches import BatchSource
from .optim import build_optimizer


class Hook(Protocol):
    """Something that runs after each optimiser step on the main process (the online monitor).
    It must leave the RNG and every module's train/eval mode as it found them. A dict it returns
    is a metrics row (with its own "step"), logged like the loop's rows."""

    def after_step(self, method: nn.Module, step: int, steps_per_epoch: int, device: torch.device,
                   metrics) -> dict | None:
        ...


class MetricsSink(Protocol):
    """Where metrics rows go besides metrics.jsonl (an experiment logger such as TensorBoard), on
    the main process only. ``write`` gets each row as it is written to metrics.jsonl: a dict with
    "step" and numbers (loss, lr, images_per_s, the method's logs, a hook's scores). The caller
    that made the sink opens and closes it; ``fit`` only writes to it."""

    def write(self, row: dict) -> None:
        ...


@dataclass
class RunResult:
    run_dir: Path | None
    method: nn.Module
    config: TrainConfig
    steps: int
    last_loss: float
    images_per_s: float
    history: list = field(default_factory=list)   # this process's metrics rows, as metrics.jsonl got them


@dataclass
class LoopState:
    """What the loop carries from step to step; ``step``, the elapsed time and ``skipped`` are what
    a checkpoint restores."""

    step: int = 0
    elapsed_before: float = 0.0           # seconds trained by earlier processes of this run (resume)
    skipped: int = 0                      # non-finite steps skipped so far
    last_good: int | None = None          # the step of the last checkpoint written, None before the first
    t0: float = 0.0                       # when this process started training
    last_ckpt_time: float = 0.0
    window_t: float = 0.0                 # the metrics window: the steps since the last metrics.jsonl row
    window_steps: int = 0
    window_good: int = 0
    window_loss: float = 0.0
    window_logs: dict = field(default_factory=dict)
    last_loss: float = float("nan")
    rate: float = 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t0


def fit(method: nn.Module, source: BatchSource, cfg: TrainConfig, run_dir: Path | None, device: torch.device,
        resume_state: dict | None = None, progress: bool | None = True, method_cfg=None, hooks: list[Hook] | tuple = (),
        extra_state: dict | None = None, sinks: list[MetricsSink] | tuple = ()) -> RunResult:
    """Train ``method`` on ``source`` for ``cfg.epochs`` (or ``cfg.time_limit`` minutes). ``hooks``
    run after each step on the main process; ``sinks`` get every metrics row on the main process;
    ``extra_state`` is saved in every checkpoint. ``progress``: True shows the bar, False hides
    it, None shows it when stderr is a terminal."""
    rank, world = source.rank, source.world
    main = rank == 0
    augment.THREADS = cfg.augment_threads
    method, model, compiled = _place(method, cfg, device, world)
    optimizer = build_optimizer(method, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.beta2)
    spe = source.steps_per_epoch
    total = cfg.steps or max(1, math.ceil(cfg.epochs * spe))
    st = LoopState()
    if resume_state is not None:
        method.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        st.step, st.elapsed_before = int(resume_state["step"]), float(resume_state.get("elapsed_s", 0.0))
        st.skipped, st.last_good = int(resume_state.get("skipped_nonfinite", 0)), st.step
    saved = {"config": {**to_dict(cfg), "method_config": to_dict(method_cfg) if method_cfg is not None else {}},
             **(extra_state or {})}
    ckpt_path = run_dir / "checkpoint.pt" if run_dir else None

    def checkpoint():
        if ckpt_path is not None and main:
            save_checkpoint({"model": method.state_dict(), "optimizer": optimizer.state_dict(), "step": st.step,
                             "elapsed_s": st.elapsed(), **saved, "skipped_nonfinite": st.skipped}, ckpt_path)
            st.last_good = st.step
        st.last_ckpt_time = time.time()

    log = _Log(run_dir if main else None, cfg, st, total, progress if main else False, sinks if main else ())
    st.t0 = st.last_ckpt_time = st.window_t = time.time()
    method.train()
    try:
        while st.step < total:
            for batch in source.epoch(st.step // spe, st.step % spe):
                if compiled:   # the first step compiles: timed, and eager if it fails
                    finite = _first_compiled_step(compiled, method, model, optimizer, batch, cfg, st, total, spe,
                                                  device, rank, world, ckpt_path)
                    compiled = []
                else:
                    finite = _step(method, model, optimizer, batch, cfg, st, total, spe, device, rank, world, ckpt_path)
                st.step += 1
                log.step_done(finite, optimizer, source.global_batch, spe)
                for hook in (hooks if main else ()):
                    extra = hook.after_step(method, st.step, spe, device, log.metrics)
                    if extra:
                        log.write(extra)
                if (cfg.checkpoint_every_steps and st.step % cfg.checkpoint_every_steps == 0) or \
                        (cfg.checkpoint_every_minutes and time.time() - st.last_ckpt_time > cfg.checkpoint_every_minutes * 60):
                    checkpoint()
                if st.step >= total or (cfg.time_limit and _agree(st.elapsed(), world, device) >= cfg.time_limit * 60):
                    break
            else:
                checkpoint()  # end of a full epoch
                continue
            break
        if st.window_steps:  # stopped by the time limit between two log lines
            log.row(optimizer, source.global_batch, spe)
    finally:
        log.close()
    if world > 1:
        _average_bn_stats(method)
    checkpoint()
    return RunResult(run_dir, method, cfg, st.step, st.last_loss, st.rate, log.rows)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has native bf16 dot products (AVX512_BF16 or AMX), where bf16 autocast pays."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether this run trains in bf16 with channels_last on the CPU: only on a CPU with native bf16,
    unless ``cfg.cpu_bf16`` is "false". "auto" (the default) and "true" differ only in the notice a
    CPU without native bf16 prints for "true". Every backbone: the small ViTs, slower in bf16 while
    their attention ran torch's fused kernel, are about 2x faster since it runs the plain path on
    the CPU (BENCHMARKS.md, vit-bf16)."""
    return device.type == "cpu" and cfg.cpu_bf16 != "false" and native_bf16()


def compile_modules(method: nn.Module, backend="inductor") -> list[nn.Module]:
    """``torch.compile`` (in place, so state_dict keys do not change) each direct child module of
    ``method`` that holds parameters: the backbone, heads, projectors, teachers. The method's own
    forward, with its random augmentation, stays eager. Returns the compiled modules; compilation
    itself happens at their first call. ``backend``: torch.compile's (tests and smoke runs use
    dynamo's "eager" or a failing one)."""
    done = []
    for child in method.children():
        if any(True for _ in child.parameters()):
            child.compile(dynamic=False, backend=backend)
            done.append(child)
    return done


def uncompile(modules: list[nn.Module]) -> None:
    """Back to eager for modules compiled by :func:`compile_modules`."""
    for m in modules:
        m._compiled_call_impl = None
    torch._dynamo.reset()


def _place(method: nn.Module, cfg: TrainConfig, device: torch.device,
           world: int) -> tuple[nn.Module, nn.Module, list[nn.Module]]:
    """(method on ``device``, the module the step calls: the method or DDP around it, the modules
    compiled with ``compile=true``)."""
    method.to(device)
    if (device.type == "cuda" and cfg.channels_last) or cpu_bf16(cfg, device):
        method.to(memory_format=torch.channels_last)
    compiled = compile_modules(method) if cfg.compile else []
    if world > 1 and cfg.sync_bn:
        if device.type != "cuda":
            raise SelfSupError("--set sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU)")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if world == 1:
        return method, method, compiled
    return method, nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None), compiled


def _step(method, model, optimizer, batch: dict, cfg: TrainConfig, st: LoopState, total: int, spe: int,
          device: torch.device, rank: int, world: int, ckpt_path: Path | None) -> bool:
    """One optimiser step (items 1-4 of the module docstring); whether its loss was finite."""
    prog = st.step / total
    if cfg.time_limit:   # every process takes the same (the slowest) clock: same lr, same stop
        prog = max(prog, _agree(st.elapsed(), world, device) / (cfg.time_limit * 60))
    warmup_steps = round(cfg.warmup_epochs * spe)
    for g in optimizer.param_groups:
        g["lr"] = warmup_cosine(st.step, warmup_steps, prog, cfg.lr, cfg.lr * cfg.min_lr_ratio,
                                cfg.warmup_max) * g.get("lr_scale", 1.0)
    method.progress = min(prog, 1.0)   # schedules of the method (EMA momentum, temperatures) read it
    torch.manual_seed(_step_seed(cfg.seed, st.step, rank))
    optimizer.zero_grad(set_to_none=True)
    loss_sum, finite, logs = 0.0, True, {}
    micro = _split(batch, cfg.accumulate)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp
                else torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16(cfg, device)
                else contextlib.nullcontext())
    for i, part in enumerate(micro):
        part = _to_device(part, device)
        # only the last micro-batch's backward all-reduces the summed gradients
        sync = model.no_sync() if world > 1 and i < len(micro) - 1 else contextlib.nullcontext()
        with sync:
            with autocast:
                loss, part_logs = model(part)
            finite = _all_finite(loss, world)
            if not finite:
                break
            (loss / len(micro)).backward()
        loss_sum += float(loss.detach()) / len(micro)
        for k, v in part_logs.items():
            logs[k] = logs.get(k, 0.0) + _scalar(v) / len(micro)
    if finite:
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
        optimizer.step()
        method.after_step(st.step, total)
        st.window_good += 1
        st.window_loss += loss_sum
        for k, v in logs.items():
            st.window_logs[k] = st.window_logs.get(k, 0.0) + v
        return True
    if st.skipped >= cfg.skip_nonfinite:
        where = (f"the last good checkpoint is {ckpt_path} (step {st.last_good})"
                 if st.last_good is not None else "no checkpoint was written yet")
        allowed = f" (after skipping {st.skipped} such step(s))" if cfg.skip_nonfinite else ""
        raise SelfSupError(f"training diverged: loss is {float(loss.detach())} at step {st.step}{allowed}; "
                           f"{where}. Lower --lr or set grad_clip, then --resume or start again "
                           "(--skip-nonfinite N skips up to N such steps).")
    st.skipped += 1
    optimizer.zero_grad(set_to_none=True)   # the step is spent without an update
    if rank == 0:
        print(f"warning: non-finite loss at step {st.step}, step skipped "
              f"({st.skipped} of at most {cfg.skip_nonfinite})", flush=True)
    return False


def _first_compiled_step(compiled, method, model, optimizer, batch, cfg, st, total, spe, device, rank, world,
                         ckpt_path) -> bool:
    """The first step of a ``compile=true`` run: it compiles (its time is reported and counts in the
    run's clock like any step). Where compilation fails (no C++ compiler, an unsupported op), a
    one-line notice, and the run continues eagerly from the same RNG state."""
    t = time.time()
    try:
        finite = _step(method, model, optimizer, batch, cfg, st, total, spe, device, rank, world, ckpt_path)
    except SelfSupError:
        raise
    except Exception as e:   # inductor/dynamo failures have many types
        uncompile(compiled)
        optimizer.zero_grad(set_to_none=True)
        cause = e
        while (getattr(cause, "inner_exception", None) or cause.__cause__) is not None:   # dynamo wraps
            cause = getattr(cause, "inner_exception", None) or cause.__cause__             # the compiler's error
        why = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")[:200]
        if rank == 0:
            print(f"notice: --set compile=true: torch.compile failed ({type(cause).__name__}: {why}); "
                  "training eagerly", flush=True)
        return _step(method, model, optimizer, batch, cfg, st, total, spe, device, rank, world, ckpt_path)
    if rank == 0:
        print(f"compile: the first step compiled and ran in {time.time() - t:.1f} s (counted in the run's time)", flush=True)
    return finite


class _Log:
    """metrics.jsonl rows (each the mean of the finite steps since the previous row), the sinks and
    the progress bar."""

    def __init__(self, run_dir: Path | None, cfg: TrainConfig, st: LoopState, total: int, progress: bool | None,
                 sinks=()):
        self.cfg, self.st, self.total, self.sinks = cfg, st, total, list(sinks)
        self.rows: list[dict] = []
        self.metrics = open(run_dir / "metrics.jsonl", "a") if run_dir else None
        self.bar = None
        if progress is not False:
            from tqdm.auto import tqdm
            # None: only on a terminal (tqdm's disable=None); leave=None: a bar nested under another
            # (fine-tuning's lr search) disappears when done, a top-level one stays
            quiet = None if progress is None else False
            if cfg.time_limit:  # a wall-clock budget: the bar counts seconds, not the (huge) step cap
                self.bar = tqdm(total=round(cfg.time_limit * 60), initial=round(st.elapsed_before), desc=f"{cfg.method}",
                                unit="s", dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s{postfix}",
                                disable=quiet, leave=None)
            else:
                self.bar = tqdm(total=total, initial=st.step, desc=f"{cfg.method}", unit="step", dynamic_ncols=True,
                                disable=quiet, leave=None)
            if self.bar.disable:
                self.bar = None

    def step_done(self, finite: bool, optimizer, global_batch: int, spe: int) -> None:
        st = self.st
        st.window_steps += 1
        if st.step % self.cfg.log_every == 0 or st.step == self.total or st.step == 1:
            self.row(optimizer, global_batch, spe)
        if self.bar:
            self.bar.update(min(self.bar.total, round(st.elapsed())) - self.bar.n if self.cfg.time_limit else 1)

    def row(self, optimizer, global_batch: int, spe: int) -> None:
        st = self.st
        now = time.time()
        st.rate = st.window_steps * global_batch / max(now - st.window_t, 1e-9)
        st.last_loss = st.window_loss / st.window_good if st.window_good else float("nan")
        row = {"step": st.step, "epoch": round(st.step / spe, 4), "loss": st.last_loss, "lr": optimizer.param_groups[0]["lr"],
               "images_per_s": st.rate, "elapsed_s": st.elapsed_before + now - st.t0,
               **{k: v / st.window_good for k, v in st.window_logs.items()},
               **({"skipped_nonfinite": st.skipped} if st.skipped else {})}
        self.write(row)
        if self.bar:
            self.bar.set_postfix(loss=f"{st.last_loss:.4f}", img_s=f"{st.rate:.0f}")
        st.window_t, st.window_steps, st.window_good, st.window_loss, st.window_logs = now, 0, 0, 0.0, {}

    def write(self, row: dict) -> None:
        """One row to metrics.jsonl, to every sink and to the run's history."""
        self.rows.append(row)
        if self.metrics:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        for sink in self.sinks:
            sink.write(row)

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.metrics:
            self.metrics.close()


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 997 + rank


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _split(batch: dict, parts: int) -> list[dict]:
    """A process's batch as ``parts`` equal micro-batches (gradient accumulation), in order."""
    if parts == 1:
        return [batch]
    n = len(batch["images"])
    size = n // parts
    return [{k: v[i * size:(i + 1) * size] if isinstance(v, (torch.Tensor, list)) and len(v) == n else v
             for k, v in batch.items()} for i in range(parts)]


def _all_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every process: all of them skip or stop together, none waits
    forever in an all-reduce the others never reach."""
    ok = torch.isfinite(loss.detach()).all().float().reshape(1)
    if world > 1:
        ok = ok.to(loss.device)
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def _agree(seconds: float, world: int, device: torch.device) -> float:
    """The largest elapsed time over processes (the one clock they all schedule and stop by)."""
    if world == 1:
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def _average_bn_stats(method: nn.Module) -> None:
    """Batch-norm running statistics averaged over processes at the end of training: each process
    updated them from its own slice of the last batch (DDP broadcasts rank 0's only at the next forward)."""
    for m in method.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce_mean(buf)


def _scalar(v) -> float:
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
