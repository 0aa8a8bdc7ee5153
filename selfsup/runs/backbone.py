"""Loading a run's backbone: from ``backbone.safetensors``, or out of the training checkpoint of an
interrupted run. Both record what rebuilding the backbone needs (architecture, channels, size,
normalisation, input space, and in a checkpoint where the backbone sits in the method's state
dict), so no method registry is needed here."""
from __future__ import annotations

from pathlib import Path

from .. import models
from ..errors import SelfSupError
from .checkpoint import load_checkpoint, read_backbone
from .folder import run_config

# Checkpoints written before they recorded ``backbone_meta`` (selfsup 0.1): what their methods said.
_LEGACY_INPUT_SPACE = {"colorization": "lab_l"}


def _legacy_prefix(cfg: dict) -> str:
    if cfg.get("method") == "dino" and cfg.get("method_config", {}).get("eval_backbone", "teacher") == "teacher":
        return "teacher_backbone."
    return "backbone."


def checkpoint_backbone(ckpt: dict, run_dir: Path) -> tuple[dict, dict]:
    """(state_dict, metadata) of the backbone inside a training checkpoint."""
    meta = ckpt.get("backbone_meta")
    if meta is None:   # an older checkpoint: rebuild the record from its config and config.json
        cfg = ckpt["config"]
        info = run_config(run_dir).get("data_info", {})
        meta = {"backbone": cfg["backbone"], "in_chans": info.get("channels", 3), "img_size": info.get("image_size", 32),
                "mean": info.get("mean", [0.5]), "std": info.get("std", [0.5]), "method": cfg["method"],
                "input_space": _LEGACY_INPUT_SPACE.get(cfg["method"], "rgb"), "prefix": _legacy_prefix(cfg)}
    meta = dict(meta)
    prefix = meta.pop("prefix", "backbone.")
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    return state, meta


def load_backbone(run_dir: str | Path) -> models.Encoder:
    """The pretrained backbone of a run folder as a plain module with its normalisation
    (:class:`selfsup.models.Encoder`): takes uint8 or [0, 1] images, returns embeddings."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise SelfSupError(f"--checkpoint {run_dir}: no such run folder")
    path = run_dir / "backbone.safetensors" if run_dir.is_dir() else run_dir
    if path.suffix == ".safetensors" and path.is_file():
        state, meta = read_backbone(path)
    else:  # an interrupted run: take the backbone out of the training checkpoint
        state, meta = checkpoint_backbone(load_checkpoint(run_dir), run_dir)
    if "backbone" not in meta:
        raise SelfSupError(f"{path}: no selfsup metadata (backbone name, channels, normalisation)")
    space = meta.get("input_space", "rgb")
    backbone = models.create_backbone(meta["backbone"], in_chans=models.input_channels(space, meta["in_chans"]),
                                      img_size=meta["img_size"])
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:
        raise SelfSupError(f"{path}: weights do not fit backbone {meta['backbone']} ({str(e).splitlines()[0]})") from None
    enc = models.Encoder(backbone, meta["mean"], meta["std"], input_space=space)
    enc.meta = meta
    return enc.eval()
