"""The checkpoint format: atomic checkpoints and the backbone file. Everything is loaded with
``weights_only=True``."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from ..atomic import atomic_write
from ..errors import SelfSupError


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename): a crash mid-write
    leaves the previous checkpoint intact."""
    try:
        atomic_write(Path(path), lambda tmp: torch.save(state, tmp))
    except OSError as e:   # disk full, permissions, a vanished folder
        had = " the previous one is intact" if Path(path).is_file() else " no earlier checkpoint exists"
        raise SelfSupError(f"{path}: could not write the checkpoint ({e.strerror or e});{had}") from None


def load_checkpoint(path: Path, method: str | None = None) -> dict:
    """Load a checkpoint safely; a missing, truncated or foreign file is a one-line error naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise SelfSupError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, pickle refused by weights_only, ...
        raise SelfSupError(f"{path}: not a readable selfsup checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise SelfSupError(f"{path}: not a selfsup checkpoint (no model/config inside)")
    if method is not None and state["config"].get("method") != method:
        raise SelfSupError(f"{path}: checkpoint of method {state['config'].get('method')!r}, not {method!r}")
    return state


def save_backbone(backbone: torch.nn.Module, meta: dict, path: Path) -> None:
    """The backbone's weights as safetensors, with what rebuilds it (name, channels, size, mean, std) as metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"selfsup": json.dumps(meta)}))


def read_backbone(path: Path) -> tuple[dict, dict]:
    """(state_dict, metadata) of a ``backbone.safetensors``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("selfsup", "{}"))
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise SelfSupError(f"{path}: not a readable backbone file ({e})") from None
