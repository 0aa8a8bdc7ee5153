"""Jigsaw: predict which permutation shuffled the tiles of an image.

Noroozi, Favaro. "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016. https://arxiv.org/abs/1603.09246

A square field cropped from each image is cut into a grid of cells (3x3 by default) and a tile
is taken at a random place inside each cell, so neighbouring tiles are separated by random gaps
(no edge continuity to follow). Each tile is normalised on its own (no shared brightness or
contrast to match); colour images get random grayscale and a per-channel spatial jitter against
chromatic aberration. The tiles are shuffled by one of a fixed set of permutations, far apart in
Hamming distance and stored with the checkpoint; the backbone embeds every tile (shared weights),
the embeddings are concatenated in position order and an MLP predicts the permutation's index.

With ``board=True`` (our variant, not the paper's) the backbone sees the shuffled tiles laid out
as one image instead (G x t pixels a side, no gaps between them), and the same per-cell head reads
each grid cell of its last feature map. A 12 px tile passes through a ResNet's stride-2 stages down
to a 2 x 2 map, so its deep stages learn on inputs far smaller than the images they later embed; a
36 px board is about the evaluated images' scale, at the same cost in pixels as the nine tiles.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import grayscale, normalize, resized_crop, sample_crop_boxes, to_float
from ..errors import SelfSupError
from ..models import feature_map
from ..models.heads import mlp
from .base import DataInfo, Method, Picture, denormalize

MAX_PERMUTATIONS = 1000


@dataclass
class Config:
    grid: int = 3                   # tiles per side: 3 (the paper) or 2 (at most 4! = 24 permutations)
    num_permutations: int = 100     # size of the permutation set (the paper 1000; VISSL 100 to 10k); at most 1000
    permutation_seed: int = 0       # seeds the greedy choice of the set
    tile_size: int = 12             # tile side in pixels as the backbone sees it (a multiple of 4 for a ViT)
    gap: int = 2                    # each tile is a random tile_size crop of a (tile_size + gap) cell: gaps 0..2*gap
    crop_min: float = 0.6           # the field is a random square crop of this minimum area fraction, resized
    tile_norm: bool = True          # normalise each tile by its own mean/std over all its pixels (else the dataset's)
    tile_std_min: float = 0.05      # floor on a tile's std, so near-flat tiles do not blow up their noise
    channel_jitter: int = 1         # colour tiles: shift each channel by up to +-this many pixels (the paper 0-2 of 64)
    gray_p: float = 0.3             # colour images: grayscale with this probability (the paper 30%)
    tile_dim: int = 128             # per-tile Linear-BN-ReLU width (the paper's fc6: 512)
    hidden_dim: int = 512           # hidden width of the MLP on the concatenated tiles (the paper's fc7: 4096)
    board: bool = False             # the backbone sees the shuffled tiles as one image (module docstring)

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "grid": (2, 3), "num_permutations": ">= 2", "permutation_seed": ">= 0", "tile_size": ">= 1", "gap": ">= 0",
        "crop_min": "(0, 1]", "tile_std_min": "> 0", "channel_jitter": ">= 0", "gray_p": "[0, 1]",
        "tile_dim": ">= 1", "hidden_dim": ">= 1",
    }


@lru_cache(maxsize=2)
def _all_permutations(n: int) -> np.ndarray:
    """Every permutation of range(n), one per column: (n, n!) uint8, in lexicographic order."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.uint8).T.copy()


@lru_cache(maxsize=8)
def permutation_set(grid: int, count: int, seed: int) -> torch.Tensor:
    """``count`` permutations (count, grid**2) of the tile positions, far apart in Hamming distance.

    Greedy over all (grid**2)! candidates, from a random first one: each step adds the candidate
    whose *minimum* distance to the set so far is largest, ties broken by the largest *average*
    distance (the paper's criterion), then by the lowest index. Maximising the minimum keeps
    near-duplicate puzzles out, which the average alone does not; the average still comes out
    near the paper's (8.0 for 1000 of 9!). In NumPy, row by row (torch's reductions over 9! are
    several times slower on a CPU): 100 of 9! take about 0.4 s, listing the 9! included, 1000 about 1.5 s.
    """
    n = grid * grid
    cands = _all_permutations(n)
    g = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(cands.shape[1], (1,), generator=g))]
    min_d = np.full(cands.shape[1], n, dtype=np.int32)
    sum_d = np.zeros(cands.shape[1], dtype=np.int32)
    d = np.empty(cands.shape[1], dtype=np.int32)
    for _ in range(count - 1):
        p = cands[:, chosen[-1]]
        np.not_equal(cands[0], p[0], out=d, casting="unsafe")
        for row, v in zip(cands[1:], p[1:]):
            d += row != v                                  # Hamming distance of every candidate to p
        np.minimum(min_d, d, out=min_d)
        sum_d += d
        # a chosen permutation has min_d = 0, so it is never picked again
        chosen.append(int(np.argmax(min_d * (n * count + 1) + sum_d)))
    return torch.from_numpy(cands[:, chosen].T.astype(np.int64))


