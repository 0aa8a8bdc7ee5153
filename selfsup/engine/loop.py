"""The one training loop. It knows optimisers, schedules, precision, checkpoints and DDP, and
nothing about any method: a method is a module whose ``forward(batch)`` returns ``(loss, logs)``
(with ``progress``, ``after_step`` and ``optimizer_groups`` as :class:`selfsup.methods.Method`
declares them). What else runs during training comes in from the app layer: hooks (the online
monitor), which may return a metrics row of their own, and metrics sinks (TensorBoard), which
receive every metrics row as metrics.jsonl does.

Randomness is a pure function of (seed, step, rank): the data order of epoch e comes from a
generator seeded with (seed, e), and the global RNG is reseeded before every step, so a run
resumed from a checkpoint at step s continues exactly as the uninterrupted run would have.

Before the first step, the run's precision on the CPU (``cpu_bf16``; :func:`_precision`): "auto"
times the method's step in fp32 and in bf16 on copies of it, on the first batch, leaving the
method and the RNG as they were; the choice is saved in every checkpoint and a resumed run keeps it.

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
import copy
import functools
import itertools
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
from ..models import family
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
    bf16: bool = False                   # trained in bf16 autocast + channels_last on the CPU
    precision_probe: dict | None = None  # cpu_bf16=auto's timing of the two precisions, when this run made one
    compiled: dict | None = None         # whether torch.compile ran this run's modules, and compile=auto's reason


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
    bf16: bool = False                    # this run's CPU precision: bf16 autocast + channels_last (fit decides once)

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
    t_start = time.time()   # the precision probe and the set-up count in the run's clock
    batches, bf16, probe = _precision(method, source, cfg, device, world, resume_state)
    if probe is not None and main and not probe.get("cached"):
        print(f"cpu_bf16=auto: a {cfg.method} step took {probe['bf16_ms']:.0f} ms in bf16 and {probe['fp32_ms']:.0f} ms "
              f"in fp32 on this CPU: training in {'bf16' if bf16 else 'fp32'} (--set cpu_bf16=true|false to choose)",
              flush=True)
    chosen, why = _compile_chosen(cfg, method, device, bf16, resume_state)
    method, model, compiled = _place(method, cfg, device, world, bf16, compile_now=bool(chosen))
    auto = _AutoCompile(cfg, device, world) if chosen is None else None
    compiled_all = list(compiled)   # back to eager when training ends (see below)
    compile_info = {"setting": cfg.compile, **({"reason": why} if why else {})}
    optimizer = build_optimizer(method, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.beta2)
    spe = source.steps_per_epoch
    total = cfg.steps or max(1, math.ceil(cfg.epochs * spe))
    st = LoopState(bf16=bf16)
    if resume_state is not None:
        method.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        st.step, st.elapsed_before = int(resume_state["step"]), float(resume_state.get("elapsed_s", 0.0))
        st.skipped, st.last_good = int(resume_state.get("skipped_nonfinite", 0)), st.step
    saved = {"config": {**to_dict(cfg), "method_config": to_dict(method_cfg) if method_cfg is not None else {}},
             **(extra_state or {}), "cpu_bf16_chosen": bf16, "compile_chosen": chosen}
    ckpt_path = run_dir / "checkpoint.pt" if run_dir else None

    def checkpoint():
        if ckpt_path is not None and main:
            save_checkpoint({"model": method.state_dict(), "optimizer": optimizer.state_dict(), "step": st.step,
                             "elapsed_s": st.elapsed(), **saved, "skipped_nonfinite": st.skipped}, ckpt_path)
            st.last_good = st.step
        st.last_ckpt_time = time.time()

    log = _Log(run_dir if main else None, cfg, st, total, progress if main else False, sinks if main else ())
    st.t0, st.last_ckpt_time = t_start, time.time()
    st.window_t = st.last_ckpt_time
    method.train()
    try:
        while st.step < total:
            epoch_batches, batches = batches or source.epoch(st.step // spe, st.step % spe), None
            for batch in epoch_batches:
                if compiled:   # the first step compiles: timed, and eager if it fails
                    finite = _first_compiled_step(compiled, method, model, optimizer, batch, cfg, st, total, spe,
                                                  device, rank, world, ckpt_path)
                    compiled = []
                else:
                    finite = _step(method, model, optimizer, batch, cfg, st, total, spe, device, rank, world, ckpt_path)
                st.step += 1
                if auto is not None:
                    pays = auto.after_step(st, total)
                    if pays is not None:   # decided: compile from the next step on, or stay eager
                        saved["compile_chosen"], compile_info = pays, {**compile_info, **auto.info}
                        if pays:
                            compiled = compile_modules(method)
                            compiled_all += compiled
                            if main:
                                print(auto.line(), flush=True)
                        auto = None
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
    compile_info["compiled"] = any(m._compiled_call_impl is not None for m in compiled_all)
    if compiled_all:
        # the modules leave fit eager: what runs them next (pictures, probes, embedding) sees other
        # shapes and modes, each of which would compile again (tens of seconds on a CPU)
        uncompile(compiled_all)
    return RunResult(run_dir, method, cfg, st.step, st.last_loss, st.rate, log.rows, bf16, probe, compile_info)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has native bf16 dot products (AVX512_BF16 or AMX), without which bf16 autocast
    cannot pay."""
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    except (AttributeError, RuntimeError):
        return False


