"""DINO: EMA teacher, centre, loss against a naive loop, multi-crop routing, last-layer freezing,
collapse warning, attention maps against timm's own attention, and two gloo processes against one."""
import math
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from selfsup.engine.optim import build_optimizer
from selfsup.errors import SelfSupError
from selfsup.eval.attention import attention_in_mask, attention_pictures, attention_report, cls_attention
from selfsup.methods.base import DataInfo
from selfsup.methods.dino import DINO, Config, dino_loss, teacher_momentum, update_center
from selfsup.models import create_backbone
from selfsup.models.heads import ema_update

from conftest import free_port, tiny_images


class NoBNNet(nn.Module):
    """A small backbone without batch-norm, so per-process statistics cannot differ."""

    def __init__(self, in_chans=1):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed_dim = 16

    def forward(self, x):
        return self.net(x)


def small_cfg(**kw):
    return Config(**{"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, **kw})


def test_ema_update_and_momentum_schedule_follow_their_formulas():
    torch.manual_seed(0)
    s, t = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    s[1].running_mean.fill_(2.0)
    expect = [0.9 * a + 0.1 * b for a, b in zip(t.parameters(), s.parameters())]
    ema_update(t, s, 0.9)
    for got, want in zip(t.parameters(), expect):
        assert torch.allclose(got, want)
    assert torch.equal(t[1].running_mean, s[1].running_mean)   # buffers are copied
    assert teacher_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert teacher_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert teacher_momentum(0.99, 1.0) == pytest.approx(1.0)


def test_center_update_formula():
    c = torch.randn(1, 5)
    t = torch.randn(7, 5)
    want = 0.9 * c + 0.1 * t.mean(0, keepdim=True)
    update_center(c, t, 0.9)
    assert torch.allclose(c, want)


@pytest.mark.parametrize("n_global,n_local", [(2, 0), (2, 3), (1, 2)])
def test_loss_equals_a_naive_loop_over_pairs_of_different_views(n_global, n_local):
    torch.manual_seed(0)
    n, k, ts, tt = 5, 11, 0.1, 0.04
    student = [torch.randn(n, k) for _ in range(n_global + n_local)]
    teacher = [torch.randn(n, k) for _ in range(n_global)]
    center = torch.randn(1, k) * 0.1
    loss, entropy = dino_loss(student, teacher, center, ts, tt)
    terms, ents = [], []
    for i in range(n_global):
        for b in range(n):
            q = torch.softmax((teacher[i][b] - center[0]) / tt, 0)
            ents.append(-(q * q.log()).sum())
            for v in range(n_global + n_local):
                if v != i:
                    terms.append(-(q * torch.log_softmax(student[v][b] / ts, 0)).sum())
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert entropy.item() == pytest.approx(torch.stack(ents).mean().item(), rel=1e-5)


def test_teacher_sees_only_global_crops_and_student_all():
    m = DINO(NoBNNet(), small_cfg(n_local=3), DataInfo(1, 16, [0.5], [0.25]))
    seen = {"teacher": [], "student": []}
    m.teacher_backbone.register_forward_pre_hook(lambda mod, args: seen["teacher"].append(tuple(args[0].shape)))
    m.backbone.register_forward_pre_hook(lambda mod, args: seen["student"].append(tuple(args[0].shape)))
    m({"images": tiny_images(4, 1, 16)})
    assert seen["teacher"] == [(8, 1, 16, 16)]                       # 2 global crops of 4 images, one pass
    assert seen["student"] == [(8, 1, 16, 16), (12, 1, 8, 8)]        # global, then 3 local crops of side 8


def _last_weight(m):
    return m.head.last_layer.weight.detach().clone()   # the weight-normalised weight g v / |v|


def test_last_layer_frozen_early_then_trained_and_gain_fixed():
    torch.manual_seed(0)
    m = DINO(NoBNNet(), small_cfg(freeze_last_layer=0.3), DataInfo(1, 16, [0.5], [0.25]))
    g = m.head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    opt = build_optimizer(m, "adamw", 1e-2, 0.04)
    images = tiny_images(8, 1, 16)

    def step(progress):
        m.progress = progress
        opt.zero_grad(set_to_none=True)
        loss, _ = m({"images": images})
        loss.backward()
        opt.step()
        m.after_step(0, 10)

    before, mlp_before = _last_weight(m), m.head.mlp[0].weight.detach().clone()
    step(0.1)
    assert torch.allclose(_last_weight(m), before, atol=1e-6)     # frozen: the layer's function is unchanged
    assert not torch.equal(m.head.mlp[0].weight, mlp_before)     # the rest of the head trains
    step(0.5)
    assert not torch.allclose(_last_weight(m), before, atol=1e-4)
    assert torch.all(g == 1) and torch.all(m.teacher_head.last_layer.parametrizations.weight.original0 == 1)


def test_collapse_warning_fires_once_on_uniform_outputs():
    # huge temperatures make both softmaxes uniform: the loss is ln K, the uniform-collapse signature
    m = DINO(NoBNNet(), small_cfg(student_temp=1e4, teacher_temp=1e4, warmup_teacher_temp=1e4),
             DataInfo(1, 16, [0.5], [0.25]))
    m.progress = 0.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            loss, logs = m({"images": tiny_images(4, 1, 16)})
    assert loss.item() == pytest.approx(math.log(64), rel=1e-4)
    assert logs["teacher_entropy"].item() == pytest.approx(math.log(64), rel=1e-4) and abs(logs["kl"].item()) < 1e-4
    hits = [w for w in caught if "collapsed" in str(w.message)]
    assert len(hits) == 1 and "uniform" in str(hits[0].message)
    for entropy, kl, fires in [(0.01, 0.01, True), (2.0, 0.01, False), (4.1, 1.0, False)]:   # ln 64 = 4.16
        m2 = DINO(NoBNNet(), small_cfg(), DataInfo(1, 16, [0.5], [0.25]))
        m2.progress = 0.5
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m2._check_collapse(torch.tensor(entropy), torch.tensor(kl))
        assert any("one prototype" in str(w.message) for w in caught) == (fires and entropy < 1), (entropy, kl)
        assert len(caught) == int(fires)


def test_bad_options_are_one_line_errors():
    for kw in [dict(n_global=1, n_local=0), dict(teacher_temp=0.0), dict(center_momentum=1.0), dict(n_local=2, local_crop_min=0.5)]:
        with pytest.raises(SelfSupError, match="--set"):
            DINO(NoBNNet(), small_cfg(**kw), DataInfo(1, 16, [0.5], [0.25]))


@pytest.mark.parametrize("name,channels,size,n_local", [("resnet18_quarter", 1, 28, 0), ("resnet18_quarter", 1, 28, 2),
                                                        ("vit_micro", 3, 32, 2)])
def test_one_step_through_the_class(name, channels, size, n_local):
    torch.manual_seed(0)
    info = DataInfo(channels, size, [0.5] * channels, [0.25] * channels)
    m = DINO(create_backbone(name, in_chans=channels, img_size=size), Config(n_local=n_local), info)
    teacher_before = [p.detach().clone() for p in m.teacher_backbone.parameters()]
    loss, logs = m({"images": tiny_images(8, channels, size)})
    assert torch.isfinite(loss) and set(logs) >= {"teacher_entropy", "kl"}
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    assert all(p.grad is None and not p.requires_grad for p in [*m.teacher_backbone.parameters(), *m.teacher_head.parameters()])
    assert m.center.abs().sum() > 0
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.01)
    m.after_step(0, 10)
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, m.teacher_backbone.parameters()))
    pics = m.pictures({"images": tiny_images(8, channels, size)})
    assert pics["views"].images.shape == (8 * (2 + n_local), channels, size, size)
    if name.startswith("vit"):   # input row, 4 heads, the overlay
        att = pics["attention"]
        assert att.images.shape == (8 * 6, channels, size, size) and len(att.rows) == 6
        assert 0 <= att.images.min() and att.images.max() <= 1


