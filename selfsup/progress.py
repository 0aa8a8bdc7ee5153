"""Progress bars for every step that can take more than a few seconds (training, feature
extraction, kNN, the linear probe, fine-tuning and its lr search, the bench's units, the demo).

All of them are tqdm bars on stderr, so stdout (the results that scripts and tests read) is
untouched. ``progress`` everywhere in the API means: ``None`` (the default) shows a bar only when
stderr is a terminal (tqdm's ``disable=None``), ``True`` always shows it, ``False`` never does.
"""
from __future__ import annotations

import contextlib
import sys


def bar(iterable=None, *, progress: bool | None = None, file=None, **kwargs):
    """A tqdm bar (``tqdm.auto``) following ``progress``; bars nested under another disappear when done."""
    from tqdm.auto import tqdm
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", None)   # only a top-level bar (position 0) stays on screen
    return tqdm(iterable, file=file if file is not None else sys.stderr,
                disable=None if progress is None else not progress, **kwargs)


def showing(progress: bool | None, file=None) -> bool:
    """Whether a bar with this ``progress`` would show (on ``file``, stderr by default)."""
    if progress is not None:
        return progress
    f = file if file is not None else sys.stderr
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def printing():
    """Print to stdout while bars are on screen: they are cleared first and redrawn afterwards."""
    from tqdm.auto import tqdm
    with tqdm.external_write_mode():
        yield
