"""selfsup embed (.npy / .parquet with paths and labels) and selfsup export (safetensors, ONNX)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup import models
from selfsup.cli import main
from selfsup.data.datasets import load_dataset
from selfsup.data.folder import decode_image
from selfsup.runs import save_backbone
from selfsup.app.embed import embed
from selfsup.eval.features import extract
from selfsup.app.export import export

DATA = "shapes:n=64,n_test=16,size=16"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch SimCLR run on a ResNet (its batch-norm statistics are not the initial ones)."""
    out = tmp_path_factory.mktemp("export") / "run"
    selfsup.train("simclr", data=DATA, out=out, epochs=1, batch_size=16, progress=False, proj_dim=16)
    return out


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """A ViT backbone file (random weights: export must be faithful whatever the weights)."""
    path = tmp_path_factory.mktemp("vit") / "backbone.safetensors"
    torch.manual_seed(0)
    backbone = models.create_backbone("vit_micro", in_chans=3, img_size=16)
    save_backbone(backbone, {"backbone": "vit_micro", "in_chans": 3, "img_size": 16, "mean": [0.4, 0.5, 0.6],
                             "std": [0.2, 0.25, 0.3], "method": "dino", "input_space": "rgb"}, path)
    return path


@pytest.fixture()
def image_folder(tmp_path):
    """Two class folders of small RGB pictures, each a different colour."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(6):
            path = tmp_path / "pics" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
    return tmp_path / "pics"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- embed

@pytest.mark.slow
def test_embed_npy_equals_the_evaluation_features_with_index_split_and_label(run, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    code, stdout, err = run_cli(capsys, "embed", run, "--out", out)   # --data defaults to the run's
    assert code == 0, err
    assert "embedded 80 images" in stdout
    x = np.load(out)
    side = json.loads(out.with_suffix(".json").read_text())
    ds = load_dataset(DATA)
    encoder = selfsup.load_backbone(run)
    want = torch.cat([extract(encoder, ds.train.images), extract(encoder, ds.test.images)]).numpy()
    assert x.dtype == np.float32 and x.shape == (80, encoder.embed_dim)
    np.testing.assert_array_equal(x, want)
    cols = side["columns"]
    assert cols["split"] == ["train"] * 64 + ["test"] * 16
    assert cols["index"] == list(range(64)) + list(range(16))
    assert cols["label"] == ds.train.labels.tolist() + ds.test.labels.tolist()
    assert "path" not in cols   # generated data has no files
    assert side["n"] == 80 and side["dim"] == encoder.embed_dim and side["classes"] == ds.train.classes
    assert side["embeddings"] == "emb.npy" and side["split"] == "all"


@pytest.mark.slow
def test_embed_earlier_layer_and_one_split(run, tmp_path):
    res = embed(run, data=DATA, out=tmp_path / "l2.npy", split="test", layer=2, pool="grid")
    encoder = selfsup.load_backbone(run)
    want = extract(encoder, load_dataset(DATA).test.images, layer=2, pool="grid").numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "l2.npy"), want)
    assert res["columns"]["split"] == ["test"] * 16 and res["meta"]["layer"] == 2


@pytest.mark.slow
def test_embed_folder_to_parquet_carries_paths_and_labels(run, image_folder, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    spec = f"{image_folder}:size=16,test_fraction=0.25"
    code, _, err = run_cli(capsys, "embed", "--checkpoint", run, "--data", spec, "--out", tmp_path / "e.parquet")
    assert code == 0, err
    assert run_cli(capsys, "embed", run, "--data", spec, "--out", tmp_path / "e.npy")[0] == 0
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["index", "split", "path", "label", "embedding"]
    meta = json.loads(table.schema.metadata[b"selfsup"])
    assert meta["classes"] == ["cat", "dog"] and meta["n"] == 12
    rows = table.to_pylist()
    x = np.array([r["embedding"] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(x, np.load(tmp_path / "e.npy"))   # both formats hold the same rows
    assert sorted(r["path"] for r in rows) == sorted(str(p.resolve()) for p in image_folder.rglob("*.png"))
    encoder = selfsup.load_backbone(run)
    for r, v in zip(rows, x):
        assert r["path"].split("/")[-2] == meta["classes"][r["label"]]   # path and label of the same image
        image = torch.tensor(decode_image(Path(r["path"]), 16)).permute(2, 0, 1)
        np.testing.assert_allclose(extract(encoder, image[None])[0].numpy(), v, atol=1e-5)   # the row's own picture
    assert {r["split"] for r in rows} == {"train", "test"}


def test_caption_file_images_carry_their_paths_through_subsets(image_folder, tmp_path):
    files = sorted(image_folder.rglob("*.png"))
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"{f},a picture\n" for f in files))
    ds = load_dataset(f"{tmp_path / 'pairs.csv'}:size=16,test_fraction=0.25")
    assert sorted(ds.train.paths + ds.test.paths) == [str(f) for f in files]
    sub = ds.train.subset(torch.tensor([2, 0]))
    assert sub.paths == [ds.train.paths[2], ds.train.paths[0]]


@pytest.mark.slow
def test_embed_bad_inputs_are_one_line_errors(run, tmp_path, capsys, monkeypatch):
    cases = [
        (["embed", run, "--out", tmp_path / "e.csv"], "expected a .npy or .parquet file"),
        (["embed", tmp_path / "nosuch", "--out", tmp_path / "e.npy"], "no such run folder"),
        (["embed", "--out", tmp_path / "e.npy"], "embed needs one run folder"),
        (["embed", run, "--checkpoint", run, "--out", tmp_path / "e.npy"], "embed needs one run folder"),
        (["embed", run, "--data", "shapes:n=32,n_test=0,size=16", "--split", "test", "--out", tmp_path / "e.npy"],
         "has no test split"),
        (["embed", run, "--layer", "9", "--out", tmp_path / "e.npy"], "--layer 9"),
        (["embed", run, "--batch-size", "0", "--out", tmp_path / "e.npy"], "--batch-size must be positive"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
    monkeypatch.setitem(sys.modules, "pyarrow", None)   # as if the extra were not installed
    code, _, err = run_cli(capsys, "embed", run, "--out", tmp_path / "e.parquet")
    assert code == 2 and "pip install 'selfsup[parquet]'" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- export

@pytest.mark.slow
@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_onnx_matches_pytorch_within_tolerance(which, run, vit_file, tmp_path, caplog):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    source = run if which == "resnet" else vit_file
    with caplog.at_level(logging.INFO):
        res = export(source, tmp_path / "x", formats=["onnx"])
    assert not [r for r in caplog.records if r.name.startswith("onnx")]   # the optimiser's chatter stays out
    assert res["files"] == {"onnx": "backbone.onnx"} and res["onnx_max_abs_diff"] < 1e-4
    encoder = selfsup.load_backbone(source)
    spec = json.loads({p.key: p.value for p in onnx.load(tmp_path / "x" / "backbone.onnx").metadata_props}["selfsup"])
    assert spec == json.loads((tmp_path / "x" / "export.json").read_text())["onnx_input"]
    assert spec["input"] == "images" and spec["shape"] == ["batch", 3, 16, 16] and spec["mean"] == encoder.meta["mean"]
    session = ort.InferenceSession(str(tmp_path / "x" / "backbone.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    images = load_dataset(DATA).test.images
    for batch in (images[:1], images):   # the batch axis is dynamic
        x = batch.float() / 255
        got = session.run(["embeddings"], {"images": x.numpy()})[0]
        want = encoder(batch).detach().numpy()   # uint8 through PyTorch; [0, 1] floats through ONNX
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_safetensors_export_loads_with_load_backbone(run, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "export", run, "--out", tmp_path / "x", "--format", "safetensors")
    assert code == 0, err
    assert "backbone.safetensors" in stdout
    assert not (tmp_path / "x" / "backbone.onnx").exists()
    got, want = selfsup.load_backbone(tmp_path / "x" / "backbone.safetensors"), selfsup.load_backbone(run)
    assert got.meta == want.meta
    for (k, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_export_bad_inputs_are_one_line_errors(run, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    cases = [
        (["export", tmp_path / "nosuch", "--out", tmp_path / "x"], "no such run folder"),
        (["export", run, "--out", tmp_path / "x", "--format", "tflite"], "--format tflite: expected one or more of"),
        (["export", run, "--out", tmp_path / "x", "--format", ","], "--format"),
        (["export", run, "--out", tmp_path / "file"], "is a file, not a folder"),
        (["export", "--out", tmp_path / "x"], "export needs one run folder"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, _, err = run_cli(capsys, "export", run, "--out", tmp_path / "y")
    assert code == 2 and "pip install 'selfsup[onnx]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()   # refused before any work
