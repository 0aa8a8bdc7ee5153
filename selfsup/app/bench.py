"""``selfsup bench``: every registered method on one dataset at a named budget, measured the same way.

Each self-supervised method pretrains its budget's backbone for the budget's wall-clock minutes
(``selfsup/budgets.py``), then is scored by kNN and a linear probe (100% and 1% of the labels, the
stage chosen on validation from those labels only) and by fine-tuning at 1%, 10% and 100% of the
labels. Beside them: the same network trained from scratch on the same labels (``supervised``,
the fine-tuning protocol's own baseline), the randomly initialised network and the raw pixels.

Every unit (one subject, one backbone, one seed) is a JSON file under ``OUT/results`` carrying the
commit and a hash of everything that decides it (budget, data, seed, the resolved configs); it is
reused only when both match a clean checkout's. A crashed or non-finite unit becomes a row saying
so, the others go on, and :func:`failed` tells the command line to exit non-zero.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import torch

from .. import runs as rundir
from ..data.datasets import DatasetSplits, label_subset, load_dataset
from ..errors import SelfSupError
from .budgets import Budget, get_budget

PROBE_FRACTIONS = (1.0, 0.01)
FT_FRACTIONS = (0.01, 0.1, 1.0)
MIN_FINETUNE = 12     # labelled images fine-tuning needs at least (its lr search holds out a sixth)
MIN_SELECT = 60       # labelled images below which the probe takes the last stage instead of choosing one
COLUMNS = ("knn", "linear", "linear_1pct", "ft_1pct", "ft_10pct", "ft_100pct")
BASELINES = ("supervised", "random", "pixels")


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


# ----------------------------------------------------------------------------- provenance

def clean_commit() -> str | None:
    """The checkout's commit when its tracked files are unmodified; None otherwise (nothing reusable)."""
    commit = rundir.git_commit()
    if commit is None:
        return None
    try:
        root = Path(__file__).resolve().parents[1]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return None if dirty else commit


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = f", CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{dev}"


def record_section(path: Path, name: str, title: str, body: str, command: str) -> None:
    """Replace (or append) the section ``name`` of a BENCHMARKS.md-style file with ``body``, headed
    by the command, machine and commit that produced it."""
    path = Path(path)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = rundir.git_commit()
    state = (commit[:7] if commit else "unknown") + ("" if clean_commit() or commit is None else "+dirty")
    section = (f"<!-- bench:{name} -->\n## {title}\n\n- command: `{command}`\n- machine: {machine()}\n"
               f"- commit: {state}, {stamp}\n\n{body.strip()}\n<!-- /bench:{name} -->\n")
    text = path.read_text() if path.exists() else \
        "# Benchmarks\n\nEvery figure below was printed by the command shown beside it; each section is rewritten by its script.\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# ----------------------------------------------------------------------------- the plan

def backbone_for(method: str, budget: Budget) -> str:
    """The budget's ViT for methods built for one (MAE), its convolutional backbone otherwise."""
    from ..methods import get_method
    default = get_method(method).train_defaults.get("backbone", "")
    return budget.vit if default.startswith("vit") else budget.backbone


def plan(methods: list[str], budget: Budget) -> list[tuple[str, str]]:
    """(subject, backbone) units: the self-supervised methods, then the baselines for each backbone used."""
    units = [(m, backbone_for(m, budget)) for m in methods]
    backbones = list(dict.fromkeys(b for _, b in units)) or [budget.backbone]
    units += [(kind, b) for b in backbones for kind in ("supervised", "random")]
    units.append(("pixels", ""))
    return units


def select_methods(names: str | None) -> list[str]:
    """The self-supervised methods of the registry (label-using ones are baselines), or ``names``."""
    from ..methods import METHODS
    ssl = [m for m, cls in METHODS.items() if not cls.uses_labels]
    if not names:
        return ssl
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for n in chosen:
        if n not in METHODS:
            raise SelfSupError(f"--methods {n}: unknown method (known: {', '.join(METHODS)})")
        if METHODS[n].uses_labels:
            raise SelfSupError(f"--methods {n}: uses labels; it is a baseline, benchmarked beside every method")
    if not chosen:
        raise SelfSupError("--methods: name at least one method")
    return chosen


