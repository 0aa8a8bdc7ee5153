"""A run's backbone for use outside selfsup (``selfsup export``), as files in one folder:

- ``backbone.safetensors``: the weights with the metadata that rebuilds them, written by the same
  function as the run folder's own file (``selfsup.load_backbone`` reads it);
- ``backbone.onnx`` (``pip install 'selfsup[onnx]'``): the backbone *with its input normalisation*
  (or, for a colorization backbone, the Lab lightness of RGB input). Input ``images``: float32 in
  [0, 1], (batch, C, H, W) at the run's channels and image size, the batch axis dynamic; output
  ``embeddings`` (batch, D): the pooled embedding evaluation uses. Exported through torch.export
  (``torch.onnx.export(dynamo=True)``; the TorchScript exporter is deprecated and traces ViTs with
  warnings) and checked: ONNX Runtime must reproduce PyTorch's embeddings of a random batch;
- ``export.json``: what was exported from where, and the ONNX input's description (also stored in
  the ONNX graph's metadata under ``selfsup``).
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import SelfSupError
from .. import runs
from ..atomic import atomic_write
from ..runs import check_writable, load_backbone, save_backbone

FORMATS = ("safetensors", "onnx")
INPUT, OUTPUT = "images", "embeddings"
TOLERANCE = 1e-4  # the ONNX check's largest absolute difference, relative to the embeddings' largest value


def _onnxruntime():
    try:
        import onnx  # noqa: F401  (torch.onnx needs both to write the graph)
        import onnxscript  # noqa: F401
        import onnxruntime
    except ImportError:
        raise SelfSupError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'selfsup[onnx]'") from None
    return onnxruntime


@contextlib.contextmanager
def _quiet(*names: str):
    """The graph optimiser's INFO lines ("Removed 182 unused nodes") kept out of the log for a while."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def input_spec(encoder) -> dict:
    """What the ONNX graph takes and gives, from the backbone's metadata."""
    meta = encoder.meta
    space = meta.get("input_space", "rgb")
    inside = ("(x - mean) / std per channel" if space == "rgb" else
              "the Lab lightness of RGB x, (L - 50) / 50 (mean and std unused)")
    return {"input": INPUT, "shape": ["batch", meta["in_chans"], meta["img_size"], meta["img_size"]],
            "dtype": "float32", "range": [0.0, 1.0], "input_space": space, "mean": meta["mean"], "std": meta["std"],
            "in_graph": inside, "output": OUTPUT, "embed_dim": encoder.embed_dim}


def export_onnx(encoder, path: Path) -> float:
    """Write ``encoder`` (a :class:`selfsup.models.Encoder` from ``load_backbone``) as an ONNX graph
    and return the largest absolute difference between ONNX Runtime and PyTorch on a random batch."""
    ort = _onnxruntime()
    spec = input_spec(encoder)
    encoder = encoder.eval().cpu()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, *spec["shape"][1:], generator=g)
    with _quiet("onnxscript", "onnx_ir"):
        program = torch.onnx.export(encoder, (x,), input_names=[INPUT], output_names=[OUTPUT], dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.model.metadata_props["selfsup"] = json.dumps(spec)
    atomic_write(Path(path), lambda tmp: program.save(tmp, external_data=False))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, *spec["shape"][1:], generator=g)  # another batch size than the traced one
    got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
    with torch.no_grad():
        want = encoder(x).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= TOLERANCE * max(1.0, float(np.abs(want).max())):
        raise SelfSupError(f"{path}: ONNX Runtime's embeddings differ from PyTorch's by up to {diff:.3g}; "
                           "the graph was written but should not be trusted")
    return diff


def export(checkpoint: str | Path, out: str | Path, formats=FORMATS) -> dict:
    """Export the backbone of ``checkpoint`` (a run folder or its ``backbone.safetensors``) into the
    folder ``out`` in each of ``formats``; returns what ``export.json`` holds."""
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise SelfSupError(f"--format {','.join(formats)}: expected one or more of {', '.join(FORMATS)}")
    out = check_writable(out, "--out")
    if "onnx" in formats:
        _onnxruntime()  # before the work, not after it
    encoder = load_backbone(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"checkpoint": str(checkpoint), "backbone": encoder.meta["backbone"],
                "method": encoder.meta.get("method"), "files": {}}
    if "safetensors" in formats:
        save_backbone(encoder.backbone, encoder.meta, out / "backbone.safetensors")
        manifest["files"]["safetensors"] = "backbone.safetensors"
    if "onnx" in formats:
        manifest["onnx_max_abs_diff"] = export_onnx(encoder, out / "backbone.onnx")
        manifest["files"]["onnx"] = "backbone.onnx"
        manifest["onnx_input"] = input_spec(encoder)
    runs.write_json(out / "export.json", manifest)
    return manifest
