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
from ..atomic import check_writable
from ..data.datasets import DatasetSplits, label_subset, load_dataset
from ..errors import SelfSupError
from ..progress import bar, printing
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
    # the vector instructions torch dispatches to, and native bf16: machines with the same model name
    # here differ 2x in speed by these (an AVX2-only EPYC trains in fp32; where bf16 is native,
    # cpu_bf16=auto still times both precisions and may keep fp32, as on an Intel Xeon without AMX)
    from ..engine.loop import native_bf16
    isa = torch.backends.cpu.get_cpu_capability() + (", native bf16" if native_bf16() else ", no native bf16")
    dev = f", CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu} ({isa}), {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{dev}"


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

def _probe(kw: dict, data: DatasetSplits, seed: int, fraction: float, progress: bool | None = False) -> dict:
    from .evaluate import eval_splits, evaluate
    train_split, _ = eval_splits(data, seed)
    n = len(label_subset(train_split, fraction, seed))
    layer = "auto" if n >= MIN_SELECT and kw.get("baseline") != "pixels" else None
    protocols = ["knn", "linear"] if fraction == 1.0 else ["linear"]
    res = evaluate(protocols, data=data, seed=seed, label_fraction=fraction, layer=layer, progress=progress, **kw)
    key = "" if fraction == 1.0 else f"_{_pct(fraction)}"
    return {f"{p}{key}": res[p]["accuracy"] for p in protocols} | {f"layer{key}": res[protocols[0]]["layer"]}


def _finetunes(kw: dict, data: DatasetSplits, seed: int, budget: Budget, row: dict, fractions=FT_FRACTIONS,
               progress: bool | None = False) -> None:
    from .evaluate import eval_splits
    from .finetune import batch_size_for, default_steps, finetune
    train_split, _ = eval_splits(data, seed)
    if "checkpoint" in kw:
        from ..runs import load_backbone
        space = load_backbone(kw["checkpoint"]).meta.get("input_space", "rgb")
        if space != "rgb":
            row.setdefault("notes", []).append(f"fine-tuning: {row['subject']}'s backbone sees {space}, which the "
                                               "supervised fine-tuning does not feed yet")
            return
    for fraction in fractions:
        col = f"ft_{_pct(fraction)}"
        n = len(label_subset(train_split, fraction, seed))
        if n < MIN_FINETUNE:
            row.setdefault("notes", []).append(f"{col}: fewer than {MIN_FINETUNE} labelled images")
            continue
        if budget.ft_minutes:
            timing = {"time_limit": budget.ft_minutes}
        else:
            timing = {"steps": default_steps(n, batch_size_for(n), budget.ft_epochs, budget.ft_min_steps)}
        res = finetune(data=data, label_fraction=fraction, seed=seed, lrs=list(budget.ft_lrs), progress=progress,
                       search_share=budget.ft_search_share, **timing, **kw)
        row[col] = res["accuracy"]
        row[f"{col}_lr"] = res["lr"]
        row[f"{col}_steps"] = res["steps"]
        if res.get("short"):
            row[f"{col}_short"] = res["short"]


def subsample(data: DatasetSplits, budget: Budget, seed: int = 0) -> DatasetSplits:
    """The budget's stratified subset of train (and test), or ``data`` itself."""
    def cut(split, n):
        if not n or split is None or len(split) <= n:
            return split
        if split.labels is None:
            return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values)
        return label_subset(split, n / len(split), seed)
    if not budget.subsample and not budget.test_subsample:
        return data
    return dataclasses.replace(data, name=data.name, train=cut(data.train, budget.subsample),
                               test=cut(data.test, budget.test_subsample))


def _unit_fractions(budget: Budget) -> list[float]:
    """The label fractions a unit fine-tunes at itself: all, or below 100% where the budget limits
    the 100% runs to chosen subjects (each then a ``ft100`` part)."""
    return list(FT_FRACTIONS) if budget.ft_full < 0 else [f for f in FT_FRACTIONS if f < 1.0]


