"""TensorBoard logging of a run: event files in RUN/tensorboard/, beside metrics.jsonl.

``train`` passes a :class:`TensorBoardSink` to the engine's loop as a metrics sink (main process
only): every number of every metrics.jsonl row becomes a scalar at the row's step (loss, lr,
images_per_s, the method's own logs, the online monitor's ``monitor_knn`` / ``monitor_linear``).
After training the method's pictures (RUN/pictures/*.png) are added as images, and evaluations of
the run (``selfsup eval``) add their accuracies as ``eval/...`` scalars.

``TrainConfig.logger``: "auto" logs when the ``tensorboard`` package is installed
(``pip install 'selfsup[tensorboard]'``), "tensorboard" requires it, "none" writes no event file.
A resumed run opens a new event file with ``purge_step`` at the checkpoint's step, so the steps
logged after that checkpoint by the interrupted process are dropped, not shown twice.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from ..errors import SelfSupError

LOGGERS = ("auto", "tensorboard", "none")
DIRNAME = "tensorboard"
INSTALL = "pip install 'selfsup[tensorboard]' (or pip install tensorboard)"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def check_logger(logger: str) -> None:
    """A one-line error for an unknown logger or for tensorboard when it is not installed."""
    if logger not in LOGGERS:
        raise SelfSupError(f"--set logger={logger}: expected auto, tensorboard or none")
    if logger == "tensorboard" and not available():
        raise SelfSupError(f"--set logger=tensorboard: the tensorboard package is not installed; {INSTALL}")


def wanted(logger: str) -> bool:
    """Whether a run with this ``logger`` setting writes TensorBoard events."""
    check_logger(logger)
    return logger == "tensorboard" or (logger == "auto" and available())


class TensorBoardSink:
    """A metrics sink for :func:`selfsup.engine.loop.fit` writing RUN/tensorboard/ event files."""

    SKIP = ("step",)

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = Path(run_dir) / DIRNAME
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step or None)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key in self.SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, global_step=step)

    def add_picture(self, path: Path, step: int) -> None:
        """A PNG (a method's picture) as the image ``pictures/NAME``."""
        import numpy as np
        from PIL import Image
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
        self.writer.add_image(f"pictures/{Path(path).stem}", array, global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def last_step(run_dir: Path) -> int:
    """The last training step in RUN/metrics.jsonl (0 when there is none)."""
    step = 0
    try:
        with open(Path(run_dir) / "metrics.jsonl") as f:
            for line in f:
                try:
                    step = max(step, int(json.loads(line).get("step", 0)))
                except (ValueError, AttributeError):
                    continue
    except OSError:
        pass
    return step


def log_evaluation(run_dir: str | Path | None, results: dict) -> None:
    """Add evaluation accuracies to a run's TensorBoard folder, at the run's last step, as
    ``eval/PROTOCOL`` (suffixed like the result's file name). Only for a run folder that already has
    event files and while tensorboard is installed: evaluating never starts a log."""
    if run_dir is None or not (Path(run_dir) / DIRNAME).is_dir() or not available():
        return
    from torch.utils.tensorboard import SummaryWriter
    step = last_step(Path(run_dir))
    writer = SummaryWriter(log_dir=str(Path(run_dir) / DIRNAME))
    try:
        for res in results.values():
            name = Path(res["written_to"]).stem if "written_to" in res else res.get("protocol", "eval")
            if isinstance(res.get("accuracy"), float) and math.isfinite(res["accuracy"]):
                writer.add_scalar(f"eval/{name}", res["accuracy"], global_step=step)
    finally:
        writer.close()
