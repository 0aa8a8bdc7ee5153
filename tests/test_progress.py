"""Progress bars: on stderr when asked (or when stderr is a terminal), never on stdout, and quiet
by default when stderr is not a terminal (pytest's captured stderr is not one)."""
from __future__ import annotations

import io

import pytest
import torch
from conftest import tiny_images

from selfsup import models
from selfsup.eval.features import extract
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.progress import bar, showing


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return models.Encoder(models.create_backbone("resnet18_quarter", in_chans=1, img_size=16), [0.5], [0.25])


def test_feature_extraction_shows_images_per_second_on_stderr_only(encoder, capsys):
    images = tiny_images(40)
    x = extract(encoder, images, batch_size=16, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "features" in err and "40/40" in err and "img/s" in err
    assert torch.equal(x, extract(encoder, images, batch_size=16, progress=False))   # the bar changes nothing


def test_default_is_quiet_when_stderr_is_not_a_terminal(encoder, capsys):
    extract(encoder, tiny_images(20), batch_size=16)
    x, labels = torch.randn(40, 8), torch.arange(40) % 2
    knn_accuracy(x, labels, x, labels, k=5)
    linear_probe(x[:30], labels[:30], x[30:], labels[30:], weight_decays=(1e-3,))
    assert capsys.readouterr() == ("", "")
    assert not showing(None) and showing(True) and not showing(False)


def test_knn_and_linear_probe_bars(capsys):
    x = torch.randn(60, 8)
    y = torch.arange(60) % 3
    knn_accuracy(x, y, x, y, k=5, progress=True)
    linear_probe(x[:48], y[:48], x[48:], y[48:], weight_decays=(1e-4, 1e-2), progress=True)
    err = capsys.readouterr().err
    assert "kNN k=5" in err and "60/60" in err
    assert "linear probe" in err and "3/3" in err and "refit" in err


def test_a_terminal_gets_the_bar_by_default():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    term = Terminal()
    with bar(range(3), file=term, desc="units") as b:
        for _ in b:
            pass
    assert "units" in term.getvalue() and "3/3" in term.getvalue()
    piped = io.StringIO()
    for _ in bar(range(3), file=piped, desc="units"):
        pass
    assert piped.getvalue() == ""