def _load1() -> float | None:
    """The 1-minute load average, where the platform has one."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def run_unit(subject: str, backbone: str, data: DatasetSplits, seed: int, budget: Budget, out: Path,
             part: str = "", progress: bool | None = False) -> dict:
    """Train (for a method) and evaluate one unit; never raises for the unit's own failures.
    ``part="ft100"``: fine-tune the method's run (already trained) on 100% of the labels.
    ``progress``: the bars of its training, evaluations and fine-tuning runs (as ``train``)."""
    row = {"subject": subject, "backbone": backbone, "seed": seed, "status": "ok"}
    t0 = time.time()
    try:
        if part == "ft100":
            row["part"] = part
            kw = ({"baseline": "supervised", "backbone": backbone} if subject == "supervised"
                  else {"checkpoint": out / "runs" / f"{subject}-seed{seed}"})
            _finetunes(kw, data, seed, budget, row, [1.0], progress=progress)
        elif subject == "pixels":
            for f in PROBE_FRACTIONS:
                row.update(_probe({"baseline": "pixels"}, data, seed, f, progress))
        elif subject == "random":
            for f in PROBE_FRACTIONS:
                row.update(_probe({"baseline": "random", "backbone": backbone}, data, seed, f, progress))
        elif subject == "supervised":
            _finetunes({"baseline": "supervised", "backbone": backbone}, data, seed, budget, row,
                       _unit_fractions(budget), progress=progress)
        else:
            from .train import train
            from ..methods import get_method
            cls = get_method(subject)
            why = (f"needs image-caption data; {data.name} has none" if cls.uses_captions and data.train.captions is None
                   else f"needs colour (RGB) images; {data.name} has {data.train.channels} channel(s)"
                   if cls.input_space == "lab_l" and data.train.channels != 3 else None)
            if why:   # the method cannot use this data: a skipped row, not a failure
                row.update(status="skipped", notes=[f"{subject} {why}"], minutes=0.0)
                return row
            run_dir = out / "runs" / f"{subject}-seed{seed}"
            res = train(subject, data=data, out=run_dir, overwrite=True, progress=progress, backbone=backbone,
                        time_limit=budget.minutes, epochs=budget.max_epochs, seed=seed)
            row.update(steps=res.steps, images_per_s=round(res.images_per_s, 1), run_dir=str(run_dir),
                       train_minutes=round((time.time() - t0) / 60, 2))
            for f in PROBE_FRACTIONS:
                row.update(_probe({"checkpoint": run_dir}, data, seed, f, progress))
            _finetunes({"checkpoint": run_dir}, data, seed, budget, row, _unit_fractions(budget), progress=progress)
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
        from .train import resolved_config
        name = "supervised" if subject == "supervised" else subject
        key["config"] = resolved_config(name, {"backbone": backbone, "seed": seed})
    return key


# ----------------------------------------------------------------------------- the bench

def bench(methods: str | None = None, data: str = "fashion-mnist", budget: str = "smoke", seeds: int = 1,
          out: str | Path | None = None, data_dir: str | None = None, log=print, progress: bool | None = None) -> dict:
    """Run (or reuse) every unit and write OUT/bench.{json,csv,md,png} and OUT/label_efficiency.png;
    returns the summary dict.

    ``progress``: a bar on stderr over the units, naming the unit now running, with how many are
    left and the time left estimated from the finished units' mean (None: when stderr is a
    terminal; False: never)."""
    if seeds < 1:
        raise SelfSupError(f"--seeds must be at least 1, got {seeds}")
    b = get_budget(budget)
    names = select_methods(methods)
    out = check_writable(out or f"runs/bench-{b.name}-{Path(data.split(':')[0]).name}", "--out")   # before any work
    splits = load_dataset(data, data_dir=data_dir)
    if splits.train.labels is None:
        raise SelfSupError(f"--data {data}: has no labels; the bench scores every method with labelled probes")
    splits = subsample(splits, b)
    (out / "results").mkdir(parents=True, exist_ok=True)
    commit = clean_commit()
    rows, spent = [], []   # spent: each unit's minutes (ft100 parts included), as run or as recorded when reused
    load_before = _load1()

    def unit(subject: str, backbone: str, seed: int, part: str = "") -> dict:
        key = unit_key(subject, backbone, splits, seed, b) | ({"part": part} if part else {})
        h = config_hash(key)
        path = out / "results" / f"{subject}{'-' + backbone if backbone else ''}{'-' + part if part else ''}-seed{seed}.json"
        if path.exists() and commit is not None:
            old = json.loads(path.read_text())
            if old.get("commit") == commit and old.get("config_hash") == h:
                with printing():
                    log(f"reused {path.name} ({old['status']})")
                shown_bar.update(1)
                spent.append(old.get("minutes", 0.0))
                return old
        shown_bar.set_postfix_str(f"{subject} {backbone} {part} seed {seed}".replace("  ", " "))
        row = run_unit(subject, backbone, splits, seed, b, out, part, progress=progress)
        row.update(commit=commit or (rundir.git_commit() or "unknown") + "+dirty", config_hash=h)
        rundir.write_json(path, row)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k in COLUMNS}
        with printing():
            log(f"{subject} {backbone}{' ' + part if part else ''} seed {seed}: {row['status']} "
                f"{row.get('error', '')} {shown} ({row['minutes']:.1f} min)".replace("  ", " "))
        shown_bar.update(1)
        spent.append(row["minutes"])
        return row

    units = plan(names, b)
    full = 0 if b.ft_full < 0 else min(b.ft_full, len(names)) + 1   # (+ supervised; a ViT among the best adds one)
    # smoothing=0: the time left is the mean of the finished units times those left
    shown_bar = bar(total=seeds * (len(units) + full), progress=progress, desc="bench", unit="unit", smoothing=0,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} units [{elapsed}<{remaining}]{postfix}")
    try:
        for seed in range(seeds):
            seed_rows = [unit(subject, backbone, seed) for subject, backbone in units]
            chosen = full_finetune_subjects(seed_rows, b)
            shown_bar.total += len(chosen) - full
            for subject, backbone in chosen:
                extra = unit(subject, backbone, seed, "ft100")
                row = next(r for r in seed_rows if r["subject"] == subject and r["backbone"] == backbone)
                merge_part(row, extra)
            rows += seed_rows
    finally:
        shown_bar.close()
    summary = {"data": splits.name, "data_spec": data, "budget": dataclasses.asdict(b), "seeds": seeds, "rows": rows,
               "table": aggregate(rows), "unit_minutes": round(sum(spent), 1), "units": len(spent),
               "load": [load_before, _load1()], "machine": machine()}
    rundir.write_json(out / "bench.json", summary)
    write_csv(rows, out / "bench.csv")
    (out / "bench.md").write_text(markdown(summary) + "\n")
    bar_chart(summary["table"], out / "bench.png", f"{splits.name}, budget {b.name}")
    efficiency_plot(summary["table"], out / "label_efficiency.png", f"{splits.name}, budget {b.name}")
    summary["out"] = str(out)
    return summary


def full_finetune_subjects(rows: list[dict], budget: Budget) -> list[tuple[str, str]]:
    """The units that also fine-tune on 100% of the labels: the best ``budget.ft_full``
    self-supervised methods by linear probe, then the supervised arm on the budget's backbone and
    on each of theirs, so every 100% figure has its from-scratch reference (none when every unit
    already did, ``ft_full`` < 0)."""
    if budget.ft_full < 0:
        return []
    ssl = [r for r in rows if r["subject"] not in BASELINES and r["status"] == "ok" and isinstance(r.get("linear"), float)]
    ssl.sort(key=lambda r: -r["linear"])
    best = [(r["subject"], r["backbone"]) for r in ssl[:budget.ft_full]]
    ran = {r["backbone"] for r in rows if r["subject"] == "supervised"}
    backbones = [b for b in dict.fromkeys([budget.backbone, *(b for _, b in best)]) if b in ran]
    return best + [("supervised", b) for b in backbones]


def merge_part(row: dict, part: dict) -> None:
    """A ft100 unit's columns into its method's row (its failure too)."""
    for k, v in part.items():
        if k.startswith("ft_"):
            row[k] = v
    row.setdefault("notes", []).extend(part.get("notes", []))
    if part["status"] != "ok":
        row["status"], row["error"] = part["status"], f"ft100: {part.get('error', '')}"


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
            short = sorted({r[f"{c}_short"] for r in rs if r.get(f"{c}_short")})
            if short:
                line[f"{c}_short"] = "; ".join(short)
        table.append(line)
    return table


def _cell(line: dict, c: str) -> str:
    if c not in line:
        return "—"
    return (f"{line[c]:.4f}" + (f" ± {line[c + '_std']:.4f}" if line["seeds"] > 1 else "")
            + (" (short)" if line.get(f"{c}_short") else ""))


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


MARGIN = 0.01   # "learns": each probe at least this far above both baselines (issue 17's one point)


def beats_baselines(table: list[dict], margin: float = MARGIN) -> dict:
    """For each self-supervised line: per probe (kNN, linear), its mean minus the better of the
    random-init network of its own backbone (its best stage) and the raw pixels, and whether that
    is at least ``margin``. ``{(subject, backbone): {"knn": (gap, ok), "linear": (gap, ok)}}``;
    a probe missing on either side is left out."""
    out = {}
    for t in table:
        if t["subject"] in BASELINES:
            continue
        refs = [r for r in table if (r["subject"] == "random" and r["backbone"] == t["backbone"]) or r["subject"] == "pixels"]
        got = {}
        for c in ("knn", "linear"):
            vals = [r[c] for r in refs if c in r]
            if c in t and len(vals) == 2:
                gap = t[c] - max(vals)
                got[c] = (gap, gap >= margin - 1e-12)
        out[(t["subject"], t["backbone"])] = got
    return out


def learns(beats: dict) -> str:
    """The plain answer: which methods beat both baselines by the margin on both probes."""
    skipped = [s for (s, _), g in beats.items() if not g]   # no probe ran (skipped, failed): not counted as "not"
    measured = {k: g for k, g in beats.items() if g}
    tail = f" Not measured: {', '.join(skipped)}." if skipped else ""
    if not measured:
        return "Learns: no self-supervised method was measured." + tail
    yes = [s for (s, _), g in measured.items() if len(g) == 2 and all(ok for _, ok in g.values())]
    no = [s for (s, _), g in measured.items() if s not in yes]
    return (f"Learns (kNN and linear each at least {100 * MARGIN:g} point above both the random-init network of its "
            f"own backbone, its best stage, and the raw pixels): {len(yes)} of {len(measured)} methods"
            + (f" ({', '.join(yes)})" if yes else "") + (f"; not: {', '.join(no)}" if no else "") + "." + tail)


def _beats_cell(got: dict) -> str:
    parts = [f"{'yes' if got[c][1] else 'no'} ({100 * got[c][0]:+.1f})" if c in got else "—" for c in ("knn", "linear")]
    return " / ".join(parts)


def markdown(summary: dict) -> str:
    b = summary["budget"]
    head = ("| subject | backbone | kNN | linear | linear 1% | fine-tune 1% | fine-tune 10% | fine-tune 100% "
            f"| beats random-init and pixels by ≥ {100 * MARGIN:g} pt? kNN / linear (points over the better) | status |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    lines = [head]
    beats = beats_baselines(summary["table"])
    for t in summary["table"]:
        status = t["status"] + (f": {'; '.join(t['errors'])}" if t["errors"] else "")
        verdict = _beats_cell(beats[(t["subject"], t["backbone"])]) if (t["subject"], t["backbone"]) in beats else "—"
        lines.append(f"| {t['subject']} | {t['backbone'] or '—'} | " + " | ".join(_cell(t, c) for c in COLUMNS)
                     + f" | {verdict} | {status} |")
    notes = sorted({n for r in summary["rows"] for n in r.get("notes", [])})
    short = sorted({f"{t['subject']} {c}: {t[c + '_short']}" for t in summary["table"] for c in COLUMNS
                    if t.get(f"{c}_short")})
    if short:
        notes.append("(short) marks a fine-tuning run too short to converge: " + "; ".join(short))
    sub = (f" **Subsampled**: {b['subsample']} training and {b['test_subsample'] or 'all'} test images (stratified), "
           "so the figures say whether everything runs, not how well." if b.get("subsample") else "")
    full = ("" if b.get("ft_full", -1) < 0 else
            f" Fine-tuning on 100% of the labels: the best {b['ft_full']} method(s) by linear probe, and supervised "
            "on their backbones and on the budget's.")
    budget_ft = (f"{b['ft_minutes']:g} minutes" if b["ft_minutes"] else
                 f"{b['ft_epochs']:g} epochs over the labelled images (at least {b['ft_min_steps']} steps)")
    return (f"Data `{summary['data']}`, budget `{b['name']}`: {b['minutes']:g} wall-clock minutes of pretraining per method "
            f"(`{b['backbone']}`, ViT methods `{b['vit']}`), fine-tuning " + budget_ft
            + f" per run with the learning rate chosen from {list(b['ft_lrs'])} on a held-out sixth of the labels "
            + (f"(each candidate training {b['ft_search_share']:g} of the run's steps; extended once past a winning edge); "
               if b.get("ft_search_share", 1.0) != 1.0 else "(extended once past a winning edge); ")
            + f"{summary['seeds']} seed(s), mean ± sample std. kNN and linear on the stage chosen on validation from the "
            "probe's own labels." + sub + full + "\n\n" + "\n".join(lines) + "\n\n" + learns(beats) + "\n\n"
            + label_efficiency(summary["table"])
            + ("\n\nNotes: " + "; ".join(notes) + "." if notes else "") + _timing(summary))


def _timing(summary: dict) -> str:
    """How long the units took (the sum of their own minutes, reused ones as recorded), per seed."""
    load = summary["load"]
    where = (f"; 1-minute load average {load[0]:.2f} at the start and {load[1]:.2f} at the end of this invocation"
             if None not in load else "")
    return (f"\n\nTime: {summary['units']} units took {summary['unit_minutes']:g} minutes in all, "
            f"{summary['unit_minutes'] / summary['seeds']:.1f} per seed, on {summary.get('machine', 'this machine')}"
            f"{where}. Images/s of each pretraining run are in bench.json.")


def write_csv(rows: list[dict], path: Path) -> None:
    fields = ["subject", "backbone", "seed", "status", *COLUMNS, "steps", "minutes", "commit", "config_hash", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


CHART_COLUMNS = {"knn": "kNN", "linear": "linear", "linear_1pct": "linear, 1% labels", "ft_1pct": "fine-tune, 1%",
                 "ft_10pct": "fine-tune, 10%", "ft_100pct": "fine-tune, 100%"}


def _drawn(table: list[dict]) -> tuple[list[dict], list[str]]:
    """The lines with at least one figure, and the names of those without (skipped or failed)."""
    drawn = [t for t in table if any(c in t for c in COLUMNS)]
    left = [f"{t['subject']} ({t['status']})" for t in table if t not in drawn]
    return drawn, left


def _label(t: dict) -> str:
    return f"{t['subject']} · {t['backbone']}" if t["backbone"] else t["subject"]


def bar_chart(table: list[dict], path: Path, title: str) -> None:
    """One panel per measure, subjects as horizontal bars (names never overlap), each panel's axis
    spanning its own figures, error bars over seeds; skipped subjects listed under the chart."""
    from matplotlib.figure import Figure
    drawn, left = _drawn(table)
    cols = [c for c in CHART_COLUMNS if any(c in t for t in drawn)]
    if not cols:
        cols = ["knn"]
    ncols = min(3, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig = Figure(figsize=(3.3 * ncols + 1.8, nrows * (0.3 * max(4, len(drawn)) + 1.0) + 0.5))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    ys = list(range(len(drawn)))[::-1]
    for ax, c in zip(axes, cols):
        vals = [t.get(c) for t in drawn]
        got = [v for v in vals if v is not None]
        colours = ["#888888" if t["subject"] in BASELINES else "#3b75af" for t in drawn]
        ax.barh(ys, [v if v is not None else 0 for v in vals], xerr=[t.get(f"{c}_std", 0.0) if c in t else 0 for t in drawn],
                color=colours, height=0.7, error_kw={"elinewidth": 0.8, "capsize": 2})
        if got:
            lo, hi = min(got), max(got)
            pad = max(0.01, 0.08 * (hi - lo))
            ax.set_xlim(max(0.0, lo - 3 * pad), min(1.0, hi + pad) if hi + pad <= 1 else 1.0)
        for y, v in zip(ys, vals):
            if v is None:
                ax.text(ax.get_xlim()[0], y, " —", va="center", fontsize=7, color="#666666")
        ax.set_title(CHART_COLUMNS[c], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for i, ax in enumerate(axes[:len(cols)]):
        ax.set_yticks(ys, [_label(t) for t in drawn] if i % ncols == 0 else [], fontsize=8)
    fig.suptitle(f"{title}: test accuracy (grey: baselines; each axis spans its own column)", fontsize=9)
    if left:
        fig.text(0.01, 0.01, "not drawn: " + ", ".join(left), fontsize=7, color="#444444")
    fig.tight_layout(rect=(0, 0.04 if left else 0, 1, 0.95))
    fig.savefig(path, dpi=110)


def efficiency_plot(table: list[dict], path: Path, title: str) -> None:
    """Accuracy against the fraction of labels (log axis): one line per fine-tuned subject, the
    supervised baseline dashed, error bars over seeds; the frozen linear probe at 1% and 100% dotted."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    fractions = {"ft_1pct": 0.01, "ft_10pct": 0.1, "ft_100pct": 1.0}
    drawn = 0
    for t in table:
        pts = [(f, t[c], t.get(f"{c}_std", 0.0)) for c, f in fractions.items() if c in t]
        if not pts:
            continue
        xs, ys, es = zip(*pts)
        sup = t["subject"] == "supervised"
        line = ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, linewidth=1.8 if sup else 1.2,
                           linestyle="--" if sup else "-", color="black" if sup else None,
                           label=f"{_label(t)}{' (from scratch)' if sup else ' (fine-tuned)'}")
        lin = [(f, t[c], t.get(f"{c}_std", 0.0)) for c, f in (("linear_1pct", 0.01), ("linear_10pct", 0.1), ("linear", 1.0)) if c in t]
        if lin and not sup:
            lx, ly, le = zip(*lin)
            ax.errorbar(lx, ly, yerr=le, linestyle=":", marker="s", ms=3, capsize=2, linewidth=1,
                        color=line[0].get_color(), alpha=0.7)
        drawn += 1
    ax.set_xscale("log")
    ax.set_xticks([0.01, 0.1, 1.0], ["1%", "10%", "100%"])
    ax.set_xlabel("labelled training images (fraction of the train split)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}: label efficiency (dotted: frozen linear probe)", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no fine-tuning results", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
