"""Building a method from config and training it: the application around the engine's loop.

``train`` resolves the config (global defaults < the method's small-image defaults < overrides),
builds the method around a seeded backbone, prepares it (caption tokenizer, data statistics),
runs :func:`selfsup.engine.fit` with the online monitor as a hook and TensorBoard as a metrics
sink (``selfsup.app.tblog``), and writes the run folder: config.json, provenance.json, the
backbone, the method's own files and its pictures (also added to TensorBoard).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import models, runs
from ..config import TrainConfig, apply_overrides, check_ranges, split_overrides, to_dict
from ..data.core import DataInfo, DatasetSplits, ImageSet
from ..data.datasets import load_dataset
from ..data.stream import StreamSet
from ..distributed import setup as setup_processes, barrier
from ..engine.batches import BatchSource, collate, data_info
from ..engine.loop import RunResult, fit
from ..errors import SelfSupError
from ..eval.monitor import make_monitor, parse_protocols
from ..methods import Method, get_method
from ..runs import load_backbone, load_checkpoint, save_backbone
from ..runs.pictures import save_picture
from ..runs.paths import check_writable
from .device import pick_device
from .tblog import TensorBoardSink, check_logger, wanted as tensorboard_wanted

__all__ = ["resolve_config", "run_configs", "validate", "as_image_set", "build_method", "backbone_meta", "prepare_method",
           "write_pictures", "train", "load_method", "RunResult", "BatchSource", "data_info", "fit", "pick_device"]


# TrainConfig fields that ``selfsup train`` takes as flags of their own: errors name the flag
FLAGS = {k: "--" + k.replace("_", "-") for k in ("epochs", "batch_size", "lr", "time_limit", "accumulate",
                                               "skip_nonfinite", "seed")}


def resolve_config(method: str, overrides: dict | None = None) -> tuple[TrainConfig, object]:
    """TrainConfig and method Config: global defaults < the method's small-image defaults < ``overrides``.
    Every value is checked against its declared range here, before any data is loaded."""
    cls = get_method(method)
    train_over, method_over = split_overrides(dict(overrides or {}), TrainConfig, cls.Config)
    cfg = apply_overrides(TrainConfig(method=method), cls.train_defaults, "train")
    # the method's defaults for the backbone's family (training or method settings), under the user's
    per_family = cls.family_defaults.get(models.family(str(train_over.get("backbone", cfg.backbone))), {})
    family_train, family_method = split_overrides(dict(per_family), TrainConfig, cls.Config)
    cfg = apply_overrides(cfg, family_train, "train")
    cfg = apply_overrides(cfg, train_over, "train")
    validate(cfg)
    method_cfg = apply_overrides(cls.Config(), {**family_method, **method_over}, method)
    check_ranges(method_cfg)
    return cfg, method_cfg


def resolved_config(method: str, overrides: dict | None = None) -> dict:
    """Every setting a run of ``method`` with ``overrides`` would train with, as its config.json holds
    them (training settings and ``method_config``): the part of a cache key that the code's defaults decide."""
    cfg, method_cfg = resolve_config(method, overrides)
    return {**to_dict(cfg), "method_config": to_dict(method_cfg)}


def run_configs(saved: dict, overrides: dict | None = None) -> tuple[TrainConfig, object]:
    """TrainConfig and method Config of a run from its saved config (config.json, or the checkpoint's),
    with ``overrides`` on top: the one way a run is rebuilt (resume, load_method, report)."""
    saved = dict(saved)
    saved.pop("data_info", None)
    method_saved = saved.pop("method_config", {}) or {}
    return resolve_config(saved.pop("method"), {**saved, **method_saved, **(overrides or {})})


def validate(cfg: TrainConfig) -> None:
    check_ranges(cfg, FLAGS)
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise SelfSupError(f"--device {cfg.device}: expected auto, cpu or cuda")
    parse_protocols(cfg.monitor)
    check_logger(cfg.logger)
    if cfg.backbone not in models.BACKBONES:
        raise SelfSupError(f"--backbone {cfg.backbone}: unknown backbone (known: {', '.join(models.BACKBONES)})")


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


