"""Jigsaw: the permutation set, tile cutting, shuffling and its inverse, one training step, pictures."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo
from selfsup.methods.jigsaw import (Config, Jigsaw, inverse_permutation, normalize_tiles, permutation_set,
                                    permute_tiles)
from selfsup.models import create_backbone

from conftest import tiny_images


def make(channels=1, size=28, backbone="resnet18_quarter", **kw) -> Jigsaw:
    torch.manual_seed(0)
    net = create_backbone(backbone, in_chans=channels, img_size=size)
    return Jigsaw(net, Config(**kw), DataInfo(channels, size, [0.5] * channels, [0.25] * channels))


def pairwise_hamming(perms: torch.Tensor) -> torch.Tensor:
    """Hamming distances between distinct rows, flattened."""
    d = (perms[:, None] != perms[None]).sum(-1)
    return d[~torch.eye(len(perms), dtype=torch.bool)]


def test_greedy_set_is_farther_apart_than_a_random_set():
    greedy = permutation_set(3, 100, 0)
    g = torch.Generator().manual_seed(0)
    random = torch.stack([torch.randperm(9, generator=g) for _ in range(100)])
    dg, dr = pairwise_hamming(greedy), pairwise_hamming(random)
    assert dg.min() > dr.min()
    assert dg.min() >= 5   # measured 6; a random set of 100 has pairs at distance 2-3
    assert dg.float().mean() > dr.float().mean()


def test_set_is_deterministic_unique_and_made_of_permutations():
    build = permutation_set.__wrapped__   # bypass the cache: really build it twice
    a, b, other = build(3, 50, 0), build(3, 50, 0), build(3, 50, 1)
    assert a.shape == (50, 9) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert len({tuple(p) for p in a.tolist()}) == 50
    assert torch.equal(a.sort(1).values, torch.arange(9).expand(50, 9))


def test_2x2_grid_takes_all_24_permutations_and_no_more():
    m = make(grid=2, num_permutations=24)
    assert {tuple(p) for p in m.permutations.tolist()} == set(itertools.permutations(range(4)))
    with pytest.raises(SelfSupError, match="num_permutations=25"):
        make(grid=2, num_permutations=25)


@pytest.mark.parametrize("kw, option", [(dict(grid=4), "grid=4"), (dict(num_permutations=5000), "num_permutations=5000"),
                                        (dict(num_permutations=1), "num_permutations=1"), (dict(gap=-1), "gap=-1"),
                                        (dict(gray_p=1.5), "gray_p=1.5")])
def test_bad_options_name_themselves(kw, option):
    with pytest.raises(SelfSupError, match=option):
        make(**kw)


def test_vit_needs_tiles_in_whole_patches():
    with pytest.raises(SelfSupError, match="tile_size=10"):
        make(3, 32, "vit_micro", tile_size=10)


def test_permute_gathers_and_inverse_restores_the_tiles():
    tiles = torch.randn(5, 9, 3, 4, 4)
    perms = permutation_set(3, 100, 0)[torch.tensor([0, 7, 42, 99, 3])]
    shuffled = permute_tiles(tiles, perms)
    for b in range(5):
        for i in range(9):
            assert torch.equal(shuffled[b, i], tiles[b, perms[b, i]])
    assert not torch.equal(shuffled, tiles)
    assert torch.equal(permute_tiles(shuffled, inverse_permutation(perms)), tiles)


def test_tiles_are_whole_cells_without_gaps():
    m = make(1, 28, gap=0)
    field, tiles = m.sample_tiles(tiny_images(4, 1, 28))
    assert field.shape == (4, 1, 36, 36) and tiles.shape == (4, 9, 1, 12, 12)
    assert torch.equal(m._board(tiles), field)


def corners(tile: torch.Tensor, field: torch.Tensor, top: int, left: int, span: int) -> set:
    """The corners (y, x) within ``span`` of (top, left) at which ``tile`` (t, t) is a crop of ``field``
    (F, F) with its edges repeated (tile rows and columns are clamped to the field)."""
    t = tile.shape[-1]
    padded = F.pad(field[None, None], (span,) * 4, mode="replicate")[0, 0]
    return {(y, x) for y in range(top - span, top + span + 1) for x in range(left - span, left + span + 1)
            if torch.equal(tile, padded[y + span:y + span + t, x + span:x + span + t])}


def test_tiles_lie_in_their_cells_at_random_gaps():
    m = make(1, 28, gap=2)
    field, tiles = m.sample_tiles(tiny_images(4, 1, 28))
    offsets = set()
    for b in range(4):
        for i in range(9):
            top, left = (i // 3) * m.cell, (i % 3) * m.cell
            found = corners(tiles[b, i, 0], field[b, 0], top + 1, left + 1, 1)   # offset 0..2 inside the cell
            assert found, (b, i)
            offsets |= {(y - top, x - left) for y, x in found}
    assert len(offsets) > 4   # of the 9 possible


def test_colour_channels_jitter_unless_grey():
    m = make(3, 32, gap=2, channel_jitter=1, gray_p=0.0)
    field, tiles = m.sample_tiles(tiny_images(4, 3, 32))
    jittered = 0
    for b in range(4):
        for i in range(9):
            top, left = (i // 3) * m.cell, (i % 3) * m.cell
            # offset 0..2 inside the cell, then each channel moved by -1..1: within 2 of (top + 1, left + 1)
            found = [corners(tiles[b, i, c], field[b, c], top + 1, left + 1, 2) for c in range(3)]
            assert all(found), (b, i)
            jittered += not (found[0] & found[1] & found[2])   # no one corner serves all three channels
    assert jittered > 0
    grey = make(3, 32, gap=2, channel_jitter=1, gray_p=1.0)
    _, gt = grey.sample_tiles(tiny_images(4, 3, 32))
    assert torch.equal(gt[:, :, 0], gt[:, :, 1]) and torch.equal(gt[:, :, 1], gt[:, :, 2])   # grey tiles: no jitter


def test_per_tile_normalisation():
    g = torch.Generator().manual_seed(0)
    gain = torch.rand(4, 9, 1, 1, 1, generator=g) * 0.7 + 0.3   # tile std 0.09 to 0.29, above the floor
    tiles = torch.rand(4, 9, 3, 12, 12, generator=g) * gain + torch.rand(4, 9, 1, 1, 1, generator=g) * 0.4
    out = normalize_tiles(tiles)
    assert out.mean((2, 3, 4)).abs().max() < 1e-5
    assert (out.std((2, 3, 4)) - 1).abs().max() < 1e-4
    flat = normalize_tiles(torch.full((1, 9, 1, 12, 12), 0.3) + 1e-3 * torch.rand(1, 9, 1, 12, 12, generator=g))
    assert flat.abs().max() < 0.05   # the std floor keeps near-flat tiles near zero
    m = make(1, 28)
    assert torch.allclose(m.prepare_tiles(tiles[:, :, :1]).std((2, 3, 4)), torch.ones(4, 9), atol=1e-4)


@pytest.mark.parametrize("channels, size, backbone", [(1, 28, "resnet18_quarter"), (3, 32, "resnet18_quarter"),
                                                      (3, 32, "vit_micro")])
def test_one_training_step(channels, size, backbone):
    m = make(channels, size, backbone)
    loss, logs = m({"images": tiny_images(4, channels, size)})
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert abs(float(loss.detach()) - math.log(100)) < 2   # about chance at initialisation
    acc = logs["pretext_acc"]
    assert not acc.requires_grad and 0 <= float(acc) <= 1
    loss.backward()
    first = next(m.backbone.parameters())   # the stem convolution / patch embedding
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.classifier.parameters())


@pytest.mark.parametrize("channels, size, backbone", [(1, 28, "resnet18_quarter"), (3, 32, "vit_micro")])
def test_one_training_step_on_the_board(channels, size, backbone):
    m = make(channels, size, backbone, board=True)
    loss, _ = m({"images": tiny_images(4, channels, size)})
    assert torch.isfinite(loss) and abs(float(loss.detach()) - math.log(100)) < 2
    loss.backward()
    assert next(m.backbone.parameters()).grad.abs().sum() > 0
    assert all(p.grad is not None for p in [*m.tile_head.parameters(), *m.classifier.parameters()])


def test_board_lays_the_shuffled_tiles_out_as_one_image_and_reads_each_cell():
    m = make(board=True).eval()
    seen = []
    features = m.backbone.forward_features
    m.backbone.forward_features = lambda x: seen.append(x) or features(x)
    tiles = torch.randn(2, 9, 1, 12, 12)
    with torch.no_grad():
        logits = m.classify(tiles)
    assert logits.shape == (2, 100) and len(seen) == 1   # one backbone pass for the whole batch
    board = seen[0]
    assert board.shape == (2, 1, 36, 36)
    for i in range(9):
        r, c = divmod(i, 3)
        assert torch.equal(board[:, :, 12 * r:12 * r + 12, 12 * c:12 * c + 12], tiles[:, i])
    with torch.no_grad():   # the head reads cells in position order: a shuffled board gives other logits
        assert not torch.allclose(m.classify(permute_tiles(tiles, permutation_set(3, 100, 0)[[1, 2]])), logits)


def test_permutation_set_is_saved_and_restored_with_the_checkpoint():
    m = make(num_permutations=20)
    state = m.state_dict()
    assert torch.equal(state["permutations"], permutation_set(3, 20, 0))
    other = make(num_permutations=20, permutation_seed=5)
    assert not torch.equal(other.permutations, m.permutations)
    other.load_state_dict(state)
    assert torch.equal(other.permutations, m.permutations)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_pictures_show_field_puzzle_and_solution(channels, size):
    m = make(channels, size, gap=0, channel_jitter=0, tile_norm=False).eval()
    with torch.no_grad():
        pics = m.pictures({"images": tiny_images(8, channels, size)})
    x = pics["jigsaw"].images
    assert x.shape == (24, channels, size, size)   # the field (36 px here) shown at the images' size
    assert x.min() >= 0 and x.max() <= 1
    field, puzzle, solved = x[:8], x[8:16], x[16:]
    assert torch.allclose(solved, field, atol=1e-5)   # the inverse permutation puts every tile back
    assert not torch.allclose(puzzle, field, atol=1e-3)
    shown = make(channels, size).eval().pictures({"images": tiny_images(8, channels, size)})["jigsaw"].images
    assert shown.shape == (24, channels, size, size) and shown.min() >= 0 and shown.max() <= 1