def test_cls_attention_equals_timm_attention():
    torch.manual_seed(0)
    vit = create_backbone("vit_micro", in_chans=3, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    last = vit.vit.blocks[-1].attn
    last.fused_attn = False   # timm's explicit path, whose softmaxed attention goes through attn_drop
    seen = []
    last.attn_drop.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    with torch.no_grad():
        vit(x)
    want = seen[0][:, :, 0, 1:].reshape(2, 4, 8, 8)
    got = cls_attention(vit, x)
    assert got.shape == (2, 4, 8, 8)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum((-2, -1)), 1 - seen[0][:, :, 0, 0])   # the rest of the mass is on CLS itself
    assert cls_attention(vit, x[:, :, :16, :16]).shape == (2, 4, 4, 4)   # other sizes (local crops) work


def test_attention_in_mask_on_synthetic_cases():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True          # a quarter, aligned with the 2x2-pixel patches of a 4x4 grid
    masks[1, :3, :3] = True          # 9/64, cutting through patches
    inside = torch.zeros(2, 3, 4, 4)
    inside[0, :, :2, :2] = 0.2
    inside[1, :, 0, 0] = 0.5         # patch (0, 0) lies wholly inside the second mask
    r = attention_in_mask(inside, masks)
    assert r["in_mask"] == pytest.approx(1.0) and r["best_head"] == pytest.approx(1.0)
    uniform = attention_in_mask(torch.ones(2, 3, 4, 4), masks)
    assert uniform["in_mask"] == pytest.approx((0.25 + 9 / 64) / 2) == uniform["area_share"]
    assert uniform["lift"] == pytest.approx(1.0) and len(uniform["per_head"]) == 3
    partial = torch.zeros(2, 1, 4, 4)
    partial[:, 0, 1, 1] = 1.0        # patch (1, 1): all of it in mask 0, a quarter of it in mask 1
    assert attention_in_mask(partial, masks)["in_mask"] == pytest.approx((1.0 + 0.25) / 2)


