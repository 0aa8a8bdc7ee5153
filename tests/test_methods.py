"""Loops over the method registry: a registered method is a tested method."""
import re
from pathlib import Path

import pytest
import torch

from selfsup.app.train import build_method, resolve_config, write_pictures
from selfsup.errors import SelfSupError
from selfsup.methods import METHODS
from selfsup.methods.base import DataInfo

from conftest import tiny_images


from conftest import CAPTIONS, backbone_for as _backbone


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("channels", [1, 3])
def test_one_training_step_through_the_registry(name, channels):
    cfg, mcfg = resolve_config(name, {"backbone": _backbone(name)})
    info = DataInfo(channels=channels, image_size=16, mean=[0.5] * channels, std=[0.25] * channels, num_classes=2)
    if METHODS[name].input_space == "lab_l" and channels == 1:  # colour from lightness: refuses grey data
        with pytest.raises(SelfSupError, match="colour"):
            build_method(cfg, mcfg, info)
        return
    method = build_method(cfg, mcfg, info)
    images = tiny_images(16, channels, 16)
    batch = {"images": images, "labels": torch.arange(16) % 2} if method.uses_labels else {"images": images}
    if method.uses_captions:
        batch["captions"] = CAPTIONS[:16]
        method.prepare_text(CAPTIONS)
    params = [p for p in method.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    loss, logs = method(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the backbone"
    opt.step()
    method.after_step(0, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, params)), "no parameter moved"
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in logs.values())
    assert method.backbone is not None and hasattr(method.backbone, "embed_dim")


@pytest.mark.parametrize("name", list(METHODS))
def test_pictures_have_96px_tiles_and_a_label_per_row(name, tmp_path):
    """Every method's pictures: tiles of 16-px images enlarged to >= 96 px, one declared label per row
    (read back from the PNG's text chunks), and the PNG as wide as the label margin plus the tiles."""
    from PIL import Image

    from selfsup.data.datasets import ImageSet
    from selfsup.methods.base import Picture
    from selfsup.runs.pictures import MIN_TILE, picture_layout
    cfg, mcfg = resolve_config(name, {"backbone": _backbone(name)})
    method = build_method(cfg, mcfg, DataInfo(3, 16, [0.5] * 3, [0.25] * 3, num_classes=2))
    method.eval()
    with torch.no_grad():
        declared = method.pictures(ImageSet(tiny_images(8, 3, 16)).batch(torch.arange(8)))
    method.train()
    paths = write_pictures(method, ImageSet(tiny_images(12, 3, 16)), tmp_path, seed=0)
    assert method.training, "write_pictures must restore train mode"
    assert paths, f"{name} shows no pictures"   # every method shows what it trains on
    for p in paths:
        pic = declared[p.stem]
        assert isinstance(pic, Picture), f"{name}: {p.stem} has no row labels"
        assert pic.rows and all(r.strip() for r in pic.rows), (name, pic.rows)
        assert len(pic.images) == 8 * len(pic.rows), (name, p.stem, len(pic.images), pic.rows)   # rows of 8
        layout = picture_layout(p)
        assert layout["rows"] == list(pic.rows) and layout["columns"] == 8
        assert layout["tile"] >= MIN_TILE and layout["tile"] % 16 == 0        # integer nearest-neighbour factor
        w, h = Image.open(p).size
        assert layout["margin"] >= 40, layout                                  # room for the labels
        assert w == layout["margin"] + 8 * layout["tile"] + 9 * 2, (p, w, layout)
        assert h == len(pic.rows) * layout["tile"] + (len(pic.rows) + 1) * 2, (p, h, layout)


def test_picture_labels_are_drawn_in_the_margin():
    """The margin holds dark text pixels on each labelled row, and is blank without labels."""
    import numpy as np

    from selfsup.methods.base import Picture
    from selfsup.runs.pictures import render_picture
    x = torch.rand(16, 3, 32, 32)
    image, layout = render_picture(Picture(x, ("grey input", "prediction")))
    a = np.asarray(image)
    assert layout["tile"] == 96 and image.width == layout["margin"] + 8 * 96 + 18
    for r in range(2):
        band = a[2 + r * 98: 2 + r * 98 + 96, : layout["margin"]]
        dark = (band.min(-1) < 100).any(1)
        assert dark.sum() >= 10, f"row {r}: no label text"   # glyphs at least 10 px tall (a 16-px font)
    plain, layout = render_picture(x)                          # the older contract: rows of 8, no labels
    assert layout["margin"] == 0 and layout["rows"] == [] and plain.size == (8 * 96 + 18, 2 * 96 + 6)


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_never_read_labels_unless_marked(name):
    cls = METHODS[name]
    if cls.uses_labels:
        return
    cfg, mcfg = resolve_config(name, {"backbone": _backbone(name)})
    channels = 3 if cls.input_space == "lab_l" else 1
    method = build_method(cfg, mcfg, DataInfo(channels, 16, [0.5] * channels, [0.25] * channels))

    class NoLabels(dict):
        def __getitem__(self, key):
            assert key != "labels", f"{name} read the labels"
            return super().__getitem__(key)
    batch = NoLabels(images=tiny_images(8, channels, 16))
    if method.uses_captions:
        method.prepare_text(CAPTIONS)
        batch["captions"] = CAPTIONS[:8]
    loss, _ = method(batch)
    assert torch.isfinite(loss)


def test_readme_method_table_matches_the_registry():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- methods -->")[1].split("<!-- /methods -->")[0]
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M)
    assert names == list(METHODS)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_settings_do_not_shadow_training_settings(name):
    """``--set key=value`` goes to TrainConfig first: a method field of the same name could never be set."""
    from dataclasses import fields

    from selfsup.config import TrainConfig
    clash = {f.name for f in fields(METHODS[name].Config)} & {f.name for f in fields(TrainConfig)}
    assert not clash, f"{name}: {clash} shadowed by training settings"


@pytest.mark.parametrize("name", [*METHODS, "TrainConfig"])
def test_every_setting_declares_its_range_and_the_defaults_lie_in_it(name):
    """Each numeric setting has a declared range (checked before any work); the defaults and the
    method's small-image train defaults are inside it; every declared key is a real field."""
    import dataclasses

    from selfsup.config import TrainConfig, check_ranges, unranged_fields
    cls = TrainConfig if name == "TrainConfig" else METHODS[name].Config
    assert unranged_fields(cls) == [], f"{name}: settings without a declared range"
    assert set(cls.ranges) <= {f.name for f in dataclasses.fields(cls)}, f"{name}: a range for no setting"
    check_ranges(cls())
    if name != "TrainConfig":
        resolve_config(name, {"backbone": _backbone(name)})   # the method's train defaults pass too
