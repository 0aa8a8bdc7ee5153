"""Rotation prediction: exact 90-degree turns (no interpolation), all four per image, labels in order."""
import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo
from selfsup.methods.rotation import Config, Rotation, rotate_all
from selfsup.models import create_backbone

from conftest import tiny_images


def test_rotate_all_turns_each_image_by_multiples_of_90_degrees_counter_clockwise():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    r, labels = rotate_all(x)
    assert r.shape == (8, 3, 4, 4) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(r[:2], x)
    # 90 degrees counter-clockwise: the top row becomes the left column, read bottom to top
    assert torch.equal(r[2, :, :, 0], x[0, :, 0, :].flip(-1))
    assert torch.equal(r[4], x[0].flip(-1).flip(-2))              # 180: both axes reversed
    assert torch.equal(r[6], x[0].transpose(-1, -2).flip(-1))     # 270
    assert set(r.unique().tolist()) == set(x.unique().tolist())   # the same pixels, none invented
    with pytest.raises(SelfSupError, match="square"):
        rotate_all(torch.zeros(1, 1, 4, 5))


@pytest.mark.parametrize("head_hidden", [0, 64])
def test_rotation_learns_to_tell_the_angle_on_a_small_set(head_hidden):
    torch.manual_seed(0)
    info = DataInfo(1, 16, [0.2], [0.3])
    m = Rotation(create_backbone("resnet18_quarter", in_chans=1, img_size=16), Config(head_hidden=head_hidden), info)
    images = tiny_images(32, 1, 16)
    images[:, :, :5] = 255   # an up-down asymmetric cue the angle can be read from
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, logs = m({"images": images})
        first = first if first is not None else float(logs["pretext_acc"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first < 0.5 and float(logs["pretext_acc"]) > 0.9


def test_rotation_pictures_show_four_rows_of_the_same_images():
    m = Rotation(create_backbone("resnet18_quarter", in_chans=3, img_size=16), Config(crop_min=1.0, flip_p=0.0),
                 DataInfo(3, 16, [0.5] * 3, [0.25] * 3))
    pics = m.pictures({"images": tiny_images(8, 3, 16)})["rotations"].images
    assert pics.shape == (32, 3, 16, 16) and 0 <= pics.min() and pics.max() <= 1
    assert torch.allclose(torch.rot90(pics[:8], 2, dims=(2, 3)), pics[16:24])
    with pytest.raises(SelfSupError, match="crop_min"):
        Rotation(create_backbone("resnet18_quarter", in_chans=1, img_size=16), Config(crop_min=0), DataInfo(1, 16, [0.5], [0.25]))