def build_method(cfg: TrainConfig, method_cfg, info: DataInfo) -> Method:
    """The method around a freshly initialised backbone (initialisation seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    cls = get_method(cfg.method)
    in_chans = models.input_channels(cls.input_space, info.channels)
    backbone = models.create_backbone(cfg.backbone, in_chans=in_chans, img_size=info.image_size)
    start = cls.pretrained_from(method_cfg)   # loaded here, after the backbone: the seeded draws stay in order
    if start:
        return cls(backbone, method_cfg, info, pretrained=load_backbone(start))
    return cls(backbone, method_cfg, info)


def backbone_meta(cfg: TrainConfig, info: DataInfo, method_cfg=None) -> dict:
    """What rebuilding the backbone needs, saved with ``backbone.safetensors``; checkpoints also
    record its ``prefix`` in the method's state dict, so no method registry is needed to load it."""
    cls = get_method(cfg.method)
    meta = {"backbone": cfg.backbone, "in_chans": info.channels, "img_size": info.image_size,
            "mean": info.mean, "std": info.std, "method": cfg.method, "input_space": cls.input_space}
    if method_cfg is not None:
        meta["prefix"] = cls.export_prefix(to_dict(method_cfg))
    return meta


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
    sample = images.batch(idx)["images"] if isinstance(images, ImageSet) else collate([images[int(i)] for i in idx])["images"]
    method.prepare(sample)


