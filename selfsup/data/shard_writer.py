"""Writing WebDataset shards (``selfsup data shard``): any dataset the registry resolves, in the
layout :mod:`selfsup.data.shards` reads (see its docstring)."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_write, check_writable
from ..errors import SelfSupError
from .core import DatasetSplits, ImageSet, parse_spec
from .datasets import load_dataset
from .folder import load_folder
from .shards import FORMAT, IMAGE_FORMATS, INDEX, INDEX_VERSION, PATTERN, _read_index, is_shard_folder
from .stream import StreamSet

def write_shards(data, out: str | Path, shard_mb: float = 256, image_format: str = "png", max_count: int = 100_000,
                 overwrite: bool = False, data_dir: str | None = None, download: bool = False, strict: bool = False) -> dict:
    """Write ``data`` (a dataset spec, :class:`DatasetSplits` or one split) as shards under ``out``
    (layout in the module docstring) and return the index written to ``out/index.json``.

    A folder named by its spec is read streamed, one image at a time, so it may be larger than
    memory. A shard ends at the first sample past ``shard_mb`` MiB or at ``max_count`` samples.
    ``png`` is lossless; ``jpg`` is JPEG at quality 95 without chroma subsampling (small images lose colour detail to it). ``out`` must be new or empty, or, with
    ``overwrite``, shards written before (their shards and index are replaced, nothing else).
    """
    import webdataset as wds

    if image_format not in IMAGE_FORMATS:
        raise SelfSupError(f"--format {image_format}: expected {' or '.join(IMAGE_FORMATS)}")
    if not shard_mb > 0:
        raise SelfSupError(f"--shard-mb {shard_mb}: must be positive")
    if max_count < 1:
        raise SelfSupError(f"max_count {max_count}: must be positive")
    out = Path(out).expanduser()
    replace = _check_out(out, overwrite)
    splits, source = _source(data, data_dir, download, strict)
    first = splits["train"]
    if first.image_size[0] != first.image_size[1]:
        raise SelfSupError(f"{source}: images are {first.image_size[0]}x{first.image_size[1]}; shards hold square "
                           "images (give the source a size=N option)")
    if replace:
        _remove_shards(out)
    made = not out.exists()
    index = {"format": FORMAT, "version": INDEX_VERSION, "source": source, "image_format": image_format,
             "image_size": first.image_size[0], "channels": first.channels, "classes": first.classes,
             "labels": first.labels is not None, "captions": first.captions is not None, "splits": {}}
    try:
        for name, split in splits.items():
            (out / name).mkdir(parents=True, exist_ok=True)
            shards: list[str] = []
            with wds.ShardWriter(str(out / name / PATTERN), maxcount=max_count, maxsize=shard_mb * 2**20, verbose=0,
                                 encoder=False, mtime=0, post=shards.append) as sink:
                for i in range(len(split)):
                    item = split[i]
                    sample = {"__key__": f"{i:08d}", image_format: _encode(item["images"], image_format)}
                    if "labels" in item:
                        sample["cls"] = str(int(item["labels"])).encode()
                    if "captions" in item:
                        sample["txt"] = item["captions"].encode("utf-8")
                    sink.write(sample)
            index["splits"][name] = {"samples": len(split), "shards": [Path(s).name for s in shards]}
        atomic_write(out / INDEX, lambda p: Path(p).write_text(json.dumps(index, indent=1)))
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        else:
            _remove_shards(out)
        raise
    return index


def _source(data, data_dir, download, strict) -> tuple[dict, str]:
    """{split name: split} and a name for the source."""
    spec = data if isinstance(data, str) else None
    if isinstance(data, str):
        name, options = parse_spec(data)
        path = Path(name).expanduser()
        if path.is_dir() and not is_shard_folder(path):
            data = load_folder(path, {"stream": "true", **options}, strict=strict)
        else:
            data = load_dataset(data, data_dir=data_dir, download=download, strict=strict)
    if isinstance(data, DatasetSplits):
        return {"train": data.train, **({"test": data.test} if data.test is not None else {})}, spec or data.name
    if isinstance(data, (ImageSet, StreamSet)):
        return {"train": data}, f"<{type(data).__name__}>"
    raise SelfSupError(f"cannot write shards from {type(data).__name__}: give a dataset spec, DatasetSplits or an ImageSet")


def _encode(image: torch.Tensor, image_format: str) -> bytes:
    """uint8 (C, H, W) -> PNG or JPEG bytes (grey for C=1)."""
    a = image.numpy()
    buf = io.BytesIO()
    im = Image.fromarray(a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0)))
    im.save(buf, format=IMAGE_FORMATS[image_format], **({"quality": 95, "subsampling": 0} if image_format == "jpg" else {}))
    return buf.getvalue()


def _check_out(out: Path, overwrite: bool) -> bool:
    """Whether earlier shards in ``out`` are to be replaced; refuse any other non-empty ``out``."""
    check_writable(out, "--out")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise SelfSupError(f"--out {out}: exists and is not empty (--overwrite replaces shards written before)")
    if _read_index(out) is None:
        raise SelfSupError(f"--out {out}: holds no {INDEX} written by selfsup data shard; refusing to overwrite it")
    return True


def _remove_shards(out: Path) -> None:
    """Remove index.json and SPLIT/shard-*.tar, and split folders left empty."""
    (out / INDEX).unlink(missing_ok=True)
    for split in ("train", "test"):
        for f in (out / split).glob("shard-*.tar"):
            f.unlink()
        if (out / split).is_dir() and not any((out / split).iterdir()):
            (out / split).rmdir()
