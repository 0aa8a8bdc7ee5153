"""The documented multi-process command works: torchrun with 2 CPU processes (gloo)."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_torchrun_two_processes_train_then_eval(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFSUP_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "selfsup", "train", "simclr", "--data", "shapes:n=64,n_test=16,size=16", "--epochs", "2",
           "--batch-size", "8", "--out", str(out), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 64 images / (8 per process x 2 processes) = 4 steps per epoch; rank 0 alone wrote the run folder
    assert "trained simclr for 8 steps" in proc.stdout
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["world_size"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8
    assert (out / "backbone.safetensors").is_file()
