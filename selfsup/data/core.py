"""The data layer's core types: in-memory image sets, a dataset's splits, the facts a method is
built for, and cutting splits. Every loader builds on these; none of them knows the registry.

Every dataset resolves to a :class:`DatasetSplits`: a ``train`` and (where known) a ``test``
:class:`ImageSet`, each holding one uint8 tensor ``(N, C, H, W)`` plus labels, class names,
captions and object masks where the source has them. Sets larger than memory (shards, streamed
folders) give :class:`~selfsup.data.stream.StreamSet` splits instead, which read images on demand
and offer the same attributes.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import SelfSupError


@dataclass
class ImageSet(torch.utils.data.Dataset):
    """A split held wholly in memory.

    images:   (N, C, H, W) uint8
    labels:   (N,) int64, or None for unlabeled data
    classes:  class names indexed by label
    captions: one string per image (image-text data)
    masks:    (N, H, W) bool object masks (synthetic data)
    paths:    the file each image was decoded from (folders, caption files), for ``selfsup embed``
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    classes: list[str] | None = None
    captions: list[str] | None = None
    masks: torch.Tensor | None = None
    paths: list[str] | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.images)
        for name in ("labels", "captions", "masks", "paths"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = {"images": self.images[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.captions is not None:
            item["captions"] = self.captions[i]
        return item

    def batch(self, idx: torch.Tensor) -> dict:
        """A batch dict for the given indices, with one gather per field (no Python loop over images)."""
        out = {"images": self.images[idx]}
        if self.labels is not None:
            out["labels"] = self.labels[idx]
        if self.captions is not None:
            out["captions"] = [self.captions[i] for i in idx.tolist()]
        return out

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return replace(
            self,
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx.tolist()],
            masks=None if self.masks is None else self.masks[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
        )

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes)
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixels in [0, 1] (on at most 10k images)."""
        x = self.images[:10000].float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


@dataclass
class DatasetSplits:
    """A named dataset: its splits (ImageSet or StreamSet) and a fingerprint of the content (for provenance and caches)."""

    name: str
    train: ImageSet
    test: ImageSet | None = None
    info: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in (self.train, self.test):
            if split is None:
                continue
            if not isinstance(split, ImageSet):  # a StreamSet: where its images lie, not their pixels
                h.update(split.fingerprint().encode())
                continue
            h.update(str(tuple(split.images.shape)).encode())
            h.update(split.images[:: max(1, len(split) // 256)].numpy().tobytes())
            if split.labels is not None:
                h.update(split.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def stratified_split(labels: torch.Tensor | None, n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (rest, held_out) with ``fraction`` held out, per class when labels exist."""
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        perm = torch.randperm(n, generator=g)
        k = int(round(n * fraction))
        return perm[k:].sort().values, perm[:k].sort().values
    keep, held = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(len(idx) * fraction))
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def label_subset(split: ImageSet, fraction: float, seed: int) -> ImageSet:
    """A stratified, seeded ``fraction`` of a labelled split (at least one image per class)."""
    if not 0.0 < fraction <= 1.0:
        raise SelfSupError(f"--label-fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return split
    if split.labels is None:
        raise SelfSupError("--label-fraction needs a labelled dataset")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in split.labels.unique().tolist():
        idx = (split.labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        chosen.append(idx[: max(1, int(round(len(idx) * fraction)))])
    return split.subset(torch.cat(chosen).sort().values)


@dataclass
class DataInfo:
    """The facts about the training data a method needs to build itself."""

    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    num_classes: int = 0


def split_off_test(name: str, whole, opts: dict, info: dict) -> DatasetSplits:
    """``whole`` (an ImageSet or StreamSet) as train and a seeded stratified ``opts["test_fraction"]``
    held out as test (none at 0); the one split cutter of folders and shards."""
    train_idx, test_idx = stratified_split(whole.labels, len(whole), opts["test_fraction"], opts["seed"])
    info.update(split="stratified", test_fraction=opts["test_fraction"], seed=opts["seed"])
    return DatasetSplits(name=name, train=whole.subset(train_idx), test=whole.subset(test_idx) if len(test_idx) else None,
                         info=info)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"shapes:n=2000,colors=free"`` -> ("shapes", {"n": "2000", "colors": "free"})."""
    if ":" in spec and not Path(spec).exists():
        name, _, opts = spec.partition(":")
        options = {}
        for part in filter(None, opts.split(",")):
            key, eq, value = part.partition("=")
            if not eq:
                raise SelfSupError(f"dataset option {part!r} in {spec!r} is not key=value")
            options[key.strip()] = value.strip()
        return name, options
    return spec, {}


def cache_dir() -> Path:
    """Where decoded datasets are cached: $SELFSUP_CACHE, else ~/.cache/selfsup."""
    root = os.environ.get("SELFSUP_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "selfsup")
    return Path(root)
