"""``benchmarks/gpu_check.py --dry-run``: the GPU check's own code path on the CPU, in seconds, so it
is known to work before a GPU is at hand; and a failing row is one line, the others go on, exit 1."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import selfsup

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def expected_rows() -> list[str]:
    return ["train_speed", *(f"method:{m}" for m in selfsup.METHODS), "torchrun_sync_bn", "dino_attention"]


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| row ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


@pytest.mark.timeout(180)
def test_dry_run_prints_every_row_and_exits_0(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, cwd=ROOT, timeout=170)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "budget about" in p.stdout.splitlines()[0]
    rows = table_rows(p.stdout)
    assert list(rows) == expected_rows()
    for name, cells in rows.items():
        status, seconds, ips, loss = cells[1:5]
        assert status == "ok", cells
        assert float(seconds) >= 0 and float(ips) > 0 and float(loss) == float(loss), cells
    assert "model-only bound" in rows["train_speed"][5]
    assert "attention inside the object" in rows["dino_attention"][5]
    assert "Traceback" not in p.stdout + p.stderr


def test_dry_run_is_not_recorded():
    p = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--record"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "not recorded" in p.stderr


def test_a_failing_row_is_one_line_and_the_others_go_on(monkeypatch, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)

    def broken(plan, name, data, out):
        raise RuntimeError(f"{name} broke\nsecond line never shown")

    def fine(*args):
        return {"ok": True, "images_per_s": 1.0, "loss": 1.0, "detail": "not run in this test"}

    monkeypatch.setattr(gc, "row_method", broken)
    for name in ("row_train_speed", "row_torchrun", "row_dino_attention"):   # the dry run above runs them for real
        monkeypatch.setattr(gc, name, fine)
    rc = gc.main(["--dry-run", "--methods", "rotation", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    rows = table_rows(out)
    assert list(rows) == ["train_speed", "method:rotation", "torchrun_sync_bn", "dino_attention"]
    assert rows["method:rotation"][1] == "**FAILED**"
    assert "RuntimeError: rotation broke (" in rows["method:rotation"][5] and "second line" not in out
    assert rows["train_speed"][1] == rows["dino_attention"][1] == "ok"
