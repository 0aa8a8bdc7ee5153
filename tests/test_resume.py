"""Kill and resume: a training process killed with SIGKILL mid-epoch resumes from its last
checkpoint, runs only the remaining steps and ends with the weights of an uninterrupted run; a
failure while saving leaves the previous checkpoint intact."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.runs import checkpoint as ckpt_mod
from selfsup.runs import load_checkpoint, save_checkpoint
from selfsup.errors import SelfSupError

# cpu_bf16=true: bf16 wherever the CPU has it natively, as the default "auto" chooses when bf16 is
# faster; "auto" would time each process's own step, and the two runs compared here could choose
# differently (tests/test_engine.py checks that a resumed "auto" run keeps its first choice)
ARGS = ["train", "simclr", "--data", "shapes:n=48,n_test=16,size=16", "--epochs", "10", "--batch-size", "8",
        "--no-progress", "--seed", "3", "--set", "checkpoint_every_steps=1", "--set", "log_every=1",
        "--set", "cpu_bf16=true"]
TOTAL = 10 * (48 // 8)


def _step(run):
    try:
        return int(load_checkpoint(run)["step"])
    except SelfSupError:
        return -1


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}   # the same threads in every process:
# a different thread count changes the order of float sums, and the comparison below is bit for bit


def _cli(*argv):
    done = subprocess.run([sys.executable, "-m", "selfsup", *argv], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _cli(*ARGS, "--out", str(full))
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", *ARGS, "--out", str(cut)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _step(cut) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = _step(cut)
    assert 8 <= saved < TOTAL
    logged = (cut / "metrics.jsonl").read_text().count("\n")
    _cli("train", "simclr", "--out", str(cut), "--resume", "--no-progress")
    rows = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()[logged:]]
    assert [r["step"] for r in rows] == list(range(saved + 1, TOTAL + 1))      # only the remaining steps ran
    a, b = load_checkpoint(full)["model"], load_checkpoint(cut)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)                              # bit for bit
    assert load_checkpoint(cut)["step"] == TOTAL


def test_a_failure_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {"method": "simclr"}, "step": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, f, *a, **kw):
        with open(f, "wb") as h:
            h.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    with pytest.raises(SelfSupError, match="No space left on device.*previous one is intact"):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {"method": "simclr"}, "step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]           # no temporary file left behind


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = ckpt_mod.torch.save
    calls = {"n": 0}

    def fail_third(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)
    monkeypatch.setattr(ckpt_mod.torch, "save", fail_third)
    code = main([*ARGS[:6], "--epochs", "1", "--batch-size", "8", "--no-progress", "--set", "checkpoint_every_steps=1",
                 "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("selfsup: error:") and "\n" not in err and "No space left" in err
    assert load_checkpoint(run)["step"] == 2                                    # the last good one
    monkeypatch.setattr(ckpt_mod.torch, "save", real)
    assert selfsup.train("simclr", out=run, resume=True, progress=False).steps == 6
