"""selfsup report: one self-contained HTML page whose every image is a valid PNG data URI and
loads in a real browser (Debian's chromium, headless; .ci/run installs it)."""
import base64
import importlib.util
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
import torch

from selfsup.cli import main
from selfsup.app.report import project_2d

DATA = "shapes:n=64,n_test=16,size=16"
SECTIONS = ("run", "curves", "views", "pictures", "map", "neighbours", "eval")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 1-epoch SimCLR run on tiny shapes, with a kNN result in its eval/."""
    base = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFSUP_CACHE", str(base / "cache"))
        out = base / "run"
        assert main(["train", "simclr", "--data", DATA, "--epochs", "1", "--batch-size", "16", "--out", str(out),
                     "--no-progress"]) == 0
        assert main(["eval", "knn", "--checkpoint", str(out), "--k", "5"]) == 0
    return out


def image_sources(page: str) -> list[str]:
    tags = re.findall(r"<img\b[^>]*>", page)
    srcs = [m.group(1) for t in tags for m in [re.search(r'\bsrc="([^"]*)"', t)] if m]
    assert len(srcs) == len(tags), "an <img> without a src"
    return srcs


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature, every chunk's CRC, IHDR first,
    IEND last and that the image data inflates to at least one byte per row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h = struct.unpack(">II", chunks[0][1][:8])
    assert w > 0 and h > 0
    assert len(zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))) >= h
    return w, h


@pytest.mark.slow
def test_report_sections_and_png_data_uris(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert f"report written to {run_dir / 'report.html'}" in capsys.readouterr().out
    page = (run_dir / "report.html").read_text()
    for key in SECTIONS:
        assert f"<section id={key}>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page   # static, nothing fetched
    srcs = image_sources(page)
    assert len(srcs) == 5    # curves, views, pictures/views.png, map, neighbours
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
    assert "views()</code>" in page                                   # SimCLR's own two views
    assert ("t-SNE (scikit-learn" in page) == (importlib.util.find_spec("sklearn") is not None)
    assert "knn.json" in page and "k=5" in page                       # the evaluation found in eval/
    assert "held-out queries" in page and "the same here" in page   # labelled: agreement given


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-headless-shell", "chromium-browser")) if p), None)


@pytest.mark.slow
def test_every_image_loads_in_headless_chromium(run_dir, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; .ci/run does)")
    out = tmp_path / "copy" / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    page = out.read_text()
    n = len(image_sources(page))
    # after load, the page writes "images/loaded" into the DOM, which --dump-dom prints
    probe = ("<script>addEventListener('load', () => { const a = [...document.images]; document.body.dataset.loaded ="
             " a.length + '/' + a.filter(i => i.complete && i.naturalWidth > 0).length; });</script>")
    out.write_text(page.replace("</body>", probe + "</body>"))
    res = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                          out.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'data-loaded="(\d+)/(\d+)"', res.stdout)
    assert found, f"the probe did not run (chromium exit {res.returncode}): {res.stderr[-500:]}"
    assert (int(found.group(1)), int(found.group(2))) == (n, n)


@pytest.mark.slow
def test_unlabelled_data_a_broken_eval_file_and_pca_without_sklearn(run_dir, tmp_path, monkeypatch):
    from PIL import Image
    folder = tmp_path / "flat"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, img in enumerate(torch.randint(0, 256, (20, 16, 16, 3), generator=g, dtype=torch.uint8)):
        Image.fromarray(img.numpy()).save(folder / f"{i}.png")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "eval" / "broken.json").write_text("{")
    assert main(["report", str(run), "--data", f"{folder}:size=16"]) == 0
    page = (run / "report.html").read_text()
    assert "has no labels, so there is no map" in page and "held-out queries" in page
    assert "broken.json" in page and "unreadable: not JSON" in page and "knn.json" in page

    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)   # as if scikit-learn were missing
    xy, how = project_2d(torch.randn(40, 8), seed=0)
    assert xy.shape == (40, 2) and how.startswith("PCA") and "not installed" in how


@pytest.mark.slow
@pytest.mark.parametrize("case,message", [
    ("missing", "no such run folder"),
    ("empty", "not a run folder (no config.json"),
    ("bad_data", "--data /no/such/data: no such dataset or path"),
])
def test_bad_input_is_one_line(run_dir, tmp_path, capsys, case, message):
    argv = {"missing": ["report", str(tmp_path / "nope")],
            "empty": ["report", str(tmp_path)],
            "bad_data": ["report", str(run_dir), "--data", "/no/such/data", "--out", str(tmp_path / "r.html")]}[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
