"""The command line end to end, as a user would type it (selfsup.cli.main with an argv list)."""
import json

import re

import pytest

from selfsup.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_train_eval_on_shapes_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "simclr", "--data", "shapes:n=64,n_test=32,size=16", "--epochs", "1",
                            "--batch-size", "16", "--out", str(out), "--no-progress", "--set", "temperature=0.3",
                            "--set", "proj_dim=32")
    assert code == 0, err
    assert "trained simclr for 4 steps" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_config"]["temperature"] == 0.3 and cfg["method_config"]["proj_dim"] == 32
    for protocol in ("knn", "linear"):
        code, stdout, err = run(capsys, "eval", protocol, "--checkpoint", str(out), "--k", "5")
        assert code == 0, err
        assert f"{protocol} accuracy" in stdout
        res = json.loads((out / "eval" / f"{protocol}.json").read_text())
        assert 0 <= res["accuracy"] <= 1 and res["data"].startswith("shapes") and res["n_test"] == 32
    code, stdout, _ = run(capsys, "eval", "knn", "--baseline", "pixels", "--data", "shapes:n=64,n_test=32,size=16",
                          "--label-fraction", "0.5", "--out", str(tmp_path / "pix.json"))
    assert code == 0 and abs(json.loads((tmp_path / "pix.json").read_text())["n_train"] - 32) <= 5  # per-class rounding


def test_eval_knn_and_linear_together_write_one_file_each(tmp_path, capsys):
    data = ["--data", "shapes:n=64,n_test=32,size=16", "--seed", "1"]
    code, stdout, err = run(capsys, "eval", "knn", "linear", "--baseline", "pixels", *data, "--out", str(tmp_path / "both"))
    assert code == 0, err
    assert stdout.index("knn accuracy") < stdout.index("linear accuracy")
    for protocol in ("knn", "linear"):   # the same figures as one protocol at a time
        both = json.loads((tmp_path / "both" / f"{protocol}.json").read_text())
        assert run(capsys, "eval", protocol, "--baseline", "pixels", *data, "--out", str(tmp_path / f"{protocol}.json"))[0] == 0
        alone = json.loads((tmp_path / f"{protocol}.json").read_text())
        assert both["accuracy"] == alone["accuracy"] and both["n_test"] == 32


@pytest.mark.slow
def test_resume_and_overwrite_flags(tmp_path, capsys):
    args = ["train", "simclr", "--data", "shapes:n=32,n_test=8,size=16", "--epochs", "1", "--batch-size", "16",
            "--out", str(tmp_path / "r"), "--no-progress"]
    assert run(capsys, *args)[0] == 0
    code, _, err = run(capsys, *args)
    assert code == 2 and "already exists; pass --resume" in err and "Traceback" not in err
    assert run(capsys, *args, "--overwrite")[0] == 0
    code, stdout, _ = run(capsys, *args, "--resume", "--epochs", "2")
    assert code == 0 and "for 4 steps" in stdout


@pytest.mark.parametrize("argv,message", [
    (["train", "nosuch", "--data", "shapes"], "unknown method 'nosuch'"),
    (["train", "simclr", "--data", "nosuch-data"], "--data nosuch-data: no such dataset or path"),
    (["train", "simclr", "--data", "shapes", "--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["train", "simclr", "--data", "shapes", "--epochs", "-1"], "--epochs -1: must be > 0"),
    (["train", "simclr", "--data", "shapes", "--lr", "-0.1"], "--lr -0.1: must be > 0"),
    (["train", "simclr", "--data", "shapes", "--set", "temprature=0.1"], "unknown setting 'temprature'"),
    (["train", "simclr", "--data", "shapes", "--set", "temperature"], "expected key=value"),
    (["train", "simclr", "--data", "shapes", "--backbone", "vgg"], "unknown backbone"),
    (["train", "simclr", "--data", "shapes", "--config", "/no/such.json"], "--config /no/such.json: no such file"),
    (["train", "simclr", "--data", "shapes:n=oops"], "shapes: option n='oops' is not an integer"),
    (["train", "simclr"], "--data is required"),
    (["eval", "knn", "--checkpoint", "/no/such/run"], "no such run folder"),
    (["eval", "knn", "--baseline", "pixels", "--data", "shapes:n=32,n_test=8", "--label-fraction", "1.5"], "label-fraction"),
    (["eval", "knn", "--baseline", "pixels", "--data", "shapes:n=32,n_test=8", "--label-fraction", "0"], "label-fraction"),
    (["eval", "knn", "--baseline", "random", "--data", "shapes:n=32,n_test=8", "--layer", "2,2"], "two or more different stages"),
    (["eval", "knn", "finetune", "--baseline", "pixels", "--data", "shapes:n=32,n_test=8"], "only knn and linear run together"),
    (["eval", "knn", "linear", "--baseline", "pixels", "--data", "shapes:n=32,n_test=8", "--out", "r.json"],
     "--out r.json: names one JSON file"),
])
def test_bad_input_is_one_line_error(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_layer_option_parses_one_stage_several_or_auto():
    import argparse
    from selfsup.cli import _layer
    assert _layer("3") == 3 and _layer("2,3,4") == (2, 3, 4) and _layer("auto") == "auto"
    with pytest.raises(argparse.ArgumentTypeError, match="joined by commas"):
        _layer("2,x")


def test_config_file_unknown_key_and_checkpoint_of_wrong_kind(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"temperature": 0.3, "colour": 1}))
    code, _, err = run(capsys, "train", "simclr", "--data", "shapes", "--config", str(cfg), "--out", str(tmp_path / "x"))
    assert code == 2 and "unknown setting 'colour'" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "train", "simclr", "--out", str(bad), "--resume")
    assert code == 2 and "checkpoint.pt: not a readable selfsup checkpoint" in err


def test_data_list_and_info(capsys):
    code, stdout, _ = run(capsys, "data", "list")
    assert code == 0 and {"fashion-mnist", "shapes", "photos"} <= set(stdout.split())
    code, stdout, _ = run(capsys, "data", "info", "shapes:n=20,n_test=10")
    info = json.loads(stdout)
    assert info["train"]["images"] == 20 and info["test"]["images"] == 10 and len(info["classes"]) >= 8


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    # whole command names at the start of their help lines: "train" inside "pretrain" does not count
    listed = re.findall(r"^ {4}([a-z]+) {2,}\S", out, flags=re.M)
    assert set(listed) == {"train", "eval", "bench", "embed", "export", "report", "data", "demo"}, listed


@pytest.mark.slow
def test_demo_falls_back_to_shapes_and_prints_the_comparison(tmp_path, capsys, monkeypatch):
    from selfsup.data import fashion_mnist
    from selfsup.app.demo import run_demo
    monkeypatch.setattr(fashion_mnist, "locate", lambda data_dir=None: None)
    code = run_demo(minutes=0.05, out=str(tmp_path / "demo"), fallback="shapes:n=128,n_test=64,size=16")
    out = capsys.readouterr().out
    assert code == 0
    assert "notice: Fashion-MNIST not found" in out and "instead" in out
    for row in ("SimCLR (this run)", "random-init backbone", "raw pixels"):
        assert row in out
    assert list((tmp_path / "demo" / "eval").glob("knn*.json"))   # knn_layerN.json: the stage chosen on validation
    assert ", stage " in out
