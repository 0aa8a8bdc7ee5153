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
def test_pictures_are_written_as_png_grids(name, tmp_path):
    from PIL import Image

    from selfsup.data.datasets import ImageSet
    cfg, mcfg = resolve_config(name, {"backbone": _backbone(name)})
    method = build_method(cfg, mcfg, DataInfo(3, 16, [0.5] * 3, [0.25] * 3, num_classes=2))
    paths = write_pictures(method, ImageSet(tiny_images(12, 3, 16)), tmp_path, seed=0)
    assert method.training, "write_pictures must restore train mode"
    assert paths, f"{name} shows no pictures"   # every method shows what it trains on
    for p in paths:
        w, h = Image.open(p).size
        assert w == 8 * 16 + 9 and h >= 16, (p, w, h)   # 8 per row, 1-px padding


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