def write_pictures(method: Method, images, run_dir: Path, seed: int) -> list[Path]:
    """Each of ``method.pictures`` as RUN/pictures/NAME.png, from a fixed sample of 8 images: tiles
    upscaled to at least 96 px, each row labelled (``selfsup.runs.pictures``)."""
    idx = torch.arange(min(8, len(images)))
    batch = images.batch(idx) if isinstance(images, ImageSet) else collate([images[int(i)] for i in idx])
    device = next(method.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = method.training
    method.eval()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            pics = method.pictures(batch)
    finally:
        method.train(was_training)
    return [save_picture(pic, run_dir / "pictures" / f"{name}.png") for name, pic in pics.items()]


def train(method: str | None = None, data=None, out: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool | None = None, **overrides) -> RunResult:
    """Pretrain ``method`` on ``data`` (a dataset spec, DatasetSplits, ImageSet, uint8 tensor or torch
    Dataset) and write the run folder ``out`` (nothing is written when ``out`` is None).

    ``overrides`` set TrainConfig fields (epochs, lr, backbone, ...) or the method's Config fields.
    ``method`` defaults to "simclr" for a new run and to the checkpoint's on ``resume``.
    ``progress``: the training bar on stderr; None (default) shows it when stderr is a terminal.
    ``logger="tensorboard"|"none"|"auto"``: TensorBoard event files in ``out/tensorboard/``.
    """
    if resume:
        if out is None:
            raise SelfSupError("--resume needs the run folder (--out)")
        saved = load_checkpoint(Path(out) / "checkpoint.pt", method=method)   # another method's checkpoint: an error
        cfg, method_cfg = run_configs(saved["config"], overrides)
        method = cfg.method
    else:
        method = method or "simclr"
        spec = data.name if isinstance(data, DatasetSplits) else data
        spec = spec if isinstance(spec, str) else (f"<{type(data).__name__}>" if data is not None else None)
        cfg, method_cfg = resolve_config(method, {**({"data": spec} if spec else {}), **overrides})
        saved = None
    if data is None or isinstance(data, str):
        data = data or cfg.data
        if data.startswith("<"):
            raise SelfSupError(f"--data is needed (the run was trained on in-memory data, {data}); pass the same data again")
    if out is not None:
        check_writable(out, "--out")   # before any data is loaded
    device = pick_device(cfg.device)
    _bf16_notice(cfg, device, overrides)
    rank, world = setup_processes(device)
    run_dir = None
    if out is not None:
        run_dir = Path(out)
        if rank == 0:
            runs.prepare(run_dir, resume=resume, overwrite=overwrite)
        barrier()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    images = as_image_set(data, cfg)
    info = data_info(images)
    method_module = build_method(cfg, method_cfg, info)
    if run_dir is not None and rank == 0 and not resume:
        runs.write_json(run_dir / "config.json", {**to_dict(cfg), "method_config": to_dict(method_cfg),
                                                    "data_info": info.__dict__})
        runs.write_json(run_dir / "provenance.json", runs.provenance(device, world, _fingerprint(images)))
    if not resume:
        prepare_method(method_module, images, cfg.seed)
    source = BatchSource(images, cfg.batch_size * cfg.accumulate, cfg.seed, rank, world, cfg.num_workers)
    monitor = make_monitor(cfg, source.data, source.steps_per_epoch) if rank == 0 else None
    sink = None
    if run_dir is not None and rank == 0 and tensorboard_wanted(cfg.logger):
        # a resumed run drops what the interrupted process logged after its checkpoint's step
        sink = TensorBoardSink(run_dir, purge_step=int(saved["step"]) if saved is not None else None)
    try:
        result = fit(method_module, source, cfg, run_dir, device, resume_state=saved, progress=progress,
                     method_cfg=method_cfg, hooks=[monitor] if monitor else [], sinks=[sink] if sink else [],
                     extra_state={"backbone_meta": backbone_meta(cfg, info, method_cfg)})
        if run_dir is not None and rank == 0:
            _record_precision(run_dir, result, device, cfg)
            save_backbone(method_module.export_backbone(), backbone_meta(cfg, info), run_dir / "backbone.safetensors")
            for name, text in method_module.run_files().items():
                (run_dir / name).write_text(text)
            pictures = write_pictures(method_module, images, run_dir, cfg.seed)
            if sink is not None:
                for path in pictures:
                    sink.add_picture(path, result.steps)
    finally:
        if sink is not None:
            sink.close()
    return result


def _record_precision(run_dir: Path, result: RunResult, device: torch.device, cfg) -> None:
    """provenance.json gets the precision the run trained in, cpu_bf16=auto's timings when it
    probed them (a resumed run keeps its first process's record), and whether torch.compile ran
    the modules (with compile=auto's reason)."""
    path = run_dir / "provenance.json"
    try:
        prov = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if device.type == "cuda":
        prov["precision"] = "bf16 autocast" if cfg.amp else "fp32"
    else:
        prov["precision"] = "bf16 autocast + channels_last" if result.bf16 else "fp32"
    if result.precision_probe is not None:
        prov["precision_probe"] = {k: v for k, v in result.precision_probe.items() if k != "cached"}
    if result.compiled is not None:
        prov["compile"] = result.compiled
    runs.write_json(path, prov)


def _bf16_notice(cfg, device, overrides: dict) -> None:
    """One line (once per process) when the user asked for cpu_bf16 on a CPU without native bf16,
    where the run trains in fp32; the default says nothing."""
    from ..engine.loop import native_bf16
    if "cpu_bf16" in overrides and cfg.cpu_bf16 == "true" and device.type == "cpu" and not native_bf16() \
            and not getattr(_bf16_notice, "shown", False):
        print("notice: --set cpu_bf16=true: this CPU has no native bf16 dot products (AVX512_BF16/AMX); "
              "training in fp32", flush=True)
        _bf16_notice.shown = True


def load_method(run_dir: str | Path) -> Method:
    """The whole trained method of a run folder (backbone, heads, buffers), in eval mode: what
    pretext metrics and pictures need beyond the backbone."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    cfg, method_cfg = run_configs(ckpt["config"])
    info = runs.run_config(run_dir).get("data_info")
    if info is None:
        raise SelfSupError(f"{run_dir}: no config.json, so the data facts the method was built for are unknown")
    info = DataInfo(**info)
    method = build_method(cfg, method_cfg, info)
    method.load_state_dict(ckpt["model"])
    return method.eval()


def _fingerprint(images) -> str | None:
    if isinstance(images, (ImageSet, StreamSet)):
        return DatasetSplits("data", images).fingerprint
    return None


def end_processes() -> bool:
    """Leave torchrun's process group (a no-op on one process); whether this was the main process."""
    from ..distributed import cleanup, is_main
    main = is_main()
    cleanup()
    return main
