"""MAE: patches, per-sample masking and its exact restoration, the encoder on visible tokens only,
the loss on masked patches only (with and without norm_pix_loss), pictures and the infill reference."""
import pytest
import torch

from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo
from selfsup.methods.mae import (MAE, Config, infill_from_visible, masked_mse, normalize_patches, patchify,
                                 random_masking, unpatchify)
from selfsup.models import create_backbone

from conftest import tiny_images


def small_mae(channels=3, size=16, **kw):
    torch.manual_seed(0)
    info = DataInfo(channels, size, [0.5] * channels, [0.25] * channels)
    return MAE(create_backbone("vit_micro", in_chans=channels, img_size=size), Config(**kw), info)


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_round_trip_and_layout(channels):
    x = torch.randn(2, channels, 12, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 9, 16 * channels)
    assert torch.equal(unpatchify(p, 4, channels), x)
    # patch 1 (row 0, column 1) holds pixel (0, 4) first, channel last
    assert torch.equal(p[0, 1, :channels], x[0, :, 0, 4])
    with pytest.raises(SelfSupError, match="multiple of the patch size"):
        patchify(torch.randn(1, 1, 10, 10), 4)


@pytest.mark.parametrize("ratio,length,kept", [(0.75, 49, 12), (0.75, 64, 16), (0.5, 16, 8), (0.9, 4, 1)])
def test_masking_keeps_exactly_the_same_count_per_sample_and_restores_order(ratio, length, kept):
    g = torch.Generator().manual_seed(0)
    keep, mask, restore = random_masking(5, length, ratio, generator=g)
    assert keep.shape == (5, kept)
    assert torch.equal(mask.sum(1), torch.full((5,), float(length - kept)))
    tokens = torch.arange(length).expand(5, -1)
    shuffle = restore.argsort(1)
    shuffled = tokens.gather(1, shuffle)
    assert torch.equal(shuffled.gather(1, restore), tokens)          # exact order restoration
    assert torch.equal(shuffle[:, :kept], keep)
    for b in range(5):                                                 # the kept ones are exactly the unmasked ones
        assert set(keep[b].tolist()) == set((mask[b] == 0).nonzero().flatten().tolist())
    assert len({tuple(k.sort().values.tolist()) for k in keep}) > 1    # per-sample, not one mask for the batch


def test_loss_is_masked_patches_only_and_matches_a_naive_loop():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 6, 8, requires_grad=True), torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1]], dtype=torch.float)
    for norm in (False, True):
        loss = masked_mse(pred, target, mask, norm)
        terms = []
        for b in range(3):
            for i in range(6):
                if mask[b, i]:
                    t = target[b, i]
                    if norm:
                        t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
                    terms.append(((pred[b, i] - t) ** 2).mean())
        assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)
        pred.grad = None
        loss.backward()
        assert (pred.grad[mask == 0] == 0).all() and (pred.grad[mask == 1] != 0).any()
        changed = pred.detach().clone()
        changed[mask == 0] += 100.0                                   # visible patches do not enter the loss
        assert torch.allclose(masked_mse(changed, target, mask, norm), loss.detach())


def test_normalized_patches_have_zero_mean_unit_variance():
    t = normalize_patches(torch.randn(2, 5, 48) * 3 + 7)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 5), atol=1e-4)


def test_encoder_sees_only_the_visible_tokens_and_decoder_all():
    m = small_mae(size=16, mask_ratio=0.75)                          # 16 patches, 4 visible
    seen = {}

    def spy(key):
        def hook(mod, args):
            seen.setdefault(key, args[0].shape)       # returns None: the input is left alone
        return hook
    m.backbone.vit.blocks[0].register_forward_pre_hook(spy("enc"))
    m.decoder_blocks[0].register_forward_pre_hook(spy("dec"))
    loss, _ = m({"images": tiny_images(6, 3, 16)})
    assert seen["enc"] == (6, 1 + 4, m.backbone.embed_dim)
    assert seen["dec"] == (6, 1 + 16, m.cfg.decoder_dim)
    assert torch.isfinite(loss)
    loss.backward()
    pos = m.backbone.vit.pos_embed
    assert not pos.requires_grad and pos.grad is None                # fixed sin-cos
    assert torch.equal(pos[0, 0], torch.zeros_like(pos[0, 0]))
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0


def test_refuses_a_resnet_and_bad_settings():
    info = DataInfo(1, 16, [0.5], [0.25])
    with pytest.raises(SelfSupError, match="ViT backbone"):
        MAE(create_backbone("resnet18_quarter", in_chans=1), Config(), info)
    for kw in [dict(mask_ratio=1.0), dict(mask_ratio=0.0), dict(decoder_dim=30, decoder_heads=4)]:
        with pytest.raises(SelfSupError, match="--set"):
            small_mae(1, **kw)


def test_pictures_and_reconstruction_error_against_the_infill():
    m = small_mae(channels=1, size=16).eval()
    pics = m.pictures({"images": tiny_images(8, 1, 16)})
    rec = pics["reconstruction"].images
    assert rec.shape == (24, 1, 16, 16) and 0 <= rec.min() and rec.max() <= 1
    err = m.reconstruction_error(tiny_images(20, 1, 16), batch_size=8, generator=torch.Generator().manual_seed(0))
    assert set(err) >= {"model", "infill", "patch_mean", "metric"}
    assert all(err[k] > 0 for k in ("model", "infill", "patch_mean"))
    # without norm_pix_loss the reference spaces differ: the error is in normalised pixels
    m2 = small_mae(channels=1, size=16, norm_pix_loss=False)
    assert "normalised pixels" in m2.reconstruction_error(tiny_images(4, 1, 16))["metric"]


def test_infill_fills_every_hidden_pixel_from_visible_ones_only():
    x = torch.linspace(0, 1, 16).repeat(16, 1)[None, None].repeat(2, 1, 1, 1)   # a horizontal ramp
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:8] = 1
    out = infill_from_visible(x, mask)
    assert torch.equal(out[mask == 0], x[mask == 0])
    assert (out[mask == 1] > 0).all()                                 # every hidden pixel got a value
    assert (out - x).abs().max() < 0.2                                # and close on a smooth image
    poisoned = x.clone()
    poisoned[mask.bool()] = 1e6                                       # hidden values never leak in
    assert torch.equal(infill_from_visible(poisoned, mask), out)


def test_the_decoder_attention_takes_the_plain_path_on_the_cpu_like_the_encoder():
    """MAE's decoder blocks pick their attention kernel by device as the backbone's do
    (models.plain_attention_on_cpu): after a CPU step every attention layer ran the plain path."""
    mae = small_mae()
    mae({"images": torch.rand(4, 3, 16, 16)})[0].backward()
    layers = [m for m in mae.modules() if hasattr(m, "fused_attn")]
    assert len(layers) == 6 + mae.cfg.decoder_depth and not any(m.fused_attn for m in layers)