PROBE_MARGIN = 0.75  # cpu_bf16=auto takes bf16 when its step takes at most this share of the fp32 step's time:
                     # where bf16 pays it pays about 2x (0.5), and single passes on a shared 2-core machine
                     # vary by up to a third, so a near tie stays in fp32
_PROBED: dict = {}   # this process's probes: (method class, parameter count, batch shape, threads) -> result


def _pass_seconds(module: nn.Module, batch: dict, bf16: bool) -> float:
    """Wall-clock seconds of one forward and backward of ``module`` on ``batch``, under bf16
    autocast or in fp32 (the probe's measurement; tests replace it with fixed times)."""
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = module(batch)
    loss.float().backward()
    seconds = time.perf_counter() - t
    module.zero_grad(set_to_none=True)
    return seconds


def probe_cpu_bf16(method: nn.Module, batch: dict, warmup: int = 2, repeats: int = 2) -> dict:
    """Time ``method``'s own forward and backward on ``batch`` in fp32 and in bf16 autocast with
    channels_last, each on a copy (the method, its buffers and the RNG stay as they were):
    ``warmup`` untimed passes each (the first fp32 passes run up to 1.6x slower than later ones),
    then ``repeats`` timed ones, the two precisions alternating; the fastest of each is kept.
    Native bf16 dot products do not make every CPU faster in bf16: on a 2-core AMD EPYC the bf16
    step ran about 2x the fp32 one; on a 2-core Intel Xeon with AVX512_BF16 but no AMX, no faster
    for the ResNets and 0.66-0.81x for MAE (BENCHMARKS.md, cpu-bf16-probe). Returns {"bf16":
    whether bf16 took at most PROBE_MARGIN of the fp32 time, "fp32_ms", "bf16_ms"}; a later probe
    of the same method, size, batch shape and threads in this process reuses the result (with
    "cached": True)."""
    images = batch["images"]
    key = (type(method).__qualname__, sum(p.numel() for p in method.parameters()), tuple(images.shape),
           images.dtype, torch.get_num_threads())
    if key in _PROBED:
        return {**_PROBED[key], "cached": True}
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.random.fork_rng(devices=[]):
        copies = {False: copy.deepcopy(method).train(),
                  True: copy.deepcopy(method).to(memory_format=torch.channels_last).train()}
        for r in range(warmup + repeats):
            for bf16 in (False, True):
                torch.manual_seed(r)   # both precisions see the same views
                seconds = _pass_seconds(copies[bf16], batch, bf16)
                if r >= warmup:
                    times[bf16].append(seconds)
        del copies
    fp32, bf16 = min(times[False]), min(times[True])
    _PROBED[key] = {"bf16": bf16 <= PROBE_MARGIN * fp32,
                    "fp32_ms": round(fp32 * 1e3, 1), "bf16_ms": round(bf16 * 1e3, 1)}
    return dict(_PROBED[key])


def _precision(method: nn.Module, source: BatchSource, cfg: TrainConfig, device: torch.device, world: int,
               resume_state: dict | None):
    """(the first epoch's batches when a probe read one, else None; whether this run trains in bf16
    on the CPU; the probe's result or None). ``cpu_bf16``: "false", or a CPU without native bf16:
    fp32. "true": bf16. "auto" (the default): a resumed run keeps the choice its checkpoint saved
    (bf16, for a checkpoint from before the probe); a new run probes its own step on its first
    batch (:func:`probe_cpu_bf16`), and several processes take bf16 only if every one found it
    faster (each votes, a process without native bf16 or without a batch for fp32, so none waits)."""
    if device.type != "cpu" or cfg.cpu_bf16 == "false":
        return None, False, None
    if cfg.cpu_bf16 == "true":
        return None, native_bf16(), None
    if resume_state is not None:
        return None, native_bf16() and bool(resume_state.get("cpu_bf16_chosen", True)), None
    batches, probe = None, None
    if native_bf16():
        it = iter(source.epoch(0, 0))
        first = next(it, None)
        if first is not None:
            batches, probe = itertools.chain([first], it), probe_cpu_bf16(method, _split(first, cfg.accumulate)[0])
    bf16 = bool(probe and probe["bf16"])
    if world > 1:
        vote = torch.tensor([float(bf16)])
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MIN)
        bf16 = bool(vote.item())
    return batches, bf16, probe


