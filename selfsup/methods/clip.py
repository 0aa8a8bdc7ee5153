"""CLIP: contrastive image-text pretraining, for zero-shot classification and retrieval.

Radford, Kim, Hallacy, Ramesh, Goh, Agarwal, Sastry, Askell, Mishkin, Clark, Krueger, Sutskever.
"Learning Transferable Visual Models From Natural Language Supervision", ICML 2021.
https://arxiv.org/abs/2103.00020

Any registered image backbone is the image tower; the text tower is a causal Transformer over a
byte-level BPE tokenizer trained on the run's own captions (:mod:`selfsup.models.text`). Linear
projections (no bias) take both to a shared space, where embeddings are L2-normalised; logits
are ``exp(s) * I T^T`` with a learnable ``s`` initialised to ln(1/0.07) and clamped to at most
ln(100) after every optimiser step; the loss is the mean of the cross-entropies over rows and
columns. Across processes the embeddings are gathered with gradient: by default every process
computes the whole global similarity matrix; with ``local_loss`` each computes only its own rows
against the gathered columns (and its own columns against the gathered rows), memory linear in
the global batch, the same gradient (tested).

The only image augmentation is a random square crop of most of the image (CLIP's), without
flips by default: captions may say "left" and "right". The tokenizer is trained in ``prepare``
from every training caption, kept in the checkpoint (a byte buffer) and written to the run
folder as ``tokenizer.json``.

With ``text_model`` set, the text tower is instead a locked pretrained sentence-transformers model
(LiT's "locked tuning", Zhai et al., CVPR 2022, https://arxiv.org/abs/2111.07991, which locks the
image tower; here the text side is locked, so the image tower learns to meet a text space that
already knows words the captions never use). Its own tokenizer, pooling and normalisation give the
caption embedding; only the linear projection after it learns. Its weights stay out of the
checkpoint: the config keeps ``text_model``, a run loads the model again from there, and the
embedding of a probe caption, kept in the checkpoint, refuses a different model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import ViewConfig, make_view, normalize, to_float
from ..errors import SelfSupError
from ..losses import gather_with_grad, in_fp32, world
from ..models.text import BPETokenizer, LockedTextEncoder, TextTransformer
from .base import DataInfo, Method, Picture, denormalize


@dataclass
class Config:
    embed_dim: int = 128            # the shared space (512 for CLIP ViT-B)
    text_width: int = 128
    text_depth: int = 3
    text_heads: int = 4
    text_pooling: str = "eot"       # "eot": the <eot> token's features, as CLIP (causal mask); "mean": tokens up to it
    context_length: int = 32        # tokens per caption, <sot> and <eot> included (CLIP: 77)
    vocab_size: int = 1000          # BPE vocabulary trained on the captions (CLIP: 49,408)
    init_temperature: float = 0.07  # logit scale starts at ln(1 / this)
    max_logit_scale: float = 100.0  # exp(s) is clamped to at most this after every step (the paper)
    local_loss: bool = False        # each process: its rows vs gathered columns (memory linear in the global batch)
    crop_min: float = 0.8           # random square crop of at least this area fraction, resized back
    flip_p: float = 0.0             # off: captions may name left and right
    text_model: str = ""            # locked pretrained text tower (LiT): "minilm" or a sentence-transformers folder

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "embed_dim": ">= 1", "text_width": ">= 1", "text_depth": ">= 1", "text_heads": ">= 1",
        "text_pooling": ("eot", "mean"), "context_length": ">= 3", "vocab_size": ">= 1", "init_temperature": "> 0",
        "max_logit_scale": ">= 1", "crop_min": "(0, 1]", "flip_p": "[0, 1]",
    }


@in_fp32
def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, local_loss: bool = False):
    """Symmetric InfoNCE over image-text pairs, with the embeddings of every process.

    img, txt: (n, d) L2-normalised local embeddings, pair i = (img[i], txt[i]); ``logit_scale``
    is exp(s). Returns (loss, top-1 image->text accuracy within the global batch)."""
    rank, size = world()
    n = len(img)
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    if local_loss or size == 1:
        labels = torch.arange(n, device=img.device) + rank * n
        logits_i = logit_scale * img @ all_txt.T          # (n, N): my images against every caption
        logits_t = logit_scale * txt @ all_img.T          # (n, N): my captions against every image
        loss = (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2   # DDP's mean: the global mean
    else:
        labels = torch.arange(len(all_img), device=img.device)
        logits = logit_scale * all_img @ all_txt.T        # (N, N)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        logits_i = logits[rank * n:(rank + 1) * n]
        labels = labels[rank * n:(rank + 1) * n]
    acc = (logits_i.argmax(1) == labels).float().mean()
    return loss, acc


class CLIP(Method):
    Config = Config
    uses_captions = True
    train_defaults = dict(optimizer="adamw", lr=2e-3, weight_decay=0.1, beta2=0.98, batch_size=128, epochs=20,
                          warmup_epochs=0.5)

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        self.image_projection = nn.Linear(backbone.embed_dim, cfg.embed_dim, bias=False)
        self.text, self.locked_text = None, None
        if cfg.text_model:
            self.locked_text = LockedTextEncoder(cfg.text_model)
            cfg.text_model = self.locked_text.name   # recorded in config.json: the run reloads the model from it
            text_width = self.locked_text.dim
        else:   # built for vocab_size ids; the tokenizer (trained in prepare) has at most that many
            self.text = TextTransformer(cfg.vocab_size, cfg.context_length, eot_id=2, width=cfg.text_width,
                                        depth=cfg.text_depth, heads=cfg.text_heads, pooling=cfg.text_pooling)
            text_width = cfg.text_width
        self.text_projection = nn.Linear(text_width, cfg.embed_dim, bias=False)   # learns in both modes
        nn.init.normal_(self.image_projection.weight, std=backbone.embed_dim ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=text_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.register_buffer("tokenizer_json", torch.zeros(0, dtype=torch.uint8))
        if self.locked_text is not None:
            self.register_buffer("text_model_probe", self.locked_text.probe.clone())
        self._tokenizer: BPETokenizer | None = None
        self.view = ViewConfig(size=data.image_size, scale=(cfg.crop_min, 1.0), ratio=(1.0, 1.0), flip_p=cfg.flip_p,
                               jitter_p=0.0, gray_p=0.0, blur_p=0.0)

    # ---------------------------------------------------------------- the tokenizer (trained, kept in a buffer)
    def prepare_text(self, captions: list[str]) -> None:
        """Train the tokenizer on the training captions (once, before a new run); a locked tower has its own."""
        if self.locked_text is not None:
            return
        tok = BPETokenizer.train(captions, self.cfg.vocab_size, self.cfg.context_length)
        self._set_tokenizer(tok)

    def _set_tokenizer(self, tok: BPETokenizer) -> None:
        if tok.vocab_size > self.cfg.vocab_size:
            raise SelfSupError(f"the tokenizer has {tok.vocab_size} tokens, more than vocab_size={self.cfg.vocab_size}")
        if tok.eot_id != self.text.eot_id:
            raise SelfSupError("the tokenizer's <eot> id does not match the text tower's")
        data = torch.frombuffer(bytearray(tok.to_json().encode()), dtype=torch.uint8)
        self.tokenizer_json = data.clone().to(self.tokenizer_json.device)
        self._tokenizer = tok

    @property
    def tokenizer(self) -> BPETokenizer:
        if self._tokenizer is None:
            if self.tokenizer_json.numel() == 0:
                raise SelfSupError("clip: no tokenizer yet (train on image-caption data first)")
            text = bytes(self.tokenizer_json.cpu().tolist()).decode()
            self._tokenizer = BPETokenizer.from_json(text, self.cfg.context_length)
        return self._tokenizer

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "tokenizer_json"
        if key in state_dict:   # its length is the saved tokenizer's
            self.tokenizer_json = torch.empty_like(state_dict[key], device=self.tokenizer_json.device)
            self._tokenizer = None
        probe = state_dict.get(prefix + "text_model_probe")
        if probe is not None and not torch.allclose(probe.cpu(), self.text_model_probe.cpu(), atol=1e-3):
            raise SelfSupError(f"--set text_model={self.cfg.text_model}: {self.locked_text.path} is not the text model "
                               "this run was trained with (it embeds a probe caption differently)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ---------------------------------------------------------------- towers
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised views (B, C, S, S) -> L2-normalised embeddings (B, embed_dim)."""
        return F.normalize(self.image_projection(self.backbone(x)), dim=-1)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> L2-normalised embeddings (n, embed_dim)."""
        dev = self.logit_scale.device
        if self.locked_text is not None:
            features = self.locked_text(captions, dev)                   # (n, model dim), no gradient
        else:
            features = self.text(self.tokenizer.encode(captions).to(dev))   # (n, text_width)
        return F.normalize(self.text_projection(features), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> embeddings, eval mode, no augmentation."""
        was = self.training
        self.eval()
        dev = self.logit_scale.device
        try:
            return torch.cat([self.encode_image(normalize(to_float(images[i:i + batch_size].to(dev)), self.data.mean,
                                                          self.data.std)).cpu()
                              for i in range(0, len(images), batch_size)])
        finally:
            self.train(was)

    @torch.no_grad()
    def embed_texts(self, captions: list[str], batch_size: int = 512) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return torch.cat([self.encode_text(captions[i:i + batch_size]).cpu() for i in range(0, len(captions), batch_size)])
        finally:
            self.train(was)

    # ---------------------------------------------------------------- the step
    def forward(self, batch: dict):
        captions = batch.get("captions")
        if captions is None:
            raise SelfSupError("clip needs image-caption data (a captions CSV/JSONL file, or shapes)")
        x = make_view(batch["images"], self.view, self.data.mean, self.data.std)
        loss, acc = clip_loss(self.encode_image(x), self.encode_text(list(captions)), self.logit_scale.exp(),
                              self.cfg.local_loss)
        return loss, {"i2t_acc": acc.detach(), "logit_scale": self.logit_scale.detach().exp()}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))

    def run_files(self) -> dict[str, str]:
        return {"tokenizer.json": self.tokenizer.to_json()} if self.tokenizer_json.numel() else {}

    def pictures(self, batch: dict):
        x = make_view(batch["images"][:8], self.view, self.data.mean, self.data.std)
        return {"views": Picture(denormalize(x, self.data), ("augmented view",))}
