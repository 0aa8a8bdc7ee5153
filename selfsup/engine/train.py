"""The one training loop. It knows optimisers, schedules, precision, checkpoints and DDP, and
nothing about any method: a method is a module whose ``forward(batch)`` returns ``(loss, logs)``.

Randomness is a pure function of (seed, step, rank): the data order of epoch e comes from a
generator seeded with (seed, e), and the global RNG is reseeded before every step, so a run
resumed from a checkpoint at step s continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import models
from ..config import TrainConfig, apply_overrides, split_overrides, to_dict
from ..data.datasets import DatasetSplits, ImageSet, load_dataset
from ..data.stream import StreamSet
from ..errors import SelfSupError
from ..eval.monitor import make_monitor, parse_protocols
from ..methods import DataInfo, Method, get_method
from . import dist, rundir
from .checkpoint import load_checkpoint, save_backbone, save_checkpoint
from .optim import build_optimizer
from .schedule import warmup_cosine


# ----------------------------------------------------------------------------- configuration

def resolve_config(method: str, overrides: dict | None = None) -> tuple[TrainConfig, object]:
    """TrainConfig and method Config: global defaults < the method's small-image defaults < ``overrides``."""
    cls = get_method(method)
    train_over, method_over = split_overrides(dict(overrides or {}), TrainConfig, cls.Config)
    cfg = apply_overrides(TrainConfig(method=method), cls.train_defaults, "train")
    cfg = apply_overrides(cfg, train_over, "train")
    validate(cfg)
    return cfg, apply_overrides(cls.Config(), method_over, method)


def validate(cfg: TrainConfig) -> None:
    checks = [("batch_size", cfg.batch_size > 0), ("epochs", cfg.epochs > 0), ("lr", cfg.lr > 0),
              ("weight_decay", cfg.weight_decay >= 0), ("warmup_epochs", cfg.warmup_epochs >= 0),
              ("grad_clip", cfg.grad_clip >= 0), ("time_limit", cfg.time_limit >= 0), ("subset", cfg.subset >= 0), ("steps", cfg.steps >= 0),
              ("log_every", cfg.log_every > 0), ("checkpoint_every_steps", cfg.checkpoint_every_steps >= 0),
              ("accumulate", cfg.accumulate > 0), ("skip_nonfinite", cfg.skip_nonfinite >= 0),
              ("monitor_every", cfg.monitor_every >= 0)]
    for name, ok in checks:
        if not ok:
            raise SelfSupError(f"--{name.replace('_', '-')} must be {'positive' if name in ('batch_size', 'epochs', 'lr', 'log_every', 'accumulate') else 'non-negative'}, got {getattr(cfg, name)}")
    if not 0 <= cfg.warmup_max <= 1:
        raise SelfSupError(f"--set warmup_max={cfg.warmup_max}: must be in [0, 1] (a share of the run)")
    if not 0 <= cfg.beta2 < 1:
        raise SelfSupError(f"--set beta2={cfg.beta2}: must be in [0, 1)")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise SelfSupError(f"--device {cfg.device}: expected auto, cpu or cuda")
    parse_protocols(cfg.monitor)
    if cfg.backbone not in models.BACKBONES:
        raise SelfSupError(f"--backbone {cfg.backbone}: unknown backbone (known: {', '.join(models.BACKBONES)})")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SelfSupError(f"--device {name}: CUDA is not available on this machine")
    if name == "cuda":
        return torch.device(f"cuda:{dist.local_rank()}")
    return torch.device(name)


# ----------------------------------------------------------------------------- data sources

def as_image_set(data, cfg: TrainConfig) -> ImageSet | torch.utils.data.Dataset:
    """Accept a dataset spec, DatasetSplits, ImageSet, uint8 tensor (N, C, H, W) or any torch Dataset."""
    if isinstance(data, str):
        data = load_dataset(data, data_dir=cfg.data_dir or None, download=cfg.download, strict=cfg.strict)
    if isinstance(data, DatasetSplits):
        data = data.train
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8:
            if not data.is_floating_point():
                raise SelfSupError(f"image tensor must be uint8 or float in [0, 1], got {data.dtype}")
            data = data.clamp(0, 1).mul(255).round().to(torch.uint8)
        if data.dim() == 3:
            data = data.unsqueeze(1)
        data = ImageSet(data)
    if isinstance(data, (ImageSet, StreamSet)) and cfg.subset and cfg.subset < len(data):
        g = torch.Generator().manual_seed(cfg.seed)
        data = data.subset(torch.randperm(len(data), generator=g)[: cfg.subset].sort().values)
    if len(data) == 0:
        raise SelfSupError("the training data holds no images")
    return data


