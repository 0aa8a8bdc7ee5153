"""The synthetic ``shapes`` dataset: determinism, layout, captions that match the pixels,
colour modes, rotation-unambiguous classes, and the registry entry."""
import re

import pytest
import torch

from selfsup.data import shapes
from selfsup.data.datasets import DATASETS
from selfsup.data.shapes import CLASSES, COLORS, POSITIONS, SIZES, canonical_masks, generate_shapes
from selfsup.errors import SelfSupError

N = 400
PALETTE = torch.tensor(list(COLORS.values()), dtype=torch.float32)
CAPTION = re.compile(
    rf"^a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(CLASSES)}) "
    rf"({'|'.join(p for row in POSITIONS for p in row)})$")


@pytest.fixture(scope="module")
def class_set():
    return generate_shapes(N, seed=0)


@pytest.fixture(scope="module")
def free_set():
    return generate_shapes(N, colors="free", seed=0)


def parse(caption):
    m = CAPTION.match(caption)
    assert m, f"caption {caption!r} does not follow 'a <size> <colour> <class> <position>'"
    return m.groups()


def object_colours(ds):
    """Mean RGB over each object's mask: (N, 3) in 0..255."""
    m = ds.masks.unsqueeze(1).float()
    return (ds.images.float() * m).sum((2, 3)) / m.sum((2, 3))


def nearest_colour(rgb):
    return torch.cdist(rgb, PALETTE).argmin(1)


def test_same_seed_same_data_different_seed_different():
    a, b, c = generate_shapes(100, seed=3), generate_shapes(100, seed=3), generate_shapes(100, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
    assert a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.captions != c.captions


def test_layout_and_balance(class_set):
    ds = class_set
    assert ds.images.shape == (N, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (N,) and ds.labels.dtype == torch.int64
    assert ds.masks.shape == (N, 32, 32) and ds.masks.dtype == torch.bool
    assert len(ds.captions) == N and ds.classes == CLASSES
    counts = torch.bincount(ds.labels, minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1
    big = generate_shapes(12, size=48, seed=1)
    assert big.images.shape == (12, 3, 48, 48) and big.masks.shape == (12, 48, 48)


def test_mask_area_follows_size_word(class_set):
    ds = class_set
    area = ds.masks.sum((1, 2))
    assert area.min() > 0
    size_word = torch.tensor([SIZES.index(parse(c)[0]) for c in ds.captions])
    for k in range(len(CLASSES)):
        per_size = [area[(ds.labels == k) & (size_word == s)] for s in range(3)]
        assert all(len(a) for a in per_size), CLASSES[k]
        # areas of consecutive size words do not overlap within a class
        assert per_size[0].max() < per_size[1].min() and per_size[1].max() < per_size[2].min(), CLASSES[k]


def test_captions_match_label_colour_and_position(class_set):
    ds = class_set
    h, w = ds.image_size
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    m = ds.masks.float()
    cx, cy = (m * xs).sum((1, 2)) / m.sum((1, 2)), (m * ys).sum((1, 2)) / m.sum((1, 2))
    colour_names = list(COLORS)
    for i, caption in enumerate(ds.captions):
        _, colour, name, position = parse(caption)
        assert name == CLASSES[ds.labels[i]]
        assert colour == colour_names[ds.labels[i]]  # class mode
        horizontal = -1 if "left" in position else 1 if "right" in position else 0
        vertical = -1 if "top" in position else 1 if "bottom" in position else 0
        for word, c, side in ((horizontal, cx[i], w), (vertical, cy[i], h)):
            offset = float(c) - side / 2
            if word == 0:
                assert abs(offset) < side / 8, (caption, offset)
            else:
                assert word * offset > 1, (caption, offset)


def test_class_mode_colour_is_predictable_from_class(class_set):
    predicted = nearest_colour(object_colours(class_set))
    assert (predicted == class_set.labels).float().mean() > 0.97


def test_free_mode_colour_is_independent_of_class(free_set):
    ds = free_set
    colour_names = list(COLORS)
    named = torch.tensor([colour_names.index(parse(c)[1]) for c in ds.captions])
    # the caption's colour is the colour in the pixels
    assert (nearest_colour(object_colours(ds)) == named).float().mean() > 0.97
    for k in range(len(CLASSES)):
        assert len(named[ds.labels == k].unique()) >= 5, CLASSES[k]
    # and it does not give the class away
    assert (named == ds.labels).float().mean() < 0.3


def test_background_does_not_give_the_class_away(class_set):
    ds = class_set
    bg = (~ds.masks).unsqueeze(1).float()
    x = ds.images.float()
    mean = (x * bg).sum((2, 3)) / bg.sum((2, 3))
    std = (((x - mean[:, :, None, None]) ** 2) * bg).sum((2, 3)).div(bg.sum((2, 3))).sqrt()
    feats = torch.cat([mean, std], 1)
    centroids = torch.stack([feats[ds.labels == k].mean(0) for k in range(len(CLASSES))])
    accuracy = (torch.cdist(feats, centroids).argmin(1) == ds.labels).float().mean()
    assert accuracy < 0.3  # chance is 0.1; nearest class mean on background statistics


def iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def test_no_class_is_a_rotation_of_another_or_of_itself():
    masks = canonical_masks(64)
    assert masks.shape == (len(CLASSES), 64, 64)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            for k in range(4):
                if i == j and k == 0:
                    continue
                overlap = iou(masks[i], torch.rot90(masks[j], k, (0, 1)))
                assert overlap < 0.8, (CLASSES[i], CLASSES[j], 90 * k, overlap)


def test_registry_loader_and_fixed_split():
    splits = DATASETS["shapes"](options={"n": "40", "n_test": "20", "colors": "free", "seed": "1"})
    assert splits.name == "shapes" and len(splits.train) == 40 and len(splits.test) == 20
    assert not torch.equal(splits.train.images[:20], splits.test.images)
    again = DATASETS["shapes"](options={"n": "40", "n_test": "20", "colors": "free", "seed": "1"})
    assert splits.fingerprint == again.fingerprint
    assert DATASETS["shapes"](options={"n": "5", "n_test": "0"}).test is None


def test_load_dataset_spec():
    pytest.importorskip("selfsup.data.folder")
    from selfsup.data.datasets import load_dataset

    splits = load_dataset("shapes:n=200,n_test=50")
    assert len(splits.train) == 200 and len(splits.test) == 50
    assert splits.train.images.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("options, named", [
    ({"n": "lots"}, "n="), ({"n_test": "-1"}, "n_test="), ({"size": "8"}, "size="),
    ({"colors": "rainbow"}, "colors="), ({"seed": "x"}, "seed="), ({"shuffle": "1"}, "shuffle"),
])
def test_bad_option_names_it(options, named):
    with pytest.raises(SelfSupError, match=named):
        shapes.load_shapes(options)
