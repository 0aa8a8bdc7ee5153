"""CLIP: the loss against a naive loop, the logit-scale clamp, the tokenizer, zero-shot and
retrieval on hand-made embeddings with known answers, caption files with bad rows, two gloo
processes against one with the doubled batch, and a tiny end-to-end run through the CLI."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

import selfsup
from selfsup.cli import main as cli_main
from selfsup.data.datasets import load_dataset
from selfsup.errors import SelfSupError
from selfsup.app.zeroshot import class_embeddings, recall_at, zeroshot_predict
from selfsup.methods.base import DataInfo
from selfsup.methods.clip import CLIP, Config, clip_loss
from selfsup.models import create_backbone
from selfsup.models.text import BPETokenizer

from conftest import free_port, tiny_images

CAPTIONS = [f"a {s} {c} {t}" for s in ("small", "large") for c in ("red", "blue", "green") for t in ("arrow", "tree", "cup")]


def naive_loss(img, txt, scale):
    n = len(img)
    logits = scale * img @ txt.T
    terms = []
    for i in range(n):
        terms.append(-torch.log_softmax(logits[i], 0)[i])          # image i against every caption
        terms.append(-torch.log_softmax(logits[:, i], 0)[i])       # caption i against every image
    return torch.stack(terms).sum() / (2 * n)


@pytest.mark.parametrize("local", [False, True])
def test_loss_equals_a_naive_loop(local):
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(6, 8), dim=1)
    loss, acc = clip_loss(img, txt, torch.tensor(14.0), local)
    assert torch.allclose(loss, naive_loss(img, txt, 14.0), atol=1e-5)
    same, _ = clip_loss(img, img, torch.tensor(50.0), local)          # perfect pairs, sharp scale: small loss
    assert float(same) < 0.05 and 0 <= float(acc) <= 1


def small_clip(channels=3, **kw):
    torch.manual_seed(0)
    cfg = Config(**{"embed_dim": 16, "text_width": 32, "text_depth": 1, "text_heads": 4, "vocab_size": 300,
                    "context_length": 12, **kw})
    m = CLIP(create_backbone("resnet18_quarter", in_chans=channels), cfg, DataInfo(channels, 16, [0.5] * channels, [0.25] * channels))
    m.prepare_text(CAPTIONS)
    return m


def test_logit_scale_starts_at_1_over_007_and_is_clamped_after_each_step():
    m = small_clip()
    assert math.isclose(float(m.logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(9.0)
    m.after_step(0, 10)
    assert math.isclose(float(m.logit_scale.detach().exp()), 100.0, rel_tol=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(-3.0)
    m.after_step(1, 10)
    assert float(m.logit_scale.detach()) == 0.0
    loss, logs = m({"images": tiny_images(6, 3, 16), "captions": CAPTIONS[:6]})
    loss.backward()
    assert m.logit_scale.grad is not None and torch.isfinite(loss)


def test_tokenizer_round_trip_padding_and_truncation():
    tok = BPETokenizer.train(CAPTIONS * 3 + ["Ünïcode café ✓"], vocab_size=300, context_length=20)
    ids = tok.encode(["a small red arrow", "ünïcode café ✓", "a " * 40])
    assert ids.shape == (3, 20) and ids.dtype == torch.long
    assert (ids[:, 0] == tok.sot_id).all()
    for row in ids:
        eot = int((row == tok.eot_id).nonzero()[0])
        assert (row[eot + 1:] == tok.pad_id).all()                    # padding after <eot> only
    assert int((ids[2] == tok.eot_id).nonzero()[0]) == 19              # cut to fit, <eot> kept last
    assert tok.decode(ids[:2]) == ["a small red arrow", "ünïcode café ✓"]
    again = BPETokenizer.from_json(tok.to_json(), 20)
    assert torch.equal(again.encode(["a large blue tree"]), tok.encode(["a large blue tree"]))
    with pytest.raises(SelfSupError, match="captions"):
        BPETokenizer.train(["", "  "])


class FakeClip:
    """Embeddings made by hand: images and prompts are unit vectors along known axes."""

    def __init__(self, image_axes, prompt_vectors):
        self.image_axes, self.prompt_vectors = image_axes, prompt_vectors

    def embed_images(self, images):
        return F.one_hot(torch.tensor(self.image_axes), 4).float()

    def embed_texts(self, prompts):
        return torch.stack([self.prompt_vectors[p] for p in prompts])


def test_zeroshot_on_hand_made_embeddings_with_a_known_answer():
    e = torch.eye(4)
    # "cat": prompts along axes 0 and 1. "dog": one along axis 2 and one 50 long along 0.8 e0 + 0.6 e3.
    # Normalising each prompt before averaging, an image on axis 0 is a cat (0.707 against 0.566);
    # averaging raw embeddings would make the long prompt win it for "dog" (0.8).
    prompts = {"a cat.": e[0], "the cat!": e[1], "a dog.": e[2], "the dog!": 50 * (0.8 * e[0] + 0.6 * e[3])}
    fake = FakeClip([0, 1, 2, 3], prompts)
    w = class_embeddings(fake, ["cat", "dog"], ["a {}.", "the {}!"])
    assert torch.allclose(w.norm(dim=1), torch.ones(2))
    assert torch.allclose(w[0], F.normalize(e[0] + e[1], dim=0))
    pred = zeroshot_predict(fake, torch.zeros(4, 1, 2, 2), ["cat", "dog"], ["a {}.", "the {}!"])
    assert pred.tolist() == [0, 0, 1, 1]
    with pytest.raises(SelfSupError, match="must contain"):
        class_embeddings(fake, ["cat"], ["no placeholder"])


def test_recall_at_k_on_a_known_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.2, 0.3, 0.1]])
    correct = torch.eye(3, dtype=torch.bool)
    r = recall_at(sim, correct, ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})


def _png(path, colour=(200, 30, 30)):
    Image.fromarray(np.full((20, 20, 3), colour, dtype=np.uint8)).save(path)


def test_caption_files_skip_bad_rows_with_a_count_and_refuse_unusable_ones(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    for i in range(6):
        _png(tmp_path / "img" / f"{i}.png", (40 * i, 20, 200))
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    rows = [("img/0.png", "a red one"), ("img/1.png", "a blue one"), ("img/missing.png", "gone"), ("img/broken.png", "bad"),
            ("img/2.png", ""), ("img/3.png", "three"), ("img/4.png", "four"), ("img/5.png", "five")]
    (tmp_path / "pairs.csv").write_text("file,text\n" + "".join(f"{a},{b}\n" for a, b in rows))
    with caplog.at_level("WARNING", logger="selfsup"):
        ds = load_dataset(f"{tmp_path / 'pairs.csv'}:image=file,caption=text,size=16,test_fraction=0.2")
    assert ds.info["skipped"] == 3 and len(ds.train) + len(ds.test) == 5
    assert "skipped 3 of 8 rows" in caplog.text and "missing.png" in caplog.text
    assert sorted(ds.train.captions + ds.test.captions) == sorted(["a red one", "a blue one", "three", "four", "five"])
    with (tmp_path / "pairs.jsonl").open("w") as f:
        for i, (a, b) in enumerate(rows[:2] + rows[5:]):
            f.write(json.dumps({"image": a, "caption": b, "split": "test" if i == 0 else "train"}) + "\n")
    ds = load_dataset(f"{tmp_path / 'pairs.jsonl'}:split=split,size=16")
    assert ds.test.captions == ["a red one"] and len(ds.train) == 4
    with pytest.raises(SelfSupError, match="no column 'image'.*columns: file, text"):
        load_dataset(str(tmp_path / "pairs.csv"))
    (tmp_path / "none.csv").write_text("image,caption\nimg/missing.png,x\nimg/0.png,\n")
    with pytest.raises(SelfSupError, match="none of its 2 rows is usable"):
        load_dataset(str(tmp_path / "none.csv"))


def test_non_utf8_captions_are_read_with_replacement(tmp_path, caplog):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "p.csv").write_bytes(b"image,caption\na.png,caf\xe9 au lait\nb.png,plain\n")
    with caplog.at_level("WARNING", logger="selfsup"):
        ds = load_dataset(f"{tmp_path / 'p.csv'}:test_fraction=0,size=16")
    assert "caf\ufffd au lait" in ds.train.captions and "not valid UTF-8" in caplog.text


@pytest.mark.slow
def test_clip_refuses_data_without_captions(tmp_path):
    with pytest.raises(SelfSupError, match="image-caption data"):
        selfsup.train("clip", data=tiny_images(32, 3, 16), epochs=1, batch_size=16, progress=False)


@pytest.mark.slow
def test_end_to_end_train_zeroshot_and_retrieval(tmp_path, capsys):
    run = tmp_path / "clip"
    data = "shapes:n=96,n_test=40,size=16,colors=free"
    assert cli_main(["train", "clip", "--data", data, "--out", str(run), "--epochs", "1", "--batch-size", "32",
                     "--no-progress", "--set", "text_depth=1", "--set", "vocab_size=300"]) == 0
    tok = json.loads((run / "tokenizer.json").read_text())
    assert "<eot>" in tok["model"]["vocab"]
    from selfsup.app.train import load_method
    method = load_method(run)
    assert method.tokenizer.to_json() == (run / "tokenizer.json").read_text()   # restored with the checkpoint
    assert cli_main(["eval", "zeroshot", "--checkpoint", str(run), "--template", "a {}", "--template", "a photo of a {}."]) == 0
    out = capsys.readouterr().out
    assert "zeroshot accuracy" in out and "chance 0.1000" in out
    res = json.loads((run / "eval" / "zeroshot.json").read_text())
    assert len(res["confusion"]) == 10 and sum(map(sum, res["confusion"])) == 40
    assert cli_main(["eval", "retrieval", "--checkpoint", str(run)]) == 0
    res = json.loads((run / "eval" / "retrieval.json").read_text())
    assert set(res["image_to_text"]) == {"R@1", "R@5", "R@10"} and res["n_test"] == 40
    simclr = tmp_path / "simclr"
    selfsup.train("simclr", data=data, out=simclr, epochs=1, batch_size=32, progress=False)
    assert cli_main(["eval", "zeroshot", "--checkpoint", str(simclr)]) == 2
    assert "text tower" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two processes

def _fixed(n, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, 8, generator=g), dim=1), F.normalize(torch.randn(n, 8, generator=g), dim=1)


def _worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        for local in (False, True):
            img, txt = _fixed(8, 0)
            img, txt = img[rank * 4:(rank + 1) * 4].clone().requires_grad_(), txt[rank * 4:(rank + 1) * 4].clone().requires_grad_()
            loss, _ = clip_loss(img, txt, torch.tensor(10.0), local)
            loss.backward()
            # DDP averages the parameter gradients these feed: the per-process share is grad / world
            out[local] = {"loss": loss.detach(), "grad": torch.cat([img.grad, txt.grad], 1) / world}
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()



@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_give_the_single_process_loss_and_gradient(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    img, txt = _fixed(8, 0)
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    single = naive_loss(img, txt, 10.0)
    single.backward()
    for local in (False, True):
        assert torch.allclose((r[0][local]["loss"] + r[1][local]["loss"]) / 2, single, atol=1e-5), local
        for rank in range(2):
            mine = torch.cat([img.grad, txt.grad], 1)[rank * 4:(rank + 1) * 4]
            assert torch.allclose(r[rank][local]["grad"], mine, atol=1e-5), (local, rank)
