"""The run folder: config.json, provenance.json, metrics.jsonl, checkpoint.pt, backbone.safetensors,
pictures/ and eval/. An existing run is refused unless resuming or overwriting, and overwriting
removes only these files (never anything else a user keeps in that folder)."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..atomic import write_json
from ..errors import SelfSupError

__all__ = ["RUN_FILES", "RUN_DIRS", "prepare", "write_json", "git_commit", "provenance", "read_metrics", "result_path", "run_config"]

RUN_FILES = ("config.json", "provenance.json", "metrics.jsonl", "checkpoint.pt", "backbone.safetensors", "report.html",
             "tokenizer.json")
RUN_DIRS = ("pictures", "eval", "tensorboard")


def prepare(out: Path, resume: bool, overwrite: bool) -> Path:
    """Make ``out`` ready for a new run (or check it holds one to resume)."""
    out = Path(out)
    if resume and overwrite:
        raise SelfSupError("--resume and --overwrite exclude each other")
    exists = out.exists() and any((out / f).exists() for f in RUN_FILES)
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise SelfSupError(f"--resume: {out} holds no checkpoint.pt to resume from")
        return out
    if exists and not overwrite:
        raise SelfSupError(f"run folder {out} already exists; pass --resume to continue it or --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SelfSupError(f"--out {out}: is a file, not a folder")
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device | str, world_size: int = 1, data_fingerprint: str | None = None) -> dict:
    from .. import __version__
    return {
        "selfsup": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "data_fingerprint": data_fingerprint,
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def result_path(run_dir: str | Path, name: str = "") -> Path:
    """Where a run's evaluation results are written: RUN/eval/NAME (the folder itself without ``name``)."""
    return Path(run_dir) / "eval" / name if name else Path(run_dir) / "eval"


def result_name(protocol: str, label_fraction: float = 1.0, split: str = "test", layer=None, tag: str = "") -> str:
    """PROTOCOL[_FRACTION][_layerN or _layerN+M][_val][@DATA].json: one file per protocol, labels, stage, split and
    dataset, so that no evaluation replaces another's result."""
    if isinstance(layer, (list, tuple)):   # several stages concatenated: _layer2+3+4
        layer = "+".join(map(str, layer))
    suffix = ("" if label_fraction == 1.0 else f"_{label_fraction:g}") + ("" if layer is None else f"_layer{layer}")
    return f"{protocol}{suffix}{'_val' if split == 'val' else ''}{tag}.json"


def run_config(run_dir: str | Path) -> dict:
    """The run folder's config.json, or {} when there is none (a backbone file, a bare checkpoint)."""
    p = Path(run_dir) / "config.json"
    return json.loads(p.read_text()) if p.is_file() else {}
