"""Typed configs. ``TrainConfig`` holds what the engine needs; each method has its own ``Config``
dataclass. Overrides (``--set key=value``, a JSON/YAML file) are checked against the dataclass:
an unknown key or a value of the wrong type is a one-line error naming it.

Each config dataclass declares the valid range of its settings in a class attribute ``ranges``
(``{"temperature": "> 0", "mask_ratio": "(0, 1)", "loss": ("classification", "regression")}``):
a bound ("> 0", ">= 1"), an interval ("[0, 1)"), or a tuple of the allowed strings.
:func:`check_ranges` checks every field against it when the config is resolved, before any data is
loaded, so a wrong value is one line naming the option and its range: ``--set temperature=0: must
be > 0``. Checks that involve two settings or the data stay with the method."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import SelfSupError


@dataclass
class TrainConfig:
    method: str = "simclr"
    data: str = "fashion-mnist"             # dataset name (with :key=value options) or a folder
    data_dir: str = ""                      # where to look for dataset files ($SELFSUP_DATA otherwise)
    download: bool = False                  # allow downloading the dataset
    backbone: str = "resnet18_quarter"
    epochs: float = 10.0                    # may be fractional
    steps: int = 0                          # optimiser steps; 0 = from epochs (when given, it replaces epochs)
    batch_size: int = 256                   # per process and micro-batch
    accumulate: int = 1                     # micro-batches per optimiser step (gradient accumulation)
    optimizer: str = "adamw"                # adamw | sgd | lars
    lr: float = 1e-3                        # peak learning rate (not scaled by batch size)
    weight_decay: float = 1e-4              # not applied to biases and norm weights
    momentum: float = 0.9                   # sgd / lars
    beta2: float = 0.999                    # adamw's second-moment decay (MAE: 0.95)
    warmup_epochs: float = 1.0
    warmup_max: float = 0.1                 # the warm-up ends by this share of the run at the latest (0 = no cap)
    min_lr_ratio: float = 0.0               # cosine floor, as a fraction of lr
    grad_clip: float = 0.0                  # max gradient norm; 0 = off
    skip_nonfinite: int = 0                 # steps with a NaN/inf loss to skip before stopping; 0 = stop at the first
    time_limit: float = 0.0                 # minutes of training; 0 = off (the schedule then follows time)
    seed: int = 0
    device: str = "auto"                    # auto | cpu | cuda
    amp: bool = True                        # bf16 autocast on CUDA (never on CPU)
    channels_last: bool = True              # on CUDA
    cpu_bf16: str = "auto"                  # auto | true | false. true: bf16 autocast + channels_last on CPUs with native
                                            # bf16 dot products (AVX512_BF16 / AMX), losses in fp32 (a notice where not
                                            # native). auto: times the run's step in both on its first batch and takes bf16
                                            # only where it is faster (about 2x on an AMD EPYC, slower on an Intel Xeon
                                            # without AMX); the choice is saved and kept on resume
    compile: str = "auto"                   # auto | true | false: torch.compile (inductor) the method's modules; a notice
                                            # and eager where it fails. auto: on a CPU training in fp32 (inductor gave
                                            # 1.2-1.4x there, nothing over bf16), after timing 4 eager steps, when the rest
                                            # of the run would take at least 5 minutes; never on CUDA (not measured yet)
    sync_bn: bool = False                   # SyncBatchNorm under torchrun
    subset: int = 0                         # train on the first N images of a seeded permutation; 0 = all
    checkpoint_every_steps: int = 0         # 0 = only per epoch / minutes
    checkpoint_every_minutes: float = 10.0
    log_every: int = 50                     # steps between metrics.jsonl lines
    augment_threads: int = 1                # CPU threads for building views (0: as many as the model); 1 built views
                                            # faster than 2 on the 2-core machine and leaves the model its threads
    num_workers: int = 0                    # DataLoader workers, for datasets that stream from disk
    strict: bool = False                    # fail on the first unreadable image instead of skipping
    monitor_every: float = 0.0              # epochs between online kNN/linear scores in metrics.jsonl; 0 = off
    monitor: str = "knn"                    # what the online monitor scores: knn | linear | knn,linear
    logger: str = "auto"                    # experiment logger: auto (tensorboard when installed) | tensorboard | none

    ranges = {   # valid values of each setting (see check_ranges); method, data, data_dir, device, monitor and
                 # backbone are checked by name where they are resolved
        "epochs": "> 0", "batch_size": ">= 1", "accumulate": ">= 1", "optimizer": ("adamw", "sgd", "lars"),
        "lr": "> 0", "weight_decay": ">= 0", "momentum": "[0, 1)", "beta2": "[0, 1)", "warmup_epochs": ">= 0",
        "min_lr_ratio": "[0, 1]", "grad_clip": ">= 0", "skip_nonfinite": ">= 0", "time_limit": ">= 0", "seed": ">= 0",
        "subset": ">= 0", "checkpoint_every_steps": ">= 0", "checkpoint_every_minutes": ">= 0", "log_every": ">= 1",
        "num_workers": ">= 0", "augment_threads": ">= 0", "monitor_every": ">= 0", "steps": ">= 0", "warmup_max": "[0, 1]", "cpu_bf16": ("auto", "true", "false"),
        "compile": ("auto", "true", "false"),
    }


def _convert(value, typ, key: str):
    """Parse a string (or JSON value) as the field's type (resolved by ``field_types``), or raise naming the key."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is str and isinstance(value, bool):   # a yes/no setting that also has "auto"
            return "true" if value else "false"
        if typ in (int, float, str):
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if typ is int and isinstance(value, str) and not value.strip().lstrip("-").isdigit():
                raise ValueError
            return typ(value)
        if origin is tuple:
            items = value if isinstance(value, (list, tuple)) else str(value).strip("()[]").split(",")
            args = typing.get_args(typ)
            item_types = args if len(args) == len(items) else [args[0]] * len(items)
            return tuple(_convert(v, t, key) for v, t in zip(items, item_types))
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise SelfSupError(f"--set {key}={value}: expected {getattr(typ, '__name__', typ)}")


