"""Every registered backbone: shapes, any channel count, small-image stem, export round trip."""
import pytest
import torch

from selfsup.runs import read_backbone, save_backbone
from selfsup.errors import SelfSupError
from selfsup.models import BACKBONES, Encoder, create_backbone

LIGHT = [n for n in BACKBONES if n in ("resnet18_quarter", "vit_micro")]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_contract(name):
    torch.manual_seed(0)
    side = 32 if name.endswith("_p8") else 28   # Fashion-MNIST's 28 px is no multiple of 8
    m = create_backbone(name, in_chans=1, img_size=side).eval()
    x = torch.randn(2, 1, side, side)
    with torch.no_grad():
        pooled, feats = m(x), m.forward_features(x)
    assert pooled.shape == (2, m.embed_dim)
    assert feats.shape[0] == 2 and feats.shape[1 if feats.dim() == 4 else 2] == m.embed_dim


@pytest.mark.parametrize("name", LIGHT)
@pytest.mark.parametrize("chans", [1, 3, 4])
def test_any_number_of_input_channels(name, chans):
    m = create_backbone(name, in_chans=chans, img_size=32)
    assert m(torch.randn(2, chans, 32, 32)).shape == (2, m.embed_dim)


def test_resnet_small_image_stem_keeps_resolution():
    m = create_backbone("resnet18_quarter", in_chans=3)
    assert m.forward_features(torch.randn(1, 3, 32, 32), stage=1).shape[-1] == 32  # stride-1 stem, no max-pool
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4
    assert m.embed_dim == 128 and sum(p.numel() for p in m.parameters()) < 1e6


def test_vit_patch8_has_a_quarter_of_the_tokens_and_refuses_a_side_it_cannot_tile():
    m = create_backbone("vit_micro_p8", in_chans=3, img_size=32)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[1] == 1 + 16
    assert m.forward_features(torch.randn(1, 3, 16, 16)).shape[1] == 1 + 4   # a 16-px local crop
    with pytest.raises(SelfSupError, match="multiple of 8; got 28"):
        create_backbone("vit_micro_p8", in_chans=1, img_size=28)


def test_vit_patch4_tokens_and_other_crop_sizes():
    m = create_backbone("vit_micro", in_chans=3, img_size=32)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[1] == 1 + 64
    assert m.forward_features(torch.randn(1, 3, 16, 16)).shape[1] == 1 + 16  # local crops (multi-crop)


def test_unknown_backbone_is_one_line_error():
    with pytest.raises(SelfSupError, match="unknown backbone 'vgg'|--backbone vgg"):
        create_backbone("vgg")


def test_safetensors_export_round_trip(tmp_path):
    m = create_backbone("resnet18_quarter", in_chans=1, img_size=28)
    meta = {"backbone": "resnet18_quarter", "in_chans": 1, "img_size": 28, "mean": [0.3], "std": [0.3]}
    save_backbone(m, meta, tmp_path / "b.safetensors")
    state, meta2 = read_backbone(tmp_path / "b.safetensors")
    assert meta2 == meta and all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(SelfSupError, match="bad.safetensors"):
        read_backbone(tmp_path / "bad.safetensors")


def test_encoder_normalises_uint8_and_float_alike():
    enc = Encoder(create_backbone("resnet18_quarter", in_chans=1), [0.5], [0.2]).eval()
    x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(enc(x), enc(x.float() / 255), atol=1e-5)


def _fused_everywhere(module):
    """Every timm attention layer of ``module`` back on torch's fused kernel, hook removed."""
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m._forward_pre_hooks.clear()
            m.fused_attn = True


def test_vit_attention_takes_the_plain_path_on_the_cpu_with_the_fused_kernels_arithmetic():
    """On the CPU every attention layer of a ViT, of MAE's decoder and of CLIP's text encoder runs
    timm's plain matmul-softmax path (faster there than torch's fused kernel at our token counts);
    outputs and gradients equal the fused kernel's within fp32 rounding."""
    from selfsup.models.text import TextTransformer
    torch.manual_seed(0)
    vit = create_backbone("vit_micro", in_chans=1, img_size=28)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    plain = vit(x)
    attn = [m for m in vit.modules() if hasattr(m, "fused_attn")]
    assert len(attn) == 6 and not any(m.fused_attn for m in attn)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), x)
    _fused_everywhere(vit)              # the fused kernel, as off the CPU
    fused = vit(x)
    (g_fused,) = torch.autograd.grad(fused.square().sum(), x)
    assert torch.allclose(plain, fused, atol=1e-5) and torch.allclose(g_plain, g_fused, atol=1e-4, rtol=1e-4)
    assert not torch.equal(plain, create_backbone("vit_micro", in_chans=1, img_size=28)(x))   # not a constant
    text = TextTransformer(vocab_size=50, context_length=8, eot_id=49, width=32, depth=2, heads=4)
    ids = torch.randint(0, 49, (2, 8))
    ids[:, -1] = 49
    causal = text(ids)
    assert not any(m.fused_attn for m in text.modules() if hasattr(m, "fused_attn"))
    _fused_everywhere(text)
    assert torch.allclose(causal, text(ids), atol=1e-5)       # the causal mask holds on the plain path too
