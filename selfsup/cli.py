"""The command line: ``selfsup train | eval | bench | embed | export | report | data | demo``.

``main(argv)`` takes an argument list (tests call it directly) and returns an exit status.
Every user error is one line on stderr (``selfsup: error: ...``) and status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

# OpenMP threads that spin while they wait take the core from whatever else runs (the data path, a
# second process): on the 2-core machine that cost small ops up to ~70x (benchmarks/augment_speed.py).
# The command line waits passively unless the user chose; OpenMP reads it when torch first starts it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import SelfSupError  # noqa: E402

# flags that map onto TrainConfig fields (dest -> field)
TRAIN_FLAGS = ("backbone", "epochs", "batch_size", "lr", "device", "seed", "data_dir", "download", "strict",
               "time_limit", "accumulate", "skip_nonfinite")


def _layer(value: str):
    if value == "auto":
        return value
    try:
        stages = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a stage number, stage numbers joined by commas (2,3,4), or auto, "
                                         f"got {value!r}") from None
    return stages[0] if len(stages) == 1 else stages


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder or its backbone.safetensors")
    p.add_argument("--checkpoint", default=None, help="the same as RUN (as in eval)")


def _checkpoint(args) -> str:
    if (args.run is None) == (args.checkpoint is None):
        raise SelfSupError(f"{args.command} needs one run folder: RUN or --checkpoint RUN")
    return args.run or args.checkpoint


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS
    from .models import BACKBONES

    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised learning on images.")
    p.add_argument("--version", action="version", version=f"selfsup {__import__('selfsup').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="pretrain a backbone with a method", description=(
        "Pretrain a backbone. Method settings (temperature, ...) and any other TrainConfig field "
        "(optimizer, weight_decay, warmup_epochs, grad_clip, checkpoint_every_steps, ...) are set with "
        "--set key=value or a JSON/YAML --config file."))
    t.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    t.add_argument("--data", default=None, help="dataset name (fashion-mnist, shapes, photos; options as name:key=value,...), "
                                                 "an image folder (path:stream=true reads it lazily), a folder of shards or a captions file")
    t.add_argument("--backbone", default=None, help=f"one of: {', '.join(BACKBONES)} (default: the method's)")
    t.add_argument("--epochs", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None, help="per process (and per micro-batch with --accumulate)")
    t.add_argument("--accumulate", type=int, default=None, metavar="N",
                   help="micro-batches per optimiser step: the step sees N x --batch-size images per process")
    t.add_argument("--skip-nonfinite", type=int, default=None, metavar="N",
                   help="skip up to N steps whose loss is NaN/inf instead of stopping at the first")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--time-limit", type=float, default=None, metavar="MINUTES", help="stop after this many minutes of training (the schedule follows time)")
    t.add_argument("--out", default=None, help="run folder (default: runs/METHOD-DATA-TIME)")
    t.add_argument("--config", default=None, help="JSON or YAML file of settings")
    t.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--data-dir", default=None, help="where dataset files are (also $SELFSUP_DATA)")
    t.add_argument("--download", action="store_true", default=None, help="download the dataset if it is not found")
    t.add_argument("--strict", action="store_true", default=None, help="fail on the first unreadable image instead of skipping it")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a method or training setting")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars go to stderr, and only when it is a terminal)")

    e = sub.add_parser("eval", help="evaluate a backbone or a baseline with a probe")
    e.add_argument("protocol", nargs="+", choices=["knn", "linear", "finetune", "zeroshot", "retrieval"],
                   help="one protocol, or knn and linear together (one feature pass for both)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run folder (or its backbone.safetensors)")
    src.add_argument("--baseline", choices=["random", "pixels", "supervised"],
                     help="a randomly initialised backbone or the raw pixels (knn, linear); supervised: the same "
                          "network trained from scratch on the same labels (finetune)")
    e.add_argument("--backbone", default=None, help="architecture of the random / supervised baseline")
    e.add_argument("--data", default=None, help="labelled dataset (default: the run's training data)")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--label-fraction", type=float, default=1.0, help="stratified fraction of train labels used, in (0, 1]")
    e.add_argument("--k", type=int, default=None,
                   help="kNN neighbours (default: chosen from 5..200 on a held-out sixth of the labelled bank)")
    e.add_argument("--temperature", type=float, default=0.1, help="kNN vote temperature")
    e.add_argument("--layer", type=_layer, default=None,
                   help="features from this stage/block (1-based) instead of the last; several joined by commas "
                        "(2,3,4): their features concatenated; or auto: the best single stage by kNN "
                        "on a validation part of the labelled train data (never the test split)")
    e.add_argument("--pool", choices=["avg", "grid", "cls", "mean"], default=None,
                   help="ResNet map pooling (avg: global; grid: a small spatial grid) or ViT pooling (cls | mean)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--on", choices=["test", "val"], default="test",
                   help="score on the test split, or on a held-out part of train (for choosing settings)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--out", default=None, help="result JSON, or a folder for knn and linear together "
                                               "(default: RUN_DIR/eval/PROTOCOL.json)")
    e.add_argument("--lrs", default=None, help="finetune: comma-separated learning rates, chosen on a held-out sixth "
                                               "of the labelled images and extended once past an edge "
                                               "(default: 3e-4,1e-3,3e-3,1e-2)")
    e.add_argument("--steps", type=int, default=None,
                   help="finetune: optimiser steps per training run (default: 10 epochs over the labelled images, "
                        "at least 1000 steps)")
    e.add_argument("--epochs", type=float, default=None, help="finetune: epochs over the labelled images (instead of --steps)")
    e.add_argument("--search-share", type=float, default=1.0,
                   help="finetune: each learning-rate candidate trains for this share of the budget (default 1)")
    e.add_argument("--time-limit", type=float, default=0.0, help="finetune: minutes per training run")
    e.add_argument("--batch-size", type=int, default=None, help="finetune: batch size (default 128)")
    e.add_argument("--classes", default=None, help="zeroshot: comma-separated class names (default: the dataset's)")
    e.add_argument("--template", action="append", default=[], metavar="TEXT",
                   help='zeroshot: a prompt template with {} for the class name, e.g. "a photo of a {}." (repeatable)')
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="finetune: a training or supervised-method setting (backbone_lr_scale, layer_decay, "
                        "freeze_stages, weight_decay, ...)")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bars (features, kNN, linear probe, fine-tuning runs; stderr, only on a terminal)")

    em = sub.add_parser("embed", help="embeddings of every image of a dataset, to .npy (+ .json) or .parquet",
                        description="Embed every image with a run's backbone (its normalisation, eval mode, as "
                                    "evaluation does). FILE.npy: a float32 (N, D) array and FILE.json with the settings "
                                    "and the index, split, path (folders) and label of each row; FILE.parquet: the same "
                                    "columns and an embedding list column (pip install 'selfsup[parquet]').")
    _run_args(em)
    em.add_argument("--data", default=None, help="dataset or image folder (default: the run's training data)")
    em.add_argument("--data-dir", default=None)
    em.add_argument("--out", required=True, metavar="FILE", help="FILE.npy or FILE.parquet")
    em.add_argument("--split", choices=["train", "test", "all"], default="all", help="which split(s); all: train, then test")
    em.add_argument("--layer", type=int, default=None, help="features from this stage/block (1-based) instead of the last")
    em.add_argument("--pool", choices=["avg", "grid", "cls", "mean"], default=None, help="as in eval")
    em.add_argument("--batch-size", type=int, default=512)
    em.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    ex = sub.add_parser("export", help="the backbone as safetensors and/or ONNX (with its input normalisation)",
                        description="Write backbone.safetensors and/or backbone.onnx (input: float32 images in [0, 1], "
                                    "(batch, C, H, W) at the run's size; normalisation inside the graph; checked "
                                    "against PyTorch with ONNX Runtime) and export.json into --out. ONNX needs "
                                    "pip install 'selfsup[onnx]'.")
    _run_args(ex)
    ex.add_argument("--out", required=True, metavar="DIR", help="folder for the exported files")
    ex.add_argument("--format", default="safetensors,onnx", help="comma-separated: safetensors, onnx (default both)")

    bn = sub.add_parser("bench", help="every method (or --methods) at a named budget beside the baselines",
                        description="Pretrain each self-supervised method for the budget's minutes, then kNN, linear "
                                    "(100% and 1% labels) and fine-tuning (1%, 10%; 100% for the budget's ft_full "
                                    "best), beside the same network trained from scratch (supervised), random-init and "
                                    "raw pixels. Writes OUT/bench.md, .json, .csv, .png and updates --record's section; "
                                    "units are reused when commit and config hash match. Exits 1 when any unit crashed "
                                    "or went non-finite.")
    bn.add_argument("--methods", default=None, help="comma-separated (default: every self-supervised method)")
    bn.add_argument("--data", default="fashion-mnist", help="a labelled dataset (default fashion-mnist)")
    bn.add_argument("--data-dir", default=None)
    bn.add_argument("--budget", default="smoke", help="smoke | cpu | gpu (selfsup/budgets.py)")
    bn.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; tables give mean ± std")
    bn.add_argument("--out", default=None, help="folder (default runs/bench-BUDGET-DATA)")
    bn.add_argument("--record", default="BENCHMARKS.md", metavar="FILE",
                    help="markdown file whose bench section is rewritten (default BENCHMARKS.md)")
    bn.add_argument("--no-record", action="store_true", help="do not touch --record's file")
    bn.add_argument("--no-progress", action="store_true",
                    help="no progress bars (the units, with time left; stderr, only on a terminal)")

    r = sub.add_parser("report", help="one self-contained HTML page about a run: curves, views, pictures, "
                                      "embedding map, nearest neighbours, evaluations")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--data", default=None, help="images to show and embed (default: the run's training data)")
    r.add_argument("--data-dir", default=None)
    r.add_argument("--out", default=None, help="HTML file (default: RUN_DIR/report.html)")
    r.add_argument("--seed", type=int, default=0, help="which images are sampled for views, map and queries")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    d = sub.add_parser("data", help="list datasets, describe one or write it as shards")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dsub.add_parser("list", help="built-in datasets")
    di = dsub.add_parser("info", help="splits, sizes, classes of a dataset")
    di.add_argument("data")
    di.add_argument("--data-dir", default=None)
    di.add_argument("--download", action="store_true")
    sh = dsub.add_parser("shard", help="write a dataset as WebDataset tar shards, to stream it", description=(
        "Write SOURCE as OUT/train/shard-000000.tar, ... (and OUT/test/ when it has a test split) plus "
        "OUT/index.json. Each sample is KEY.png (or .jpg), KEY.cls (label) and KEY.txt (caption) when known. "
        "Train from it with --data OUT."))
    sh.add_argument("source", help="any DATA: a dataset name with options, a folder (read streamed), a captions file, shards")
    sh.add_argument("--out", required=True, help="folder to write (new or empty)")
    sh.add_argument("--shard-mb", type=float, default=256, help="size of each shard in MiB (default 256)")
    sh.add_argument("--format", choices=["png", "jpg"], default="png", help="png: lossless (default); jpg: quality 95")
    sh.add_argument("--overwrite", action="store_true", help="replace shards written before in --out")
    sh.add_argument("--data-dir", default=None)
    sh.add_argument("--download", action="store_true")
    sh.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping it")

    m = sub.add_parser("demo", help="pretrain SimCLR on Fashion-MNIST for a few minutes, then compare with the baselines")
    m.add_argument("--minutes", type=float, default=10.0, help="training time")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--data", default="fashion-mnist")
    m.add_argument("--no-progress", action="store_true", help="no progress bars (stderr, only on a terminal)")
    return p


def _train(args) -> int:
    from .config import parse_set, read_config_file
    from .app.train import end_processes, train

    overrides = read_config_file(args.config) if args.config else {}
    overrides.update(parse_set(args.set))
    for flag in TRAIN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = value
    if args.data is not None:
        overrides["data"] = args.data
    elif not args.resume and "data" not in overrides:
        raise SelfSupError("--data is required (e.g. --data fashion-mnist)")
    out = args.out
    if out is None:
        if args.resume:
            raise SelfSupError("--resume needs --out RUN_DIR")
        name = Path(str(overrides["data"]).split(":")[0]).name
        out = f"runs/{args.method}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    main_process = True
    try:
        result = train(args.method, out=out, resume=args.resume, overwrite=args.overwrite,
                       progress=False if args.no_progress else None, **overrides)
    finally:
        main_process = end_processes()
    if not main_process:
        return 0
    print(f"trained {result.config.method} for {result.steps} steps: loss {result.last_loss:.4f}, "
          f"{result.images_per_s:.0f} images/s; run folder {out}")
    return 0


def _eval(args) -> int:
    from .app.evaluate import evaluate

    protocols = list(dict.fromkeys(args.protocol))   # in the order given, once each
    if len(protocols) > 1:
        if not set(protocols) <= {"knn", "linear"}:
            raise SelfSupError(f"eval {' '.join(protocols)}: only knn and linear run together; "
                               "give the others one at a time")
        if args.out is not None and str(args.out).endswith(".json"):
            raise SelfSupError(f"--out {args.out}: names one JSON file; give a folder for knn and linear together")
    args.protocol = protocols[0]
    if args.protocol == "finetune":
        return _finetune(args)
    if args.protocol in ("zeroshot", "retrieval"):
        return _zeroshot(args)
    for opt, given in (("--classes", args.classes), ("--template", args.template)):
        if given:
            raise SelfSupError(f"{opt} applies to eval zeroshot only")
    if args.baseline == "supervised":
        raise SelfSupError("--baseline supervised is fine-tuning's from-scratch arm: use it with eval finetune")
    for opt, given in (("--lrs", args.lrs), ("--steps", args.steps), ("--epochs", args.epochs), ("--time-limit", args.time_limit),
                       ("--search-share", args.search_share != 1.0),
                       ("--batch-size", args.batch_size), ("--set", args.set)):
        if given:
            raise SelfSupError(f"{opt} applies to eval finetune only")

    results = evaluate(protocols, checkpoint=args.checkpoint, data=args.data, baseline=args.baseline,
                       backbone=args.backbone, label_fraction=args.label_fraction, seed=args.seed, k=args.k,
                       temperature=args.temperature, layer=args.layer, pool=args.pool, device=args.device,
                       data_dir=args.data_dir, out=args.out, on=args.on,
                       progress=False if args.no_progress else None)
    for protocol in protocols:
        res = results[protocol]
        who = res.get("checkpoint") or f"{res['baseline']} baseline"
        print(f"{protocol} accuracy {res['accuracy']:.4f} ({who}, {res['data']}, "
              f"{res['n_train']} train / {res['n_test']} test, label fraction {res['label_fraction']:g})")
        if "written_to" in res:
            print(f"written to {res['written_to']}")
    return 0


def _zeroshot(args) -> int:
    from .app.zeroshot import retrieval, zeroshot

    if args.checkpoint is None:
        raise SelfSupError(f"eval {args.protocol} needs --checkpoint RUN_DIR (a clip run); baselines have no text tower")
    if args.protocol == "zeroshot":
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        res = zeroshot(args.checkpoint, data=args.data, classes=classes, templates=args.template or None, on=args.on,
                       seed=args.seed, data_dir=args.data_dir, out=args.out)
        print(f"zeroshot accuracy {res['accuracy']:.4f} (chance {res['chance']:.4f}; {res['data']}, {res['n_test']} images, "
              f"{len(res['classes'])} classes, {len(res['templates'])} template(s))")
    else:
        if args.classes or args.template:
            raise SelfSupError("--classes and --template apply to eval zeroshot only")
        res = retrieval(args.checkpoint, data=args.data, on=args.on, seed=args.seed, data_dir=args.data_dir, out=args.out)
        fmt = lambda d: " ".join(f"{k} {v:.3f}" for k, v in d.items())  # noqa: E731
        print(f"image->text {fmt(res['image_to_text'])}; text->image {fmt(res['text_to_image'])} "
              f"({res['data']}, {res['n_test']} pairs)")
    print(f"written to {res['written_to']}")
    return 0


def _finetune(args) -> int:
    from .app.finetune import finetune

    if args.baseline in ("random", "pixels"):
        raise SelfSupError("eval finetune compares with --baseline supervised (random and pixels are frozen-feature baselines)")
    for opt, given in (("--layer", args.layer), ("--pool", args.pool)):
        if given is not None:
            raise SelfSupError(f"{opt} applies to knn and linear only (fine-tuning trains the whole backbone)")
    for opt, given in (("--classes", args.classes), ("--template", args.template)):
        if given:
            raise SelfSupError(f"{opt} applies to eval zeroshot only")
    from .config import parse_set
    settings = parse_set(args.set)
    lrs = None
    if args.lrs:
        try:
            lrs = [float(x) for x in args.lrs.split(",") if x.strip()]
        except ValueError:
            raise SelfSupError(f"--lrs {args.lrs}: expected comma-separated numbers") from None
    res = finetune(checkpoint=args.checkpoint, data=args.data, baseline=args.baseline, backbone=args.backbone,
                   label_fraction=args.label_fraction, seed=args.seed, lrs=lrs, steps=args.steps, epochs=args.epochs,
                   time_limit=args.time_limit, batch_size=args.batch_size, on=args.on, device=args.device,
                   search_share=args.search_share,
                   data_dir=args.data_dir, out=args.out, progress=False if args.no_progress else None, **settings)
    who = res.get("checkpoint") or "supervised from scratch"
    print(f"finetune accuracy {res['accuracy']:.4f} ({who}, {res['backbone']}, {res['data']}, {res['n_train']} train / "
          f"{res['n_test']} test, label fraction {res['label_fraction']:g}, lr {res['lr']:g}, {res['epochs']} epochs)")
    if "written_to" in res:
        print(f"written to {res['written_to']}")
    return 0


def _embed(args) -> int:
    from .app.embed import embed

    res = embed(_checkpoint(args), data=args.data, out=args.out, split=args.split, layer=args.layer, pool=args.pool,
                batch_size=args.batch_size, device=args.device, data_dir=args.data_dir)
    meta = res["meta"]
    side = f" and {Path(args.out).with_suffix('.json')}" if Path(args.out).suffix.lower() == ".npy" else ""
    print(f"embedded {meta['n']} images ({meta['data']}, split {meta['split']}) as {meta['dim']}-d vectors: "
          f"{args.out}{side}")
    return 0


def _export(args) -> int:
    from .app.export import export

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    res = export(_checkpoint(args), args.out, formats)
    diff = f" (ONNX Runtime within {res['onnx_max_abs_diff']:.1e} of PyTorch)" if "onnx" in res["files"] else ""
    print(f"exported {res['backbone']} to {args.out}: {', '.join(res['files'].values())}, export.json{diff}")
    return 0


def _bench(args) -> int:
    import shlex

    from .app.bench import bench, failed, markdown, record_section
    from .atomic import check_writable
    if not args.no_record:
        check_writable(args.record, "--record", "file")   # before the bench, not after it
    summary = bench(methods=args.methods, data=args.data, budget=args.budget, seeds=args.seeds, out=args.out,
                    data_dir=args.data_dir, progress=False if args.no_progress else None)
    body = markdown(summary)
    print(body)
    command = [*(["--methods", args.methods] if args.methods else []), "--data", args.data, "--budget", args.budget,
               "--seeds", str(args.seeds), *(["--out", args.out] if args.out else [])]
    if not args.no_record:
        name = f"bench-{summary['budget']['name']}-{summary['data'].split(':')[0]}"
        record_section(Path(args.record), name, f"selfsup bench: {summary['data']}, budget {summary['budget']['name']}",
                       body, "selfsup bench " + shlex.join(command))
        print(f"recorded in {args.record} (section {name})")
    print(f"tables and chart in {summary['out']} (bench.md, bench.json, bench.csv, bench.png)")
    bad = failed(summary)
    if bad:
        print(f"selfsup: error: {len(bad)} unit(s) failed: " + "; ".join(
            f"{r['subject']} seed {r['seed']}: {r['status']} ({r.get('error', '')})" for r in bad), file=sys.stderr)
        return 1
    return 0


def _report(args) -> int:
    from .app.report import build_report
    path = build_report(args.run_dir, data=args.data, out=args.out, data_dir=args.data_dir, seed=args.seed,
                        device=args.device)
    print(f"report written to {path}")
    return 0


def _data(args) -> int:
    from .app.data import DATASETS, load_dataset

    if args.data_command == "list":
        for name in sorted(DATASETS):
            print(name)
        print("(or a path: a folder of images, class sub-folders give labels, train/ and test/ give splits; "
              "a folder of WebDataset shards; a captions CSV/JSONL file)")
        return 0
    if args.data_command == "shard":
        from .app.data import write_shards
        index = write_shards(args.source, args.out, shard_mb=args.shard_mb, image_format=args.format,
                             overwrite=args.overwrite, data_dir=args.data_dir, download=args.download, strict=args.strict)
        counts = " / ".join(f"{s['samples']} {name}" for name, s in index["splits"].items())
        extras = "".join(f", {k}" for k in ("labels", "captions") if index[k])
        n = sum(len(s["shards"]) for s in index["splits"].values())
        print(f"wrote {n} shard(s) to {args.out}: {counts} images ({index['channels']} channel(s), "
              f"{index['image_size']} px, {index['image_format']}{extras})")
        return 0
    ds = load_dataset(args.data, data_dir=args.data_dir, download=args.download)
    info = {"name": ds.name, "fingerprint": ds.fingerprint, **ds.info}
    for split in ("train", "test"):
        s = getattr(ds, split)
        if s is not None:
            info[split] = {"images": len(s), "channels": s.channels, "size": list(s.image_size),
                           "labelled": s.labels is not None, "captions": s.captions is not None}
    first = ds.train
    if first.classes:
        info["classes"] = first.classes
    print(json.dumps(info, indent=2))
    return 0


def _demo(args) -> int:
    from .app.demo import run_demo
    return run_demo(minutes=args.minutes, out=args.out, data=args.data, progress=False if args.no_progress else None)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="selfsup: %(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "bench": _bench, "embed": _embed, "export": _export, "report": _report,
                "data": _data, "demo": _demo}[args.command](args)
    except SelfSupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted (a run continues from its last checkpoint with --resume)", file=sys.stderr)
        return 130
