"""Zero-shot classification and image-text retrieval with a trained CLIP run.

Zero-shot: each class name is put into every prompt template ("a photo of a {}."); each prompt
is embedded and L2-normalised, a class's embedding is the mean of its prompts', normalised again
(ensembling in embedding space, as CLIP); an image gets the class whose embedding is nearest.

Retrieval: every test image against every test caption. A retrieved caption counts as correct
when its text is the query image's own caption (identical captions are interchangeable: shapes
repeats them), and a retrieved image when its caption is the query caption; recall@k is the share
of queries with a correct item among the k nearest.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import DatasetSplits, ImageSet
from .. import runs
from ..runs import check_result_out
from ..errors import SelfSupError
from .evaluate import eval_splits

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")


def load_clip(checkpoint: str | Path):
    """The trained CLIP method of a run folder (image and text towers, tokenizer), in eval mode."""
    from .train import load_method
    path = Path(checkpoint)
    if not path.is_dir():
        raise SelfSupError(f"--checkpoint {checkpoint}: no such run folder")
    method = load_method(path)
    if not method.uses_captions:
        raise SelfSupError(f"--checkpoint {checkpoint}: a {type(method).__name__} run has no text tower "
                           "(zero-shot and retrieval need a clip run)")
    return method


def class_embeddings(method, class_names: list[str], templates=DEFAULT_TEMPLATES) -> torch.Tensor:
    """(num_classes, d): per class, the normalised mean of its normalised prompt embeddings."""
    templates = list(templates)
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise SelfSupError(f"--template {bad[0]!r}: must contain {{}} where the class name goes")
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = torch.nn.functional.normalize(method.embed_texts(prompts), dim=-1).view(len(class_names), len(templates), -1)
    return torch.nn.functional.normalize(emb.mean(1), dim=-1)


def zeroshot_predict(method, images: torch.Tensor, class_names: list[str], templates=DEFAULT_TEMPLATES) -> torch.Tensor:
    """Predicted class indices (N,) of uint8 images."""
    weights = class_embeddings(method, class_names, templates)
    return (method.embed_images(images) @ weights.T).argmax(1)


def _split(checkpoint, data, on: str, seed: int, data_dir=None) -> tuple[str, ImageSet]:
    dataset = runs.run_data(checkpoint, data, data_dir=data_dir)
    if on == "val" or dataset.test is None:
        return dataset.name, eval_splits(dataset, seed, "val" if on == "val" else "test")[1]
    if on != "test":
        raise SelfSupError(f"--on {on}: expected test or val")
    return dataset.name, dataset.test


def zeroshot(checkpoint: str | Path, data: str | DatasetSplits | None = None, classes: list[str] | None = None,
             templates=None, on: str = "test", seed: int = 0, data_dir: str | None = None,
             out: str | Path | None = None) -> dict:
    """Zero-shot accuracy (and confusion matrix: rows true, columns predicted) on the test split."""
    check_result_out(out, checkpoint)
    method = load_clip(checkpoint)
    name, split = _split(checkpoint, data, on, seed, data_dir)
    if split.labels is None:
        raise SelfSupError(f"--data {name}: has no labels to score zero-shot predictions against")
    names = list(classes) if classes else list(split.classes or [])
    k = int(split.labels.max()) + 1
    if not names:
        raise SelfSupError(f"--data {name}: has no class names; give them with --classes a,b,c")
    if len(names) < k:
        raise SelfSupError(f"--classes: {len(names)} names for {k} classes")
    templates = list(templates or DEFAULT_TEMPLATES)
    pred = zeroshot_predict(method, split.images, names, templates)
    conf = torch.zeros(len(names), len(names), dtype=torch.long)
    conf.index_put_((split.labels, pred), torch.ones_like(pred), accumulate=True)
    result = {"protocol": "zeroshot", "accuracy": float((pred == split.labels).float().mean()), "chance": 1 / len(names),
              "per_class": {c: float(conf[i, i] / conf[i].sum().clamp_min(1)) for i, c in enumerate(names)},
              "confusion": conf.tolist(), "classes": names, "templates": templates, "checkpoint": str(checkpoint),
              "data": name, "split": on, "n_test": len(split)}
    return _write(result, out, checkpoint, "zeroshot" + ("_val" if on == "val" else ""))


def recall_at(sim: torch.Tensor, correct: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """sim (Q, M) similarities, correct (Q, M) bool: share of queries with a correct item in the top k."""
    order = sim.argsort(dim=1, descending=True)
    hits = correct.gather(1, order)
    return {f"R@{k}": float(hits[:, :k].any(1).float().mean()) for k in ks}


def caption_matches(captions: list[str]) -> torch.Tensor:
    """(N, N) bool: pair i matches pair j when their captions are the same text."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions])
    return cid[:, None] == cid[None, :]


def retrieval(checkpoint: str | Path, data: str | DatasetSplits | None = None, on: str = "test", seed: int = 0,
              ks=(1, 5, 10), data_dir: str | None = None, out: str | Path | None = None) -> dict:
    """Image->text and text->image recall@k over the test split's image-caption pairs."""
    check_result_out(out, checkpoint)
    method = load_clip(checkpoint)
    name, split = _split(checkpoint, data, on, seed, data_dir)
    if split.captions is None:
        raise SelfSupError(f"--data {name}: has no captions to retrieve")
    img = method.embed_images(split.images)
    txt = method.embed_texts(list(split.captions))
    sim = img @ txt.T
    same = caption_matches(split.captions)
    result = {"protocol": "retrieval", "image_to_text": recall_at(sim, same, ks), "text_to_image": recall_at(sim.T, same, ks),
              "chance_R@1": float(same.float().mean()), "distinct_captions": len(set(split.captions)), "checkpoint": str(checkpoint),
              "data": name, "split": on, "n_test": len(split)}
    return _write(result, out, checkpoint, "retrieval" + ("_val" if on == "val" else ""))


def _write(result: dict, out, checkpoint, stem: str) -> dict:
    path = Path(out) if out is not None else runs.result_path(checkpoint, f"{stem}.json")
    if out is not None and not str(out).endswith(".json"):
        path = Path(out) / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json(path, result)
    result["written_to"] = str(path)
    return result