def _collate(items: list) -> dict:
    """Stack Dataset items (a tensor, an (image, label) pair or a dict with "images") into a batch dict."""
    first = items[0]
    if isinstance(first, dict):
        out = {"images": torch.stack([it["images"] for it in items])}
        if "labels" in first:
            out["labels"] = torch.as_tensor([int(it["labels"]) for it in items])
        if "captions" in first:
            out["captions"] = [it["captions"] for it in items]
        return out
    if isinstance(first, (tuple, list)):
        return {"images": torch.stack([it[0] for it in items]), "labels": torch.as_tensor([int(it[1]) for it in items])}
    if isinstance(first, torch.Tensor):
        return {"images": torch.stack(items)}
    raise SelfSupError(f"dataset items must be uint8 image tensors, (image, label) pairs or dicts; got {type(first).__name__}")


class _EpochBatches:
    """The batch sampler of a BatchSource's one DataLoader: the index lists of the epoch being read."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchSource:
    """Yields the batches of an epoch for this process, deterministically from (seed, epoch).

    In-memory ImageSets are indexed directly (one gather per batch); other torch Datasets go
    through a DataLoader over the same index order (``num_workers`` decode in parallel). Its
    workers live for the whole run, so what a streamed set caches in them outlasts an epoch.
    Each process takes its own interleaved slice of every global batch.
    """

    def __init__(self, data, batch_size: int, seed: int, rank: int = 0, world: int = 1, num_workers: int = 0):
        self.data, self.batch_size, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self.num_workers = num_workers
        self.global_batch = batch_size * world
        self.steps_per_epoch = len(data) // self.global_batch
        if self.steps_per_epoch == 0:
            raise SelfSupError(f"--batch-size {batch_size} x {world} process(es) is larger than the dataset ({len(data)} images)")
        self._batches, self._loader = _EpochBatches(), None

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data), generator=g)

    def indices(self, epoch: int, start: int = 0) -> list[torch.Tensor]:
        perm = self.order(epoch)
        out = []
        for i in range(start, self.steps_per_epoch):
            chunk = perm[i * self.global_batch:(i + 1) * self.global_batch]
            out.append(chunk[self.rank::self.world])
        return out

    def epoch(self, epoch: int, start: int = 0):
        idx = self.indices(epoch, start)
        if isinstance(self.data, ImageSet):
            for i in idx:
                yield self.data.batch(i)
            return
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(self.data, batch_sampler=self._batches, num_workers=self.num_workers,
                                                       collate_fn=_collate, persistent_workers=self.num_workers > 0)
        self._batches.batches = [i.tolist() for i in idx]
        yield from self._loader


def data_info(data, num_classes: int = 0) -> DataInfo:
    if isinstance(data, (ImageSet, StreamSet)):
        mean, std = data.mean_std()
        sample = data.images[0]
        num_classes = num_classes or data.num_classes
    else:
        n = min(len(data), 512)
        x = _collate([data[i] for i in range(n)])["images"].float() / 255
        mean, std = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        sample = x[0]
    if sample.shape[-1] != sample.shape[-2]:
        raise SelfSupError(f"images must be square, got {tuple(sample.shape[-2:])}; resize them (folders: size=N)")
    return DataInfo(channels=sample.shape[0], image_size=sample.shape[-1], mean=mean, std=std, num_classes=num_classes)


# ----------------------------------------------------------------------------- building

def build_method(cfg: TrainConfig, method_cfg, info: DataInfo) -> Method:
    """The method around a freshly initialised backbone (initialisation seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    cls = get_method(cfg.method)
    in_chans = models.input_channels(cls.input_space, info.channels)
    backbone = models.create_backbone(cfg.backbone, in_chans=in_chans, img_size=info.image_size)
    return cls(backbone, method_cfg, info)


def backbone_meta(cfg: TrainConfig, info: DataInfo) -> dict:
    space = get_method(cfg.method).input_space
    return {"backbone": cfg.backbone, "in_chans": info.channels, "img_size": info.image_size,
            "mean": info.mean, "std": info.std, "method": cfg.method, "input_space": space}


def prepare_method(method: Method, images, seed: int) -> None:
    """Give ``method.prepare`` its seeded sample of training images, and a caption method every
    training caption (once, before a new run)."""
    if method.uses_captions:
        captions = getattr(images, "captions", None)
        if captions is None:
            raise SelfSupError(f"{type(method).__name__.lower()} needs image-caption data: a captions CSV/JSONL file "
                               "(path.csv or path.jsonl with image and caption columns) or shapes")
        method.prepare_text(list(captions))
    n = method.prepare_samples
    if not n:
        return
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[:n]
    sample = images.batch(idx)["images"] if isinstance(images, ImageSet) else _collate([images[int(i)] for i in idx])["images"]
    method.prepare(sample)


def write_pictures(method: Method, images, run_dir: Path, seed: int) -> list[Path]:
    """Each of ``method.pictures`` as RUN/pictures/NAME.png (8 images per row), from a fixed sample."""
    from torchvision.utils import save_image
    idx = torch.arange(min(8, len(images)))
    batch = images.batch(idx) if isinstance(images, ImageSet) else _collate([images[int(i)] for i in idx])
    device = next(method.parameters()).device
    batch = _to_device(batch, device)
    was_training = method.training
    method.eval()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            pics = method.pictures(batch)
    finally:
        method.train(was_training)
    paths = []
    for name, x in pics.items():
        path = run_dir / "pictures" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(x.detach().float().cpu().clamp(0, 1), path, nrow=8, padding=1, pad_value=1.0)
        paths.append(path)
    return paths


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


# ----------------------------------------------------------------------------- the loop

@dataclass
class RunResult:
    run_dir: Path | None
    method: Method
    config: TrainConfig
    steps: int
    last_loss: float
    images_per_s: float


def fit(method: Method, source: BatchSource, cfg: TrainConfig, run_dir: Path | None, device: torch.device,
        resume_state: dict | None = None, progress: bool = True, method_cfg=None) -> RunResult:
    """Train ``method`` on ``source`` for ``cfg.epochs`` (or ``cfg.time_limit`` minutes)."""
    rank, world = source.rank, source.world
    main = rank == 0
    method.to(device)
    if device.type == "cuda" and cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if world > 1 and cfg.sync_bn:
        if device.type != "cuda":
            raise SelfSupError("--set sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU)")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    model = method
    if world > 1:
        model = nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(method, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.beta2)
    spe = source.steps_per_epoch
    total = cfg.steps or max(1, math.ceil(cfg.epochs * spe))
    warmup_steps = round(cfg.warmup_epochs * spe)
    step, elapsed_before = 0, 0.0
    if resume_state is not None:
        method.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        step, elapsed_before = int(resume_state["step"]), float(resume_state.get("elapsed_s", 0.0))
    skipped = {"n": int(resume_state.get("skipped_nonfinite", 0)) if resume_state else 0}
    config_dict = {**to_dict(cfg), "method_config": to_dict(method_cfg) if method_cfg is not None else {}}
    ckpt_path = run_dir / "checkpoint.pt" if run_dir else None
    last_good = {"step": step if resume_state else None}

    def checkpoint():
        if ckpt_path is None or not main:
            return
        save_checkpoint({"model": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                         "elapsed_s": elapsed_before + (time.time() - t0), "config": config_dict,
                         "skipped_nonfinite": skipped["n"]}, ckpt_path)
        last_good["step"] = step

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp
                else contextlib.nullcontext())
    metrics = open(run_dir / "metrics.jsonl", "a") if (run_dir and main) else None
    monitor = make_monitor(cfg, source.data, spe) if main else None
    bar = None
    if progress and main:
        from tqdm.auto import tqdm
        if cfg.time_limit:  # a wall-clock budget: the bar counts seconds, not the (huge) step cap
            bar = tqdm(total=round(cfg.time_limit * 60), initial=round(elapsed_before), desc=f"{cfg.method}",
                       unit="s", dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s{postfix}")
        else:
            bar = tqdm(total=total, initial=step, desc=f"{cfg.method}", unit="step", dynamic_ncols=True)
    t0 = time.time()
    last_ckpt_time, window_t, window_steps, window_good, window_loss, window_logs = t0, t0, 0, 0, 0.0, {}
    last_loss, rate = float("nan"), 0.0

    def log_row():
        """One metrics.jsonl line averaging the (finite) steps since the previous one."""
        nonlocal window_t, window_steps, window_good, window_loss, window_logs, last_loss, rate
        now = time.time()
        rate = window_steps * source.global_batch / max(now - window_t, 1e-9)
        last_loss = window_loss / window_good if window_good else float("nan")
        row = {"step": step, "epoch": round(step / spe, 4), "loss": last_loss, "lr": optimizer.param_groups[0]["lr"],
               "images_per_s": rate, "elapsed_s": elapsed_before + now - t0,
               **{k: v / window_good for k, v in window_logs.items()},
               **({"skipped_nonfinite": skipped["n"]} if skipped["n"] else {})}
        if metrics:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        if bar:
            bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{rate:.0f}")
        window_t, window_steps, window_good, window_loss, window_logs = now, 0, 0, 0.0, {}
    method.train()
    try:
        while step < total:
            epoch = step // spe
            for batch in source.epoch(epoch, step % spe):
                now = time.time()
                prog = step / total
                if cfg.time_limit:   # every process takes the same (the slowest) clock: same lr, same stop
                    prog = max(prog, _agree(elapsed_before + now - t0, world, device) / (cfg.time_limit * 60))
                for g in optimizer.param_groups:
                    g["lr"] = warmup_cosine(step, warmup_steps, prog, cfg.lr, cfg.lr * cfg.min_lr_ratio,
                                            cfg.warmup_max) * g.get("lr_scale", 1.0)
                method.progress = min(prog, 1.0)   # schedules of the method (EMA momentum, temperatures) read it
                torch.manual_seed(_step_seed(cfg.seed, step, rank))
                optimizer.zero_grad(set_to_none=True)
                loss_sum, finite, logs = 0.0, True, {}
                micro = _split(batch, cfg.accumulate)
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
                if not finite:
                    if skipped["n"] >= cfg.skip_nonfinite:
                        where = (f"the last good checkpoint is {ckpt_path} (step {last_good['step']})"
                                 if last_good["step"] is not None else "no checkpoint was written yet")
                        allowed = f" (after skipping {skipped['n']} such step(s))" if cfg.skip_nonfinite else ""
                        raise SelfSupError(f"training diverged: loss is {float(loss.detach())} at step {step}{allowed}; "
                                           f"{where}. Lower --lr or set grad_clip, then --resume or start again "
                                           "(--skip-nonfinite N skips up to N such steps).")
                    skipped["n"] += 1
                    optimizer.zero_grad(set_to_none=True)   # the step is spent without an update
                    if main:
                        print(f"warning: non-finite loss at step {step}, step skipped "
                              f"({skipped['n']} of at most {cfg.skip_nonfinite})", flush=True)
                    loss_sum, logs = float("nan"), {}
                else:
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
                    optimizer.step()
                    method.after_step(step, total)
                step += 1
                window_steps += 1
                if finite:
                    window_good += 1
                    window_loss += loss_sum
                    for k, v in logs.items():
                        window_logs[k] = window_logs.get(k, 0.0) + v
                if step % cfg.log_every == 0 or step == total or step == 1:
                    log_row()
                if monitor and monitor.due(step):
                    monitor.run(method, step, spe, device, metrics)
                if bar:
                    bar.update(min(bar.total, round(elapsed_before + time.time() - t0)) - bar.n if cfg.time_limit else 1)
                due = (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0) or \
                      (cfg.checkpoint_every_minutes and time.time() - last_ckpt_time > cfg.checkpoint_every_minutes * 60)
                if due:
                    checkpoint()
                    last_ckpt_time = time.time()
                if step >= total or (cfg.time_limit and
                                     _agree(elapsed_before + time.time() - t0, world, device) >= cfg.time_limit * 60):
                    break
            else:
                checkpoint()  # end of a full epoch
                last_ckpt_time = time.time()
                continue
            break
        if window_steps:  # stopped by the time limit between two log lines
            log_row()
    finally:
        if bar:
            bar.close()
        if metrics:
            metrics.close()
    if world > 1:
        _average_bn_stats(method)
    checkpoint()
    return RunResult(run_dir, method, cfg, step, last_loss, rate)


def train(method: str | None = None, data=None, out: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True, **overrides) -> RunResult:
    """Pretrain ``method`` on ``data`` (a dataset spec, DatasetSplits, ImageSet, uint8 tensor or torch
    Dataset) and write the run folder ``out`` (nothing is written when ``out`` is None).

    ``overrides`` set TrainConfig fields (epochs, lr, backbone, ...) or the method's Config fields.
    ``method`` defaults to "simclr" for a new run and to the checkpoint's on ``resume``.
    """
    if resume:
        if out is None:
            raise SelfSupError("--resume needs the run folder (--out)")
        saved = load_checkpoint(Path(out) / "checkpoint.pt", method=method)   # another method's checkpoint: an error
        saved_cfg = dict(saved["config"])
        method_saved = saved_cfg.pop("method_config", {})
        method = saved_cfg.pop("method")
        merged = {**saved_cfg, **method_saved, **overrides}
        cfg, method_cfg = resolve_config(method, merged)
    else:
        method = method or "simclr"
        spec = data.name if isinstance(data, DatasetSplits) else data
        spec = spec if isinstance(spec, str) else (f"<{type(data).__name__}>" if data is not None else None)
        cfg, method_cfg = resolve_config(method, {**({"data": spec} if spec else {}), **overrides})
        saved = None
    if data is None or isinstance(data, str):
        data = data or cfg.data
        if data.startswith("<"):
            raise SelfSupError(f"this run was trained on in-memory data ({data}); pass the same data again")
    device = pick_device(cfg.device)
    rank, world = dist.setup(device)
    run_dir = None
    if out is not None:
        run_dir = Path(out)
        if rank == 0:
            rundir.prepare(run_dir, resume=resume, overwrite=overwrite)
        dist.barrier()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    images = as_image_set(data, cfg)
    info = data_info(images)
    method_module = build_method(cfg, method_cfg, info)
    if run_dir is not None and rank == 0 and not resume:
        rundir.write_json(run_dir / "config.json", {**to_dict(cfg), "method_config": to_dict(method_cfg),
                                                    "data_info": info.__dict__})
        rundir.write_json(run_dir / "provenance.json", rundir.provenance(device, world, _fingerprint(images)))
    if not resume:
        prepare_method(method_module, images, cfg.seed)
    source = BatchSource(images, cfg.batch_size * cfg.accumulate, cfg.seed, rank, world, cfg.num_workers)
    result = fit(method_module, source, cfg, run_dir, device, resume_state=saved, progress=progress, method_cfg=method_cfg)
    if run_dir is not None and rank == 0:
        save_backbone(method_module.export_backbone(), backbone_meta(cfg, info), run_dir / "backbone.safetensors")
        for name, text in method_module.run_files().items():
            (run_dir / name).write_text(text)
        write_pictures(method_module, images, run_dir, cfg.seed)
    return result


def load_method(run_dir: str | Path) -> Method:
    """The whole trained method of a run folder (backbone, heads, buffers), in eval mode: what
    pretext metrics and pictures need beyond the backbone."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    saved = dict(ckpt["config"])
    method_saved = saved.pop("method_config", {})
    cfg, method_cfg = resolve_config(saved.pop("method"), {**saved, **method_saved})
    info = (Path(run_dir) / "config.json")
    if not info.is_file():
        raise SelfSupError(f"{run_dir}: no config.json, so the data facts the method was built for are unknown")
    info = DataInfo(**json.loads(info.read_text())["data_info"])
    method = build_method(cfg, method_cfg, info)
    method.load_state_dict(ckpt["model"])
    return method.eval()


def _fingerprint(images) -> str | None:
    if isinstance(images, (ImageSet, StreamSet)):
        return DatasetSplits("data", images).fingerprint
    return None