def permute_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Shuffle each sample's tiles with one gather: ``out[b, i] = tiles[b, perms[b, i]]``.

    tiles: (B, N, ...); perms: (B, N) long. ``permute_tiles(x, inverse_permutation(p))`` undoes it.
    """
    idx = perms.view(*perms.shape, *[1] * (tiles.dim() - 2)).expand_as(tiles)
    return tiles.gather(1, idx)


def inverse_permutation(perms: torch.Tensor) -> torch.Tensor:
    """(..., N) -> the permutations that undo ``perms`` under ``permute_tiles``."""
    return perms.argsort(-1)


def lay_out(tiles: torch.Tensor, grid: int, cell: int | None = None, offset: int = 0) -> torch.Tensor:
    """Tiles (B, grid**2, C, t, t) in row-major order put on their grid as one image (B, C, grid*cell,
    grid*cell): each tile at ``offset`` inside its ``cell``-px cell, white (1.0) around it; without
    ``cell``, edge to edge."""
    B, _, C, t, _ = tiles.shape
    placed = tiles.view(B, grid, grid, C, t, t).permute(0, 3, 1, 4, 2, 5)     # (B, C, row, y, col, x)
    if cell is None or cell == t:
        return placed.reshape(B, C, grid * t, grid * t)
    board = tiles.new_ones(B, C, grid, cell, grid, cell)
    board[:, :, :, offset:offset + t, :, offset:offset + t] = placed
    return board.view(B, C, grid * cell, grid * cell)


def normalize_tiles(tiles: torch.Tensor, std_min: float = 0.05) -> torch.Tensor:
    """Each tile to zero mean and unit std (std floored at ``std_min``): (B, N, C, t, t).

    One mean and std per tile, over its channels too: brightness and contrast no longer match
    between neighbours, while colour stays (per-channel statistics, as in bbrattoli's port,
    turn the small colour noise of flat tiles into loud, made-up colour)."""
    mean = tiles.mean((-3, -2, -1), keepdim=True)
    std = tiles.std((-3, -2, -1), keepdim=True).clamp_min(std_min)
    return (tiles - mean) / std


class Jigsaw(Method):
    Config = Config
    compile_pays = ("conv",)   # compile=auto: measured on a CPU in fp32 (BENCHMARKS.md, compile-auto)
    train_defaults = dict(optimizer="adamw", lr=2e-3, weight_decay=1e-4, batch_size=128, epochs=5, warmup_epochs=0.1)

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        self._check(cfg, getattr(backbone, "patch_size", 1))
        self.cell = cfg.tile_size + cfg.gap
        self.field = cfg.grid * self.cell   # side of the field the tiles are cut from
        # 12 px tiles in 14 px cells (the paper's 64 of 75) make a 42 px field, so small images are
        # upsampled: a 28 px image's own 9 px tiles (3x3 of 27 px) would shrink to 2x2 after the
        # ResNet's three stride-2 stages and do not split into 4 px ViT patches. The 9 tiles cost
        # 1.65x the pixels of one 28 px image.
        self.register_buffer("permutations", permutation_set(cfg.grid, cfg.num_permutations, cfg.permutation_seed))
        self.tile_head = nn.Sequential(nn.Linear(backbone.embed_dim, cfg.tile_dim, bias=False),
                                       nn.BatchNorm1d(cfg.tile_dim), nn.ReLU(inplace=True))
        self.classifier = mlp(cfg.grid ** 2 * cfg.tile_dim, cfg.hidden_dim, cfg.num_permutations)

    @staticmethod
    def _check(cfg: Config, patch: int) -> None:
        perms = math.factorial(cfg.grid ** 2)
        if not 2 <= cfg.num_permutations <= min(MAX_PERMUTATIONS, perms):
            raise SelfSupError(f"--set num_permutations={cfg.num_permutations}: expected 2 to "
                               f"{min(MAX_PERMUTATIONS, perms)} (a {cfg.grid}x{cfg.grid} grid has {perms}; "
                               f"at most {MAX_PERMUTATIONS})")
        if cfg.tile_size % patch:
            raise SelfSupError(f"--set tile_size={cfg.tile_size}: expected a positive multiple of "
                               f"the backbone's patch size {patch}")

    def sample_tiles(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The field (B, C, F, F) and its tiles (B, G*G, C, t, t) in row-major grid order, both in [0, 1]."""
        cfg, G, t = self.cfg, self.cfg.grid, self.cfg.tile_size
        x = to_float(images)
        B, C, H, W = x.shape
        boxes = sample_crop_boxes(B, H, W, scale=(cfg.crop_min, 1.0), ratio=(1.0, 1.0))
        field = resized_crop(x, boxes, self.field)
        gray = torch.rand(B) < cfg.gray_p
        if C == 3:
            field = grayscale(field, gray, inplace=True)
        # top-left corner of each tile: its cell's corner plus a random offset (the gap), (B, G*G, 1, 2)
        cell = torch.arange(G * G)
        corner = torch.stack([cell // G, cell % G], -1) * self.cell + torch.randint(cfg.gap + 1, (B, G * G, 2))
        corner = corner[:, :, None, :]
        j = cfg.channel_jitter
        jitter = torch.randint(-j, j + 1, (B, G * G, C, 2))
        if C == 3 and j:   # chromatic aberration: colour tiles only, each channel shifted on its own
            corner = corner + jitter * ~gray.view(B, 1, 1, 1)
        pos = (corner[..., None] + torch.arange(t)).clamp_(0, self.field - 1).to(x.device)   # (B, G*G, C', 2, t)
        rows, cols = pos[..., 0, :, None], pos[..., 1, None, :]            # (B, G*G, C', t, 1), (B, G*G, C', 1, t)
        b = torch.arange(B, device=x.device).view(B, 1, 1, 1, 1)
        c = torch.arange(C, device=x.device).view(1, 1, C, 1, 1)
        return field, field[b, c, rows, cols]   # one gather for every tile of the batch

    def prepare_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """Tiles in [0, 1] -> backbone input: per-tile normalisation, or the dataset's."""
        if self.cfg.tile_norm:
            return normalize_tiles(tiles, self.cfg.tile_std_min)
        return normalize(tiles.flatten(0, 1), self.data.mean, self.data.std).view_as(tiles)

    def classify(self, tiles: torch.Tensor) -> torch.Tensor:
        """Shuffled tiles (B, N, C, t, t) -> permutation logits (B, P)."""
        B, N = tiles.shape[:2]
        if self.cfg.board:   # one image per sample; each cell's share of the last feature map
            board = lay_out(tiles, self.cfg.grid)
            cells = F.adaptive_avg_pool2d(feature_map(self.backbone, board), self.cfg.grid)   # (B, D, G, G)
            h = self.tile_head(cells.flatten(2).transpose(1, 2).reshape(B * N, -1))
        else:
            h = self.tile_head(self.backbone(tiles.flatten(0, 1)))   # all B*N tiles in one pass: (B*N, tile_dim)
        return self.classifier(h.view(B, N * h.shape[1]))       # concatenated in position order

    def forward(self, batch: dict):
        _, tiles = self.sample_tiles(batch["images"])
        labels = torch.randint(len(self.permutations), (tiles.shape[0],)).to(tiles.device)
        x = permute_tiles(self.prepare_tiles(tiles), self.permutations[labels])
        logits = self.classify(x)
        loss = F.cross_entropy(logits, labels)
        return loss, {"pretext_acc": (logits.argmax(1) == labels).float().mean().detach()}

    def pictures(self, batch: dict):
        """Rows of 8: the field; the shuffled tiles as the network sees them (each min-max scaled
        when tiles are normalised on their own); the same tiles put back in place. Resized from
        the field's side to the images' (the engine's grids are 8 images wide)."""
        field, tiles = self.sample_tiles(batch["images"][:8])
        labels = torch.randint(len(self.permutations), (tiles.shape[0],)).to(tiles.device)
        perms = self.permutations[labels]
        seen = self.prepare_tiles(tiles)
        if self.cfg.tile_norm:
            lo, hi = seen.amin((2, 3, 4), keepdim=True), seen.amax((2, 3, 4), keepdim=True)
            seen = (seen - lo) / (hi - lo).clamp_min(1e-6)
        else:
            seen = denormalize(seen.flatten(0, 1), self.data).view_as(seen)
        shuffled = permute_tiles(seen, perms)
        solved = permute_tiles(shuffled, inverse_permutation(perms))
        rows = torch.cat([field, self._board(shuffled), self._board(solved)])
        size = self.data.image_size
        return {"jigsaw": Picture(F.interpolate(rows, size=(size, size), mode="bilinear", antialias=True).clamp_(0, 1),
                                  ("field", "shuffled tiles (as seen)", "tiles put back"))}

    def _board(self, tiles: torch.Tensor) -> torch.Tensor:
        """Tiles (B, G*G, C, t, t) laid out on their grid, white between them: (B, C, F, F)."""
        return lay_out(tiles, self.cfg.grid, self.cell, self.cfg.gap // 2)