# ----------------------------------------------------------------------------- one unit

def _probe(kw: dict, data: DatasetSplits, seed: int, fraction: float) -> dict:
    from .evaluate import eval_splits, evaluate
    train_split, _ = eval_splits(data, seed)
    n = len(label_subset(train_split, fraction, seed))
    layer = "auto" if n >= MIN_SELECT and kw.get("baseline") != "pixels" else None
    protocols = ["knn", "linear"] if fraction == 1.0 else ["linear"]
    res = evaluate(protocols, data=data, seed=seed, label_fraction=fraction, layer=layer, **kw)
    key = "" if fraction == 1.0 else f"_{_pct(fraction)}"
    return {f"{p}{key}": res[p]["accuracy"] for p in protocols} | {f"layer{key}": res[protocols[0]]["layer"]}


def _finetunes(kw: dict, data: DatasetSplits, seed: int, budget: Budget, row: dict) -> None:
    from .evaluate import eval_splits
    from .finetune import finetune
    train_split, _ = eval_splits(data, seed)
    if "checkpoint" in kw:
        from ..runs import load_backbone
        space = load_backbone(kw["checkpoint"]).meta.get("input_space", "rgb")
        if space != "rgb":
            row.setdefault("notes", []).append(f"fine-tuning: {row['subject']}'s backbone sees {space}, which the "
                                               "supervised fine-tuning does not feed yet")
            return
    for fraction in FT_FRACTIONS:
        col = f"ft_{_pct(fraction)}"
        if len(label_subset(train_split, fraction, seed)) < MIN_FINETUNE:
            row.setdefault("notes", []).append(f"{col}: fewer than {MIN_FINETUNE} labelled images")
            continue
        timing = {"time_limit": budget.ft_minutes} if budget.ft_minutes else {"epochs": budget.ft_epochs}
        res = finetune(data=data, label_fraction=fraction, seed=seed, lrs=list(budget.ft_lrs), **timing, **kw)
        row[col] = res["accuracy"]
        row[f"{col}_lr"] = res["lr"]


def run_unit(subject: str, backbone: str, data: DatasetSplits, seed: int, budget: Budget, out: Path) -> dict:
    """Train (for a method) and evaluate one unit; never raises for the unit's own failures."""
    row = {"subject": subject, "backbone": backbone, "seed": seed, "status": "ok"}
    t0 = time.time()
    try:
        if subject == "pixels":
            for f in PROBE_FRACTIONS:
                row.update(_probe({"baseline": "pixels"}, data, seed, f))
        elif subject == "random":
            for f in PROBE_FRACTIONS:
                row.update(_probe({"baseline": "random", "backbone": backbone}, data, seed, f))
        elif subject == "supervised":
            _finetunes({"baseline": "supervised", "backbone": backbone}, data, seed, budget, row)
        else:
            from .train import train
            from ..methods import get_method
            cls = get_method(subject)
            why = (f"needs image-caption data; {data.name} has none" if cls.uses_captions and data.train.captions is None
                   else f"needs colour (RGB) images; {data.name} has {data.train.channels} channel(s)"
                   if cls.input_space == "lab_l" and data.train.channels != 3 else None)
            if why:   # the method cannot use this data: a skipped row, not a failure
                row.update(status="skipped", notes=[f"{subject} {why}"])
                return row
            run_dir = out / "runs" / f"{subject}-seed{seed}"
            res = train(subject, data=data, out=run_dir, overwrite=True, progress=False, backbone=backbone,
                        time_limit=budget.minutes, epochs=budget.max_epochs, seed=seed)
            row.update(steps=res.steps, images_per_s=round(res.images_per_s, 1), run_dir=str(run_dir),
                       train_minutes=round((time.time() - t0) / 60, 2))
            for f in PROBE_FRACTIONS:
                row.update(_probe({"checkpoint": run_dir}, data, seed, f))
            _finetunes({"checkpoint": run_dir}, data, seed, budget, row)
    except Exception as e:  # noqa: BLE001 - one broken unit must not stop the others; its row says why
        message = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        row["status"] = "non-finite" if "diverged" in message else "error"
        row["error"] = message if isinstance(e, SelfSupError) else f"{type(e).__name__}: {message}"
    bad = [c for c in COLUMNS if isinstance(row.get(c), float) and not math.isfinite(row[c])]
    if bad and row["status"] == "ok":
        row["status"], row["error"] = "non-finite", f"non-finite {', '.join(bad)}"
    row["minutes"] = round((time.time() - t0) / 60, 2)
    return row