def field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def apply_overrides(cfg, overrides: dict, where: str = "config"):
    """A copy of dataclass ``cfg`` with ``overrides`` applied (types checked, unknown keys refused)."""
    types = field_types(type(cfg))
    values = {}
    for key, value in overrides.items():
        if key not in types:
            raise SelfSupError(f"unknown {where} key {key!r} (known: {', '.join(types)})")
        values[key] = _convert(value, types[key], key)
    return dataclasses.replace(cfg, **values)


def split_overrides(overrides: dict, *config_classes) -> list[dict]:
    """Route each key to the first dataclass that has it; a key none has is an error naming all keys."""
    out = [{} for _ in config_classes]
    for key, value in overrides.items():
        for i, cls in enumerate(config_classes):
            if key in field_types(cls):
                out[i][key] = value
                break
        else:
            known = sorted({k for cls in config_classes for k in field_types(cls)})
            raise SelfSupError(f"unknown setting {key!r} (known: {', '.join(known)})")
    return out


def parse_set(items: list[str]) -> dict:
    """``["a=1", "b=x"]`` -> {"a": "1", "b": "x"}."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SelfSupError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def read_config_file(path: str) -> dict:
    """A flat JSON or YAML mapping of settings (a nested ``method``/``train`` split is flattened)."""
    p = Path(path)
    if not p.is_file():
        raise SelfSupError(f"--config {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml  # optional: pip install pyyaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise SelfSupError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or use JSON") from None
    except Exception as e:  # noqa: BLE001 - any parse error becomes one line naming the file
        raise SelfSupError(f"--config {path}: cannot parse ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SelfSupError(f"--config {path}: expected a mapping of settings")
    flat = {}
    for key, value in data.items():
        if key in ("train", "method") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^\s\])]+)\s*([\])])$")


def in_range(value, spec) -> bool:
    """Whether ``value`` lies in ``spec``: a tuple of allowed values, a bound ("> 0", ">= 1") or an
    interval ("[0, 1)"). NaN and infinities are in no numeric range."""
    if isinstance(spec, tuple):
        return value in spec
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if m := _BOUND.match(spec):
        op, bound = m.group(1), float(m.group(2))
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    if m := _INTERVAL.match(spec):
        lo, hi = float(m.group(2)), float(m.group(3))
        above = value >= lo if m.group(1) == "[" else value > lo
        below = value <= hi if m.group(4) == "]" else value < hi
        return above and below
    raise ValueError(f"not a range: {spec!r}")


def describe_range(spec) -> str:
    """``"> 0"`` -> "> 0"; ``"[0, 1)"`` -> "in [0, 1)"; a tuple -> "one of a, b"."""
    if isinstance(spec, tuple):
        return "one of " + ", ".join(map(str, spec))
    return spec if _BOUND.match(spec) else f"in {spec}"


def check_ranges(cfg, flags: dict[str, str] | None = None) -> None:
    """Every field of dataclass ``cfg`` that its class's ``ranges`` names, checked: the first value out
    of range is a one-line error naming the option (``flags[key]`` where it has a flag of its own,
    else ``--set key=value``) and the range."""
    for key, spec in getattr(type(cfg), "ranges", {}).items():
        value = getattr(cfg, key)
        if not in_range(value, spec):
            shown = _show(value)
            where = f"{flags[key]} {shown}" if flags and key in flags else f"--set {key}={shown}"
            raise SelfSupError(f"{where}: must be {describe_range(spec)}")


def _show(value) -> str:
    """A value as the user would type it: 0.0 -> "0", 0.25 -> "0.25", nan -> "nan"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def unranged_fields(cls) -> list[str]:
    """Numeric or string fields of a config dataclass without a declared range (booleans need none)."""
    declared = getattr(cls, "ranges", {})
    return [k for k, t in field_types(cls).items() if k not in declared and t in (int, float)]


def to_dict(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
