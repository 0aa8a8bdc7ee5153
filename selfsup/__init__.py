"""selfsup: self-supervised learning on images, from pretext tasks to CLIP, in one library.

Public API (imports are lazy: ``import selfsup`` loads nothing heavy and has no side effects)::

    selfsup.METHODS            # name -> method class
    selfsup.create_backbone(name, in_chans=3, img_size=32)
    selfsup.load_dataset("fashion-mnist")
    selfsup.train("simclr", data="fashion-mnist", out="runs/simclr", epochs=5)
    selfsup.evaluate(["knn", "linear"], checkpoint="runs/simclr")
    selfsup.load_backbone("runs/simclr")   # plain nn.Module with its normalisation
    selfsup.finetune(checkpoint="runs/mae", label_fraction=0.1)   # or baseline="supervised"
    selfsup.zeroshot("runs/clip"), selfsup.retrieval("runs/clip")
    selfsup.embed("runs/simclr", out="emb.parquet")    # every image's embedding, with paths and labels
    selfsup.export("runs/simclr", "export/")           # backbone.safetensors and backbone.onnx
"""
__version__ = "0.1.0"

__all__ = ["METHODS", "BACKBONES", "create_backbone", "load_backbone", "train", "evaluate", "finetune", "zeroshot", "retrieval", "embed", "export", "load_dataset",
           "SelfSupError"]


# public name -> its module in the app layer
_APP = {"train": "train", "evaluate": "evaluate", "finetune": "finetune", "zeroshot": "zeroshot",
        "retrieval": "zeroshot", "embed": "embed", "export": "export"}


def __getattr__(name):
    if name == "METHODS":
        from .methods import METHODS
        return METHODS
    if name in ("BACKBONES", "create_backbone"):
        from . import models
        return getattr(models, name)
    if name == "load_backbone":
        from .runs import load_backbone
        return load_backbone
    if name in _APP:
        import importlib
        return getattr(importlib.import_module(f".app.{_APP[name]}", __name__), name)
    if name == "load_dataset":
        from .data.datasets import load_dataset
        return load_dataset
    if name == "SelfSupError":
        from .errors import SelfSupError
        return SelfSupError
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