def test_attention_report_and_pictures_run_on_shapes():
    from selfsup.data.shapes import generate_shapes
    data = generate_shapes(16, size=32)
    vit = create_backbone("vit_micro", in_chans=3, img_size=32)
    mean, std = data.mean_std()
    r = attention_report(vit, data.images, data.masks, mean, std)
    assert 0 < r["area_share"] < 1 and 0 <= r["in_mask"] <= 1 and len(r["per_head"]) == 4
    pics = attention_pictures(vit, data.images[:8], mean, std)
    assert pics.shape == (8 * 6, 3, 32, 32)
    with pytest.raises(SelfSupError, match="ViT"):
        cls_attention(NoBNNet(3), torch.zeros(1, 3, 8, 8))


# ----------------------------------------------------------------------------- two processes

def make_method():
    torch.manual_seed(0)
    m = DINO(NoBNNet(), small_cfg(n_local=1, head_bn=False), DataInfo(1, 8, [0.5], [0.25]))

    def views(images):   # fixed views: identity and flip (global), the 2x-pooled image (local)
        x = (images.float() / 255 - 0.5) / 0.25
        return [x, x.flip(-1), nn.functional.avg_pool2d(x, 2)]
    m.views = views
    return m


def batch(n=8, step=0):
    g = torch.Generator().manual_seed(1 + step)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)


def run_steps(model, method, take, steps=2):
    """Two SGD steps; the second uses the centre the first one left. Returns the state after them."""
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    for s in range(steps):
        method.progress = 0.25 * s
        opt.zero_grad()
        loss, _ = model({"images": take(batch(step=s))})
        loss.backward()
        opt.step()
        method.after_step(s, steps)
    return {"center": method.center.clone(),
            **{f"teacher.{k}": v.clone() for k, v in [*method.teacher_backbone.state_dict().items(),
                                                      *method.teacher_head.state_dict().items()]}}


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        method = make_method()
        model = nn.parallel.DistributedDataParallel(method)
        state = run_steps(model, method, lambda images: images[rank::world])
        torch.save(state, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()



@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_hold_the_teacher_and_centre_of_one_with_doubled_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in range(2))
    method = make_method()
    single = run_steps(method, method, lambda images: images)
    assert single["center"].abs().sum() > 0
    for k in single:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.allclose(r0[k], single[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.slow
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_saved_backbone_is_the_teacher_unless_asked(tmp_path, which):
    """The paper evaluates the EMA teacher: backbone.safetensors and, for an interrupted run, the
    checkpoint both give it (``eval_backbone=student`` gives the student)."""
    import selfsup
    from selfsup.app.train import load_method
    from selfsup.runs import load_backbone
    run = tmp_path / "run"
    selfsup.train("dino", data=tiny_images(64, 1, 16), out=run, backbone="resnet18_quarter", epochs=1, batch_size=32,
                  progress=False, eval_backbone=which, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    method = load_method(run)
    want, other = method.teacher_backbone.state_dict(), method.backbone.state_dict()
    if which == "student":
        want, other = other, want
    saved = load_backbone(run).backbone.state_dict()
    (run / "backbone.safetensors").unlink()
    from_ckpt = load_backbone(run).backbone.state_dict()
    for got in (saved, from_ckpt):
        assert all(torch.equal(v, want[k]) for k, v in got.items())
        assert not all(torch.equal(v, other[k]) for k, v in got.items())


def test_the_chosen_head_is_picked_on_other_images_and_scored_on_these():
    # head 1 leads on the choosing images, head 0 on the scored ones: the chosen head is 1, scored where it stands
    scored = {"per_head": [0.6, 0.3], "area_share": 0.2, "in_mask": 0.45, "best_head": 0.6}
    choice = {"per_head": [0.1, 0.5], "area_share": 0.25, "in_mask": 0.3, "best_head": 0.5}
    from selfsup.eval.attention import with_head_chosen
    r = with_head_chosen(scored, choice)
    assert r["chosen_head"] == 1 and r["chosen_head_in_mask"] == pytest.approx(0.3)
    assert r["chosen_head_lift"] == pytest.approx(1.5) and r["best_head"] == 0.6   # best_head: still the scored max


def test_learning_rate_default_follows_the_backbone_family_and_yields_to_the_user():
    from selfsup.app.train import resolve_config, run_configs
    from selfsup.config import to_dict
    conv, _ = resolve_config("dino", {})
    vit, vcfg = resolve_config("dino", {"backbone": "vit_micro"})
    assert (conv.backbone, conv.lr) == ("resnet18_quarter", 4e-3)     # chosen on validation (tune-dino-fashion-mnist)
    assert vit.lr == 1e-3                                             # the ViTs' attention recipe
    assert resolve_config("dino", {"backbone": "vit_micro", "lr": 2e-3})[0].lr == 2e-3   # the user's setting wins
    assert resolve_config("dino", {"lr": 1e-3})[0].lr == 1e-3
    # a saved run is rebuilt with the rate it trained at, whatever the defaults
    saved = {**to_dict(vit), "lr": 5e-4, "method_config": to_dict(vcfg)}
    assert run_configs(saved)[0].lr == 5e-4
    # other methods have no family defaults: the same rate on either family
    assert resolve_config("simclr", {"backbone": "vit_micro"})[0].lr == resolve_config("simclr", {})[0].lr