COMPILE_TIMED_STEPS = 4     # compile=auto times this many eager steps, after the first, before it decides
COMPILE_MIN_SECONDS = 300   # and compiles when the rest of the run, at that pace, would take at least this long


def _compile_chosen(cfg: TrainConfig, method: nn.Module, device: torch.device, bf16: bool,
                    resume_state: dict | None) -> tuple[bool | None, str]:
    """(whether the run compiles from its first step (True), never (False), or compile=auto decides
    after a few steps (None); why, for compile=auto). "true" and "false" are taken as given; "auto"
    compiles only where it was measured to pay: on the CPU, in fp32 (nothing over bf16), for the
    methods and backbone families that declare it (``Method.compile_pays``; SimCLR, rotation and
    DINO with a ResNet ran 1.1-1.4x end to end on the Intel Xeon, while MAE's ViT ran slower and
    MoCo took 6 minutes to compile: BENCHMARKS.md, compile-auto); a resumed run keeps the choice its
    checkpoint saved."""
    if cfg.compile != "auto":
        return cfg.compile == "true", ""
    if device.type != "cpu":
        return False, "not on CUDA (not measured there yet)"
    if bf16:
        return False, "the run trains in bf16, where compiling gave nothing"
    fam = family(cfg.backbone)
    if fam not in getattr(method, "compile_pays", ()):
        return False, f"not measured to pay for {cfg.method} with a {fam} backbone"
    if resume_state is not None and resume_state.get("compile_chosen") is not None:
        return bool(resume_state["compile_chosen"]), "kept from the checkpoint"
    return None, ""


class _AutoCompile:
    """compile=auto on a CPU in fp32: times steps 2 to ``1 + COMPILE_TIMED_STEPS`` of this process
    (the first is slower), then compiles when the rest of the run at that pace would take at least
    COMPILE_MIN_SECONDS (a cold compile took 25-45 s here, and the compiled steps run 1.2-1.4x
    faster, so a run of 5 minutes gains back its compile). Every process decides on the same step
    and takes the slowest process's pace."""

    def __init__(self, cfg: TrainConfig, device: torch.device, world: int):
        self.cfg, self.device, self.world = cfg, device, world
        self.done = 0
        self.t = 0.0
        self.info: dict = {}

    def after_step(self, st: LoopState, total: int) -> bool | None:
        self.done += 1
        if self.done == 1:
            self.t = time.time()
            return None
        if self.done < 1 + COMPILE_TIMED_STEPS:
            return None
        pace = _agree((time.time() - self.t) / COMPILE_TIMED_STEPS, self.world, self.device)
        rest = (total - st.step) * pace
        if self.cfg.time_limit:
            rest = min(rest, self.cfg.time_limit * 60 - _agree(st.elapsed(), self.world, self.device))
        pays = rest >= COMPILE_MIN_SECONDS
        self.info = {"reason": f"{'at least' if pays else 'under'} {COMPILE_MIN_SECONDS} s of fp32 training left",
                     "eager_step_s": round(pace, 3), "seconds_left": round(rest), "at_step": st.step}
        return pays

    def line(self) -> str:
        i = self.info
        return (f"compile=auto: {i['seconds_left'] / 60:.1f} min of fp32 training left at {i['eager_step_s'] * 1e3:.0f} ms "
                f"a step: compiling the modules with torch.compile from step {i['at_step'] + 1} (its time counts in "
                f"the run's; --set compile=false to skip)")


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


def _place(method: nn.Module, cfg: TrainConfig, device: torch.device, world: int, bf16: bool,
           compile_now: bool = False) -> tuple[nn.Module, nn.Module, list[nn.Module]]:
    """(method on ``device``, the module the step calls: the method or DDP around it, the modules
    compiled from the first step: ``compile_now``). ``bf16``: the run trains in bf16 on the CPU
    (channels_last)."""
    method.to(device)
    if (device.type == "cuda" and cfg.channels_last) or bf16:
        method.to(memory_format=torch.channels_last)
    compiled = compile_modules(method) if compile_now else []
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
                else torch.autocast("cpu", dtype=torch.bfloat16) if st.bf16
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
            print(f"notice: --set compile={cfg.compile}: torch.compile failed ({type(cause).__name__}: {why}); "
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