def unit_key(subject: str, backbone: str, data: DatasetSplits, seed: int, budget: Budget) -> dict:
    """Everything that decides a unit's result, hashed into its config hash."""
    key = {"subject": subject, "backbone": backbone, "data": data.name, "fingerprint": data.fingerprint, "seed": seed,
           "budget": dataclasses.asdict(budget), "probe_fractions": PROBE_FRACTIONS, "ft_fractions": FT_FRACTIONS}
    if subject not in ("pixels", "random"):
        from ..config import to_dict
        from .train import resolve_config
        name = "supervised" if subject == "supervised" else subject
        cfg, mcfg = resolve_config(name, {"backbone": backbone, "seed": seed})
        key["config"] = {**to_dict(cfg), "method_config": to_dict(mcfg)}
    return key


# ----------------------------------------------------------------------------- the bench

def bench(methods: str | None = None, data: str = "fashion-mnist", budget: str = "smoke", seeds: int = 1,
          out: str | Path | None = None, data_dir: str | None = None, log=print) -> dict:
    """Run (or reuse) every unit and write OUT/bench.{json,csv,md,png}; returns the summary dict."""
    if seeds < 1:
        raise SelfSupError(f"--seeds must be at least 1, got {seeds}")
    b = get_budget(budget)
    names = select_methods(methods)
    splits = load_dataset(data, data_dir=data_dir)
    if splits.train.labels is None:
        raise SelfSupError(f"--data {data}: has no labels; the bench scores every method with labelled probes")
    out = Path(out or f"runs/bench-{b.name}-{Path(data.split(':')[0]).name}")
    (out / "results").mkdir(parents=True, exist_ok=True)
    commit = clean_commit()
    rows = []
    for seed in range(seeds):
        for subject, backbone in plan(names, b):
            key = unit_key(subject, backbone, splits, seed, b)
            h = config_hash(key)
            path = out / "results" / f"{subject}{'-' + backbone if backbone else ''}-seed{seed}.json"
            if path.exists() and commit is not None:
                old = json.loads(path.read_text())
                if old.get("commit") == commit and old.get("config_hash") == h:
                    rows.append(old)
                    log(f"reused {path.name} ({old['status']})")
                    continue
            row = run_unit(subject, backbone, splits, seed, b, out)
            row.update(commit=commit or (rundir.git_commit() or "unknown") + "+dirty", config_hash=h)
            rundir.write_json(path, row)
            rows.append(row)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k in COLUMNS}
            log(f"{subject} {backbone} seed {seed}: {row['status']} {row.get('error', '')} {shown}".rstrip())
    summary = {"data": splits.name, "budget": dataclasses.asdict(b), "seeds": seeds, "rows": rows,
               "table": aggregate(rows)}
    rundir.write_json(out / "bench.json", summary)
    write_csv(rows, out / "bench.csv")
    (out / "bench.md").write_text(markdown(summary) + "\n")
    bar_chart(summary["table"], out / "bench.png", f"{splits.name}, budget {b.name}")
    summary["out"] = str(out)
    return summary


def failed(summary: dict) -> list[dict]:
    return [r for r in summary["rows"] if r["status"] not in ("ok", "skipped")]


# ----------------------------------------------------------------------------- tables and chart

