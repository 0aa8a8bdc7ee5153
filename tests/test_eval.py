"""Evaluation: kNN against a naive vote, the linear probe, frozen features, label fractions, baselines."""
import math

import pytest
import torch

from selfsup.data.datasets import DatasetSplits, ImageSet, label_subset
from selfsup.errors import SelfSupError
from selfsup.app.evaluate import evaluate
from selfsup.eval.features import extract
from selfsup.eval.knn import knn_predict
from selfsup.eval.linear import linear_probe
from selfsup.models import Encoder, create_backbone

from conftest import tiny_images


def naive_knn(bank, labels, q, k, t, c):
    out = []
    for x in q:
        sims = [float(torch.nn.functional.cosine_similarity(x, b, dim=0)) for b in bank]
        top = sorted(range(len(bank)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * c
        for i in top:
            votes[int(labels[i])] += math.exp(sims[i] / t)
        out.append(max(range(c), key=lambda j: votes[j]))
    return torch.tensor(out)


@pytest.mark.parametrize("k,t", [(1, 0.1), (5, 0.07), (20, 0.5)])
def test_knn_matches_naive_weighted_vote(k, t):
    g = torch.Generator().manual_seed(k)
    bank, q = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(15, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (40,), generator=g)
    assert torch.equal(knn_predict(bank, labels, q, k, t, 4, chunk=4), naive_knn(bank, labels, q, k, t, 4))


def test_linear_probe_separates_linearly_separable_data_and_picks_wd_on_val():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    res = linear_probe(x[:500], y[:500], x[500:], y[500:])
    assert res["accuracy"] > 0.95
    assert res["weight_decay"] in res["val_accuracy"]
    # labels independent of x: the probe cannot beat chance by much
    y_rand = torch.randint(0, 2, (600,), generator=g)
    assert linear_probe(x[:500], y_rand[:500], x[500:], y_rand[500:])["accuracy"] < 0.65


def test_features_are_frozen_in_eval_mode():
    """Batch-norm running statistics must not move during feature extraction (lightly#1440)."""
    enc = Encoder(create_backbone("resnet18_quarter", in_chans=1, img_size=16), [0.5], [0.25])
    enc.train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    f1 = extract(enc, tiny_images(20, 1, 16), batch_size=7)
    f2 = extract(enc, tiny_images(20, 1, 16), batch_size=20)
    assert enc.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert torch.allclose(f1, f2, atol=1e-5)  # batch composition does not matter in eval mode


def test_label_subset_is_stratified_and_seeded():
    labels = torch.arange(1000) % 10
    s = ImageSet(torch.zeros(1000, 1, 2, 2, dtype=torch.uint8), labels)
    sub = label_subset(s, 0.01, seed=3)
    assert len(sub) == 10 and sorted(sub.labels.tolist()) == list(range(10))
    assert torch.equal(label_subset(s, 0.1, 3).labels, label_subset(s, 0.1, 3).labels)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(SelfSupError, match="label-fraction"):
            label_subset(s, bad, 0)


def _toy_splits():
    imgs = tiny_images(200, 1, 16, seed=1)
    labels = (imgs.float().mean(dim=(1, 2, 3)) > imgs.float().mean()).long()  # brightness classes
    return DatasetSplits("toy", ImageSet(imgs[:150], labels[:150]), ImageSet(imgs[150:], labels[150:]))


@pytest.mark.slow
def test_baselines_run_through_the_same_code_and_record_settings(tmp_path):
    data = _toy_splits()
    pix = evaluate(["knn", "linear"], baseline="pixels", data=data, k=10, out=tmp_path)
    rnd = evaluate(["knn"], baseline="random", backbone="resnet18_quarter", data=data, k=10, label_fraction=0.5)
    assert pix["knn"]["accuracy"] > 0.6 and pix["linear"]["accuracy"] > 0.6
    assert pix["knn"]["k"] == 10 and pix["knn"]["temperature"] == 0.1 and pix["knn"]["baseline"] == "pixels"
    assert abs(rnd["knn"]["n_train"] - 75) <= 1 and rnd["knn"]["backbone"] == "resnet18_quarter"
    assert (tmp_path / "knn.json").is_file() and (tmp_path / "linear.json").is_file()
    assert "provenance" in pix["knn"] and pix["knn"]["feature_dim"] == 256


@pytest.mark.slow
def test_validation_split_never_touches_test():
    data = _toy_splits()
    res = evaluate("knn", baseline="pixels", data=data, k=5, on="val")["knn"]
    assert res["n_test"] == 25 and res["n_train"] == 125 and res["split"] == "val"


@pytest.mark.slow
def test_evaluate_errors_are_one_line():
    data = _toy_splits()
    with pytest.raises(SelfSupError, match="either --checkpoint"):
        evaluate("knn", data=data)
    with pytest.raises(SelfSupError, match="no such run folder"):
        evaluate("knn", checkpoint="/nonexistent/run", data=data)
    with pytest.raises(SelfSupError, match="unknown evaluation"):
        evaluate("svm", baseline="pixels", data=data)
    unlabeled = DatasetSplits("u", ImageSet(tiny_images(10, 1, 8)))
    with pytest.raises(SelfSupError, match="has no labels"):
        evaluate("knn", baseline="pixels", data=unlabeled)


def test_grid_pooling_keeps_a_spatial_grid_within_the_dimension_budget():
    from selfsup.eval.features import GRID_DIMS, pool_map
    f = torch.randn(2, 8, 32, 32)
    g = pool_map(f, "grid")
    assert g.shape == (2, 8 * 8 * 8) and g.shape[1] <= GRID_DIMS
    assert torch.allclose(g.view(2, 8, 64).mean(2), pool_map(f, "avg"), atol=1e-5)  # 8 equal cells per side
    assert pool_map(torch.randn(2, 16, 28, 28), "grid").shape == (2, 16 * 5 * 5)
    assert pool_map(torch.randn(2, 512, 4, 4), "grid").shape == (2, 512)      # never fewer than 1x1
    with pytest.raises(SelfSupError, match="--pool"):
        pool_map(f, "max")


def _splits_with(test_labels):
    imgs = torch.cat([tiny_images(40, 1, 16, seed=1), 255 - tiny_images(40, 1, 16, seed=2)])
    labels = torch.arange(80) // 40
    return DatasetSplits("toy", ImageSet(imgs, labels, classes=["a", "b"]),
                         ImageSet(imgs[::4].clone(), test_labels, classes=["a", "b"]))


@pytest.mark.slow
def test_layer_auto_chooses_on_train_labels_only_and_records_the_choice():
    true = (torch.arange(80) // 40)[::4]
    r1 = evaluate(["knn"], data=_splits_with(true), baseline="random", backbone="resnet18_quarter", k=5, layer="auto")
    r2 = evaluate(["knn"], data=_splits_with(1 - true), baseline="random", backbone="resnet18_quarter", k=5, layer="auto")
    sel = r1["knn"]["layer_selection"]
    assert set(sel) == {"1/grid", "2/grid", "3/grid", "final/default"}
    assert r1["knn"]["layer_selection"] == r2["knn"]["layer_selection"]      # the test labels play no part
    assert r1["knn"]["layer"] == r2["knn"]["layer"]
    assert abs(r1["knn"]["accuracy"] + r2["knn"]["accuracy"] - 1) < 1e-6     # two classes: flipped labels, flipped score
    best = max(sel.values())
    chosen = f"{r1['knn']['layer'] or 'final'}/{r1['knn']['pool'] or 'default'}"
    assert sel[chosen] == best
    with pytest.raises(SelfSupError, match="--layer"):
        evaluate(["knn"], data=_splits_with(true), baseline="pixels", layer="auto")
    with pytest.raises(SelfSupError, match="--layer"):
        evaluate(["knn"], data=_splits_with(true), baseline="random", layer=0)


def test_several_stages_are_concatenated_and_named(tmp_path):
    """--layer 2,3: each stage's features (pooled alike) side by side, the result file and JSON
    naming every stage; a repeated stage or a stage 0 is refused."""
    data = _splits_with((torch.arange(80) // 40)[::4])
    kw = dict(data=data, baseline="random", backbone="resnet18_quarter", k=5)
    r = evaluate(["knn", "linear"], layer=(2, 3), pool="grid", out=tmp_path / "res", **kw)
    enc = Encoder(create_backbone("resnet18_quarter", in_chans=1, img_size=16), [0.5], [0.25])
    dims = [extract(enc, data.test.images, layer=x, pool="grid").shape[1] for x in (2, 3)]
    assert r["knn"]["feature_dim"] == sum(dims) and r["knn"]["layer"] == [2, 3]
    assert (tmp_path / "res" / "linear_layer2+3.json").is_file() and (tmp_path / "res" / "knn_layer2+3.json").is_file()
    one = evaluate(["knn"], layer=3, pool="grid", **kw)["knn"]      # the same seed: the same random network
    assert one["feature_dim"] == dims[1] and one["layer"] == 3
    with pytest.raises(SelfSupError, match="two or more different stages"):
        evaluate(["knn"], layer=(2, 2), **kw)
    with pytest.raises(SelfSupError, match="--layer"):
        evaluate(["knn"], layer=(2, 0), **kw)


@pytest.mark.parametrize("name", ["resnet18_quarter", "vit_micro"])
def test_one_pass_extraction_matches_stage_by_stage_extraction(name):
    from selfsup.eval.features import candidates, extract_many
    enc = Encoder(create_backbone(name, in_chans=1, img_size=16), [0.5], [0.25])
    images = tiny_images(10, 1, 16)
    many = extract_many(enc, images, candidates(enc), batch_size=4)
    assert len(many) == (4 if name.startswith("resnet") else 6)
    for (layer, pool), f in many.items():
        assert torch.allclose(f, extract(enc, images, batch_size=4, layer=layer, pool=pool), atol=1e-5), (layer, pool)


def test_one_topk_search_gives_every_k_the_naive_vote():
    from selfsup.eval.knn import knn_predict_many
    g = torch.Generator().manual_seed(3)
    bank, q = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(9, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (50,), generator=g)
    many = knn_predict_many(bank, labels, q, [1, 5, 20], 0.1, 3, chunk=4)
    for k in (1, 5, 20):
        assert torch.equal(many[k], naive_knn(bank, labels, q, k, 0.1, 3))


def _small_bank_where_k200_is_wrong():
    """Class 0: 300 points spread around one direction; class 1: 30 points in a tight cluster whose
    queries see the class-0 points at cosine ~0.85 and their own at ~0.99. With k=200 the 170 class-0
    neighbours outvote the 30 class-1 ones (170 e^8.5 > 30 e^9.9); with k <= 30 class 1 wins."""
    g = torch.Generator().manual_seed(0)
    d = 16
    e0, e1 = torch.zeros(d), torch.zeros(d)
    e0[0], e1[1] = 1.0, 1.0
    spread = torch.randn(300, d, generator=g)
    spread[:, :2] = 0
    class0 = 0.85 * e1 + 0.45 * e0 + 0.27 * torch.nn.functional.normalize(spread, dim=1)
    class1 = e1 + 0.05 * torch.randn(36, d, generator=g)
    x = torch.cat([class0, class1[:30]])
    y = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(30, dtype=torch.long)])
    return x, y, class1[30:]


def test_k_is_chosen_on_a_held_out_sixth_of_the_bank_and_k200_is_not_taken_when_wrong():
    from selfsup.eval.knn import choose_k, knn_accuracy
    x, y, queries1 = _small_bank_where_k200_is_wrong()
    ones = torch.ones(len(queries1), dtype=torch.long)
    assert knn_accuracy(x, y, queries1, ones, k=200) < 0.5        # the fixed default misses class 1 entirely
    assert knn_accuracy(x, y, queries1, ones, k=10) == 1.0
    k, scores = choose_k(x, y, temperature=0.1, seed=0)
    assert k <= 20 and set(scores) == {"5", "10", "20", "50", "100", "200"}
    assert scores[str(k)] > scores["200"]


def test_evaluate_records_the_chosen_k_and_every_candidate(tmp_path):
    res = evaluate("knn", baseline="pixels", data=_toy_splits(), out=tmp_path)["knn"]
    assert res["k"] == int(max(res["k_search"], key=lambda c: (res["k_search"][c], -int(c))))
    assert all(int(c) <= 125 * 5 // 6 + 1 for c in res["k_search"])   # no k larger than the voting five sixths
    fixed = evaluate("knn", baseline="pixels", data=_toy_splits(), k=7)["knn"]
    assert fixed["k"] == 7 and "k_search" not in fixed


def test_results_on_other_data_are_kept_beside_the_runs_own(tmp_path):
    import json

    import selfsup
    own, other = "shapes:n=64,n_test=32,size=16", "shapes:n=48,n_test=24,size=16,seed=5"
    run = tmp_path / "run"
    selfsup.train("rotation", data=own, out=run, epochs=1, batch_size=16, progress=False)
    a = evaluate("knn", checkpoint=run, k=5)["knn"]
    b = evaluate("knn", checkpoint=run, data=other, k=5)["knn"]
    assert a["written_to"] != b["written_to"]
    files = sorted(p.name for p in (run / "eval").glob("*.json"))
    assert files == ["knn.json", "knn@shapes-n=48,n_test=24,size=16,seed=5.json"]
    assert json.loads((run / "eval" / "knn.json").read_text())["data"] == own
    assert json.loads((run / "eval" / files[1]).read_text())["data"] == other
