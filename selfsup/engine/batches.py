"""Batches of an epoch for this process, deterministically from (seed, epoch), and the data facts
(channels, size, normalisation) a method is built for."""
from __future__ import annotations

import torch

from ..data.core import DataInfo, ImageSet
from ..data.stream import StreamSet
from ..errors import SelfSupError


def collate(items: list) -> dict:
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
                                                       collate_fn=collate, persistent_workers=self.num_workers > 0)
        self._batches.batches = [i.tolist() for i in idx]
        yield from self._loader


def data_info(data, num_classes: int = 0) -> DataInfo:
    if isinstance(data, (ImageSet, StreamSet)):
        mean, std = data.mean_std()
        sample = data.images[0]
        num_classes = num_classes or data.num_classes
    else:
        n = min(len(data), 512)
        x = collate([data[i] for i in range(n)])["images"].float() / 255
        mean, std = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        sample = x[0]
    if sample.shape[-1] != sample.shape[-2]:
        raise SelfSupError(f"images must be square, got {tuple(sample.shape[-2:])}; resize them (folders: size=N)")
    return DataInfo(channels=sample.shape[0], image_size=sample.shape[-1], mean=mean, std=std, num_classes=num_classes)
