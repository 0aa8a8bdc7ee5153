"""Images read from disk when they are asked for, for sets larger than memory.

A :class:`StreamSet` knows where each sample's encoded image lies — a byte range of a file: a
whole image file of a streamed folder, or a member of a WebDataset tar shard — and keeps only
labels and captions in memory. ``data[i]`` reads that range and decodes it by the folder rules
(:func:`selfsup.data.folder.decode_image`) into uint8 ``(C, size, size)``, in whichever process
asks: the engine's DataLoader workers during training, the caller otherwise.

Random access (rather than a sequential tar stream) keeps the engine's data order a function of
(seed, epoch, rank), so a resumed run continues mid-epoch exactly as with in-memory data.

Decoded images are kept in an LRU cache of at most ``cache_mb`` MiB per process that reads; a
DataLoader's workers share the cap out (``cache_mb / num_workers`` each), so a training process
with its workers never holds more than the cap, and a set that fits in it is read from disk once
per process (the engine keeps its workers for the whole run).

Files were checked when the set was built (headers, or full decodes with ``strict``); an image
that still fails to decode (a good header over truncated pixels) is replaced by the next readable
sample, so batches keep their size, and named in a warning, or raises with ``strict``.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from ..errors import SelfSupError
from .decode import SHOWN_SKIPS, BadImage, decode_image

log = logging.getLogger("selfsup")

OPEN_FILES = 16      # file handles kept open per process (tar shards are read many times)
MEAN_STD_IMAGES = 512  # images the normalisation statistics are taken from


class StreamSet(torch.utils.data.Dataset):
    """A split whose images stay on disk until read; items are dicts like :class:`ImageSet`'s.

    files:    paths of the files that hold the images
    where:    (N, 3) int64 numpy: file index, byte offset and byte length of each sample's image
    names:    one name per sample, for messages (a path, or ``shard.tar:KEY.png``)
    size:     images are decoded to (channels, size, size)
    labels:   (N,) int64, or None;  classes: names indexed by label;  captions: one string per sample
    """

    masks = None  # object masks exist only for the synthetic in-memory sets

    def __init__(self, files: list[str], where: np.ndarray, names: list[str], size: int, channels: int,
                 labels: torch.Tensor | None = None, classes: list[str] | None = None,
                 captions: list[str] | None = None, cache_mb: int = 512, strict: bool = False):
        self.files, self.where, self.names = files, where, names
        self.size, self.channels = size, channels
        self.labels, self.classes, self.captions = labels, classes, captions
        self.cache_mb, self.strict = cache_mb, strict
        self._start()

    def _start(self) -> None:
        """Per-process state: open files, the cache and its share of the cap (again in each worker)."""
        self._pid = os.getpid()
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.cached_bytes = 0
        worker = torch.utils.data.get_worker_info()
        self._cap = self.cache_mb * 2**20 // (worker.num_workers if worker else 1)
        self._bad: dict[int, str] = {}

    def __getstate__(self):  # for DataLoader workers started by spawn: no handles or cache
        state = self.__dict__.copy()
        for k in ("_handles", "_cache", "_bad"):
            state.pop(k)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._start()

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, i: int) -> dict:
        j, image = self._readable(int(i))
        item = {"images": image}
        if self.labels is not None:
            item["labels"] = self.labels[j]
        if self.captions is not None:
            item["captions"] = self.captions[j]
        return item

    # ------------------------------------------------------------------------- reading

    def _readable(self, i: int) -> tuple[int, torch.Tensor]:
        """(j, image) for sample i, or for the next sample after it that decodes."""
        if os.getpid() != self._pid:  # a forked DataLoader worker: its own files and cache
            self._start()
        n = len(self)
        for j in (k % n for k in range(i, i + n)):
            if j not in self._bad:
                image = self._image(j)
                if image is not None:
                    return j, image
        name, reason = next(iter(self._bad.items()))
        raise SelfSupError(f"none of the {n} images could be decoded (first: {self.names[name]}: {reason})")

    def _image(self, j: int) -> torch.Tensor | None:
        image = self._cache.get(j)
        if image is not None:
            self._cache.move_to_end(j)
            return image
        try:
            image = self._decode(j)
        except BadImage as e:
            if self.strict:
                raise SelfSupError(f"{self.names[j]}: {e} (strict mode)") from None
            self._bad[j] = str(e)
            if len(self._bad) <= SHOWN_SKIPS:
                log.warning("skipped unreadable image %s (%s); the next readable one is used in its place%s", self.names[j],
                            e, " (further ones are not named)" if len(self._bad) == SHOWN_SKIPS else "")
            return None
        nbytes = image.numel()
        if nbytes <= self._cap:
            self._cache[j] = image
            self.cached_bytes += nbytes
            while self.cached_bytes > self._cap:
                self.cached_bytes -= self._cache.popitem(last=False)[1].numel()
        return image

    def _decode(self, j: int) -> torch.Tensor:
        f, offset, length = (int(v) for v in self.where[j])
        try:
            fh = self._handles.pop(f, None) or open(self.files[f], "rb")
            self._handles[f] = fh  # most recently used last
            if len(self._handles) > OPEN_FILES:
                self._handles.popitem(last=False)[1].close()
            fh.seek(offset)
            data = fh.read(length)
        except OSError as e:
            raise BadImage(f"cannot read ({e.strerror or type(e).__name__})") from None
        if len(data) != length:
            raise BadImage("truncated (the file is shorter than when it was indexed)")
        a = decode_image(data, self.size)
        if a.ndim == 2:
            a = a[..., None].repeat(self.channels, axis=2)
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))

    # ------------------------------------------------------------------------- what ImageSet offers

    @property
    def images(self) -> "LazyImages":
        return LazyImages(self)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def subset(self, idx) -> "StreamSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx.tolist()
        return StreamSet(self.files, self.where[idx.numpy()], [self.names[i] for i in rows], self.size, self.channels,
                         labels=None if self.labels is None else self.labels[idx], classes=self.classes,
                         captions=None if self.captions is None else [self.captions[i] for i in rows],
                         cache_mb=self.cache_mb, strict=self.strict)

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixels in [0, 1], on the first MEAN_STD_IMAGES images."""
        x = self.images[:MEAN_STD_IMAGES].float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()

    def fingerprint(self) -> str:
        """A hash of where the samples lie and their labels (reading every image would defeat streaming)."""
        h = hashlib.sha256(f"{len(self)} {self.channels} {self.size}".encode())
        h.update(self.where.tobytes())
        h.update("\0".join(os.path.basename(f) for f in self.files).encode())
        if self.labels is not None:
            h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


class LazyImages:
    """A StreamSet's images as a read-only sequence: ``images[a:b]`` (or a list or tensor of
    indices) decodes just those into one uint8 (n, C, H, W) tensor, so code that walks a split in
    batches (feature extraction, zero-shot, predictions) reads a large split without holding it."""

    def __init__(self, data: StreamSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.data), self.data.channels, self.data.size, self.data.size)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, int):
            return self.data[idx]["images"]
        rows = range(len(self.data))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).flatten().tolist()
        if len(rows) == 0:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.stack([self.data[i]["images"] for i in rows])