def aggregate(rows: list[dict]) -> list[dict]:
    """One line per (subject, backbone): mean and sample std of each column over the seeds."""
    table = []
    for subject, backbone in dict.fromkeys((r["subject"], r["backbone"]) for r in rows):
        rs = [r for r in rows if r["subject"] == subject and r["backbone"] == backbone]
        line = {"subject": subject, "backbone": backbone, "seeds": len(rs),
                "status": ", ".join(sorted({r["status"] for r in rs})),
                "errors": [r["error"] for r in rs if "error" in r]}
        for c in COLUMNS:
            xs = [r[c] for r in rs if isinstance(r.get(c), float) and r["status"] == "ok"]
            if xs:
                line[c] = statistics.mean(xs)
                line[f"{c}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
        table.append(line)
    return table


def _cell(line: dict, c: str) -> str:
    if c not in line:
        return "—"
    return f"{line[c]:.4f}" + (f" ± {line[c + '_std']:.4f}" if line["seeds"] > 1 else "")


def label_efficiency(table: list[dict]) -> str:
    """The plain answer: does the best self-supervised model beat supervised training at 1% of the labels?"""
    ssl = [t for t in table if t["subject"] not in BASELINES and "ft_1pct" in t]
    sup = [t for t in table if t["subject"] == "supervised" and "ft_1pct" in t]
    if not ssl or not sup:
        return "Label efficiency at 1%: not measured (no fine-tuning result at 1% of the labels)."
    best = max(ssl, key=lambda t: t["ft_1pct"])
    ref = next((t for t in sup if t["backbone"] == best["backbone"]), sup[0])
    gap = best["ft_1pct"] - ref["ft_1pct"]
    verdict = "beats" if gap > 0 else "does not beat"
    return (f"Label efficiency at 1%: the best self-supervised model fine-tuned on 1% of the labels ({best['subject']}, "
            f"{best['ft_1pct']:.4f}) {verdict} the same {ref['backbone']} trained from scratch on the same 1% "
            f"({ref['ft_1pct']:.4f}), by {gap:+.4f}.")


def markdown(summary: dict) -> str:
    b = summary["budget"]
    head = ("| subject | backbone | kNN | linear | linear 1% | fine-tune 1% | fine-tune 10% | fine-tune 100% | status |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for t in summary["table"]:
        status = t["status"] + (f": {'; '.join(t['errors'])}" if t["errors"] else "")
        lines.append(f"| {t['subject']} | {t['backbone'] or '—'} | " + " | ".join(_cell(t, c) for c in COLUMNS) + f" | {status} |")
    notes = sorted({n for r in summary["rows"] for n in r.get("notes", [])})
    return (f"Data `{summary['data']}`, budget `{b['name']}`: {b['minutes']:g} wall-clock minutes of pretraining per method "
            f"(`{b['backbone']}`, ViT methods `{b['vit']}`), fine-tuning "
            + (f"{b['ft_minutes']:g} minutes" if b["ft_minutes"] else f"{b['ft_epochs']:g} epochs")
            + f" per run with the learning rate chosen from {list(b['ft_lrs'])} on a held-out sixth of the labels; "
            f"{summary['seeds']} seed(s), mean ± sample std. kNN and linear on the stage chosen on validation from the "
            "probe's own labels.\n\n" + "\n".join(lines) + "\n\n" + label_efficiency(summary["table"])
            + ("\n\nNotes: " + "; ".join(notes) + "." if notes else ""))


def write_csv(rows: list[dict], path: Path) -> None:
    fields = ["subject", "backbone", "seed", "status", *COLUMNS, "steps", "minutes", "commit", "config_hash", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def bar_chart(table: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure
    cols = [c for c in ("knn", "linear", "linear_1pct", "ft_1pct", "ft_100pct") if any(c in t for t in table)]
    labels = [f"{t['subject']}\n{t['backbone']}" if t["backbone"] else t["subject"] for t in table]
    fig = Figure(figsize=(max(6, 0.9 * len(table)), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(cols))
    for i, c in enumerate(cols):
        xs = [j + i * width for j in range(len(table))]
        ax.bar(xs, [t.get(c, 0.0) for t in table], width, yerr=[t.get(f"{c}_std", 0.0) for t in table], label=c)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(table))], labels, fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=len(cols))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
