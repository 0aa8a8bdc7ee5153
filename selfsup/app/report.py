"""``selfsup report RUN_DIR``: one self-contained HTML page about a run folder.

Sections: the run's settings, its logged curves, the augmented views the method trained on, the
method's own pictures (``pictures/*.png``), a 2-D map of the backbone's embeddings coloured by
label, nearest-neighbour retrievals and the evaluation results in ``eval/``. Every image is a
base64 PNG data URI and the page has no script, so the file opens anywhere, offline, without a
server; charts are drawn with matplotlib's object API (no pyplot state, no display needed).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from ..data.augment import make_view
from ..data.datasets import stratified_split
from ..errors import SelfSupError
from ..eval.features import extract
from ..methods.base import DataInfo, denormalize
from ..runs import check_writable, load_backbone, read_metrics, result_path, run_data
from ..runs.pictures import Picture, render_picture
from .device import pick_device
from .train import build_method, run_configs

MAP_POINTS = 2000      # images on the embedding map, at most (a seeded sample of the held-out split)
BANK_SIZE = 10_000     # train images searched for neighbours, at most (a seeded sample)
QUERIES, NEIGHBOURS = 6, 8
VIEW_IMAGES = 8        # images whose views are shown (one column each)
NOT_PLOTTED = ("step", "epoch", "elapsed_s")   # x axes or bookkeeping, not curves


def build_report(run_dir: str | Path, data: str | None = None, out: str | Path | None = None,
                 data_dir: str | None = None, seed: int = 0, device: str = "auto") -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``) and return its path.

    ``data`` (default: the run's own) gives the images for the views, the embedding map and the
    retrievals; its train split is the retrieval bank and its test split (or a seeded 20% of
    train) gives the map's points and the queries."""
    run_dir = Path(run_dir)
    cfg = read_run(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    check_writable(out, "--out", "file")   # before any work (the default: RUN_DIR/report.html)
    spec = data or cfg.get("data")
    splits = run_data(run_dir, data, data_dir=data_dir)
    train, test = splits.train, splits.test
    if test is None:
        keep, held = stratified_split(train.labels, len(train), 0.2, seed)
        train, test = train.subset(keep), train.subset(held)
    encoder = load_backbone(run_dir)
    if encoder.meta["in_chans"] != train.channels:
        raise SelfSupError(f"--data {spec}: has {train.channels} channel(s) but the backbone was trained on "
                           f"{encoder.meta['in_chans']}")
    dev = pick_device(device)
    try:
        metrics = read_metrics(run_dir)
    except ValueError as e:
        raise SelfSupError(f"{run_dir / 'metrics.jsonl'}: not JSON lines ({e})") from None
    sections = [
        ("run", "Run", summary_section(run_dir, cfg, metrics, spec)),
        ("curves", "Curves", curves_section(metrics)),
        ("views", "Augmented views", views_section(cfg, train, seed)),
        ("pictures", "The method's pictures", pictures_section(run_dir)),
        ("map", "Embedding map", map_section(encoder, test, seed, dev)),
        ("neighbours", "Nearest neighbours", neighbours_section(encoder, train, test, seed, dev)),
        ("eval", "Evaluation", eval_section(run_dir)),
    ]
    page = _page(f"selfsup report: {cfg['method']} on {spec} ({run_dir.name})", sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def read_run(run_dir: Path) -> dict:
    """The run's config.json, or a one-line error when ``run_dir`` is not a run folder."""
    if not run_dir.exists():
        raise SelfSupError(f"{run_dir}: no such run folder")
    if not run_dir.is_dir() or not (run_dir / "config.json").is_file():
        raise SelfSupError(f"{run_dir}: not a run folder (no config.json; make one with selfsup train)")
    path = run_dir / "config.json"
    cfg = _read_json(path)
    if not isinstance(cfg, dict) or "method" not in cfg or "data_info" not in cfg:
        raise SelfSupError(f"{path}: not a selfsup run config (no method or data_info)")
    return cfg


# ----------------------------------------------------------------------------- sections

def _compiled(info) -> str | None:
    """The facts row for provenance.json's "compile": yes / no, with compile=auto's reason."""
    if not isinstance(info, dict):
        return None
    return ("yes" if info.get("compiled") else "no") + (f" ({info['reason']})" if info.get("reason") else "")


def summary_section(run_dir: Path, cfg: dict, metrics: list[dict], spec: str) -> str:
    prov = _read_json(run_dir / "provenance.json") if (run_dir / "provenance.json").is_file() else {}
    last = metrics[-1] if metrics else {}
    facts = {"method": cfg["method"], "backbone": cfg.get("backbone"), "data": cfg.get("data"),
             "images shown": spec if spec != cfg.get("data") else None,
             "steps": last.get("step"), "epochs": last.get("epoch"), "batch size": cfg.get("batch_size"),
             "peak lr": cfg.get("lr"), "last loss": last.get("loss"), "images/s": last.get("images_per_s"),
             "training time (s)": last.get("elapsed_s"), "device": prov.get("device"), "precision": prov.get("precision"),
             "torch.compile": _compiled(prov.get("compile")), "selfsup": prov.get("selfsup"), "git commit": prov.get("git_commit"), "torch": prov.get("torch"),
             "started": prov.get("time")}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in facts.items() if v is not None)
    return (f"<table class=facts>{rows}</table>"
            f"<details><summary>config.json</summary><pre>{_e(json.dumps(cfg, indent=2))}</pre></details>")


def curves_section(metrics: list[dict]) -> str:
    """One small chart per logged number (loss and lr first) against the step."""
    if not metrics:
        return _note("metrics.jsonl is empty or missing: nothing was logged.")
    keys = ["loss", "lr"]
    for row in metrics:
        keys += [k for k, v in row.items() if k not in keys and k not in NOT_PLOTTED and isinstance(v, (int, float))]
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in metrics)]
    cols = min(3, len(keys))
    fig = _figure(3.6 * cols, 2.6 * math.ceil(len(keys) / cols))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(math.ceil(len(keys) / cols), cols, i + 1)
        pts = [(r["step"], r[key]) for r in metrics if isinstance(r.get(key), (int, float))]
        ax.plot(*zip(*pts), marker="o" if len(pts) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return _img(_fig_png(fig), "training curves") + _caption(
        f"{len(metrics)} logged rows of metrics.jsonl; each point averages the steps since the previous one.")


def views_section(cfg: dict, train, seed: int) -> str:
    """The method's own augmentation applied to the first images of the train split: its ``views()``
    (contrastive and distillation methods), else two draws of its ``view`` recipe."""
    info = DataInfo(**cfg["data_info"])
    train_cfg, method_cfg = run_configs(cfg)
    method = build_method(train_cfg, method_cfg, info)
    images = train.images[:VIEW_IMAGES]
    torch.manual_seed(seed)
    with torch.no_grad():
        views = method.views(images)
        if views is not None:
            how = (f"one row per view from the method's <code>views()</code> ({len(views)} per image; smaller "
                   "crops upsampled to the image size)")
        elif method.view is not None:
            views = [make_view(images, method.view, info.mean, info.std) for _ in range(2)]
            how = ("two rows, two independent draws of the method's <code>view</code> recipe (crop, flip, colour); "
                   "what the method does next (rotations, masks, ...) shows in its pictures below")
        else:
            return _note(f"{cfg['method']} exposes no views() or view recipe; its pictures below show what its "
                         "network sees.")
    size = images.shape[-1]
    rows = [images.float() / 255] + [F.interpolate(denormalize(v, info), size=size, mode="nearest") for v in views]
    labels = ("training image", *(f"view {i + 1}" for i in range(len(views))))
    return _img(_grid_png(torch.cat(rows), labels), "augmented views", pixelated=True) + _caption(
        f"First row: {len(images)} training images, then {how}.", html_ok=True)


def pictures_section(run_dir: Path) -> str:
    paths = sorted((run_dir / "pictures").glob("*.png"))
    if not paths:
        return _note("this run has no pictures/ (the method exposes none, or training did not finish).")
    parts = []
    for p in paths:
        png = p.read_bytes()
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise SelfSupError(f"{p}: not a PNG file")
        parts.append(f"<h3>{_e(p.stem)}</h3>" + _img(png, p.stem, pixelated=True))
    return "".join(parts) + _caption("pictures/*.png as training wrote them at its end: each row labelled on the left, "
                                     "tiles enlarged (nearest neighbour) to at least 96 px.")


def map_section(encoder, test, seed: int, dev) -> str:
    """A 2-D map of the embeddings of held-out images, coloured by label: t-SNE when scikit-learn
    is installed, else the first two principal components."""
    if test.labels is None:
        return _note("the data has no labels, so there is no map coloured by label.")
    if len(test) < 3:
        return _note(f"{len(test)} held-out image(s) are too few for a map.")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:MAP_POINTS].sort().values
    x = F.normalize(extract(encoder, test.images[idx], device=dev), dim=1)
    labels = test.labels[idx]
    xy, how = project_2d(x, seed)
    fig = _figure(7, 6)
    ax = fig.add_subplot()
    n_classes = test.num_classes
    cmap = "tab10" if n_classes <= 10 else "tab20" if n_classes <= 20 else "turbo"
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5, s=8)
    if n_classes <= 20:
        names = test.classes or [str(c) for c in range(n_classes)]
        handles = [ax.scatter([], [], color=sc.cmap(sc.norm(c)), s=20) for c in range(n_classes)]
        ax.legend(handles, names, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    return _img(_fig_png(fig), "embedding map") + _caption(
        f"{how} of the backbone's embeddings (cosine-normalised) of {len(idx)} held-out images, coloured by label.")


def project_2d(x: torch.Tensor, seed: int) -> tuple:
    """(N, D) features -> ((N, 2) numpy array, a caption saying how)."""
    try:
        import sklearn
        from sklearn.manifold import TSNE
    except ImportError:
        TSNE = None
    if TSNE is not None and len(x) > 4:
        perplexity = min(30.0, (len(x) - 1) / 3)
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x.numpy())
        return xy, f"t-SNE (scikit-learn {sklearn.__version__}, perplexity {perplexity:g})"
    centred = x - x.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=min(2, *x.shape), center=False)
    xy = (centred @ v[:, :2]).numpy()
    why = "scikit-learn is not installed" if TSNE is None else "too few points for t-SNE"
    return xy, f"PCA, the first two components (torch.pca_lowrank; {why})"


def neighbours_section(encoder, train, test, seed: int, dev) -> str:
    """A few held-out queries and their most cosine-similar train images, by backbone embedding."""
    g = torch.Generator().manual_seed(seed)
    bank_idx = torch.randperm(len(train), generator=g)[:BANK_SIZE].sort().values
    query_idx = torch.randperm(len(test), generator=g)[:QUERIES]
    bank = F.normalize(extract(encoder, train.images[bank_idx], device=dev), dim=1)
    queries = F.normalize(extract(encoder, test.images[query_idx], device=dev), dim=1)
    k = min(NEIGHBOURS, len(bank_idx))
    sims, nn_idx = (queries @ bank.T).topk(k, dim=1)
    labelled = train.labels is not None and test.labels is not None
    names = train.classes or test.classes

    def name(c: int) -> str:
        return names[c] if names and c < len(names) else str(c)

    fig = _figure(1.1 * (k + 1), 1.3 * len(query_idx))
    for r, q in enumerate(query_idx.tolist()):
        ax = fig.add_subplot(len(query_idx), k + 1, r * (k + 1) + 1)
        _show(ax, test.images[q], f"query: {name(int(test.labels[q]))}" if labelled else "query", "black")
        for c in range(k):
            j = int(bank_idx[nn_idx[r, c]])
            title, colour = f"{sims[r, c]:.3f}", "black"
            if labelled:
                same = int(train.labels[j]) == int(test.labels[q])
                title, colour = f"{title} {name(int(train.labels[j]))}", "green" if same else "red"
            _show(fig.add_subplot(len(query_idx), k + 1, r * (k + 1) + c + 2), train.images[j], title, colour)
    agreement = ""
    if labelled:
        match = (train.labels[bank_idx[nn_idx]] == test.labels[query_idx][:, None]).float().mean()
        agreement = f" Green: same label as the query, red: another ({match:.0%} the same here)."
    return _img(_fig_png(fig), "nearest neighbours") + _caption(
        f"{len(query_idx)} held-out queries (first column) and their {k} most similar of {len(bank_idx)} train "
        f"images by cosine similarity of the backbone's embeddings (number above each).{agreement}")


def eval_section(run_dir: Path) -> str:
    """A table of RUN/eval/*.json: protocol, score and every scalar setting."""
    paths = sorted(result_path(run_dir).glob("*.json"))
    if not paths:
        return _note(f"no evaluation results in {run_dir / 'eval'} yet "
                     f"(e.g. selfsup eval knn --checkpoint {run_dir}).")
    rows = []
    for p in paths:
        try:
            res = json.loads(p.read_text())
        except ValueError as e:
            res = f"not JSON ({e})"
        if not isinstance(res, dict):   # one bad file is shown as such, not a failed report
            rows.append(f"<tr><td>{_e(p.name)}</td><td colspan=3>unreadable: {_e(_fmt(res))}</td></tr>")
            continue
        flat = _flatten({k: v for k, v in res.items() if k not in ("provenance", "written_to")})
        score = flat.pop("accuracy", None)
        protocol = flat.pop("protocol", p.stem)
        settings = ", ".join(f"{k}={_fmt(v)}" for k, v in flat.items())
        rows.append(f"<tr><td>{_e(p.name)}</td><td>{_e(str(protocol))}</td><td>{_e(_fmt(score))}</td>"
                    f"<td class=small>{_e(settings)}</td></tr>")
    return ("<table class=eval><tr><th>file</th><th>protocol</th><th>accuracy</th><th>settings and other results</th>"
            f"</tr>{''.join(rows)}</table>")


# ----------------------------------------------------------------------------- pieces

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise SelfSupError(f"{path}: not JSON ({e})") from None


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _flatten(d: dict, prefix: str = "") -> dict:
    """Scalars of ``d``, nested dicts' scalars as ``outer.inner``; lists (confusion matrices,
    per-class scores) are left out."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def _note(text: str) -> str:
    return f"<p class=note>{_e(text)}</p>"


def _caption(text: str, html_ok: bool = False) -> str:
    return f"<p class=caption>{text if html_ok else _e(text)}</p>"


def _img(png: bytes, alt: str, pixelated: bool = False) -> str:
    """An <img> of PNG bytes as a data URI; small pixel grids are shown enlarged, unsmoothed."""
    width = Image.open(io.BytesIO(png)).width
    zoom = max(1, min(4, 640 // max(width, 1))) if pixelated else 1
    cls = " class=pixelated" if pixelated else ""
    return (f'<img{cls} width={width * zoom} alt="{_e(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def _grid_png(x: torch.Tensor, rows: tuple[str, ...]) -> bytes:
    """Images (N, C, H, W) in [0, 1] as labelled rows, drawn as the run's pictures are."""
    image, _ = render_picture(Picture(x, rows))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _show(ax, image: torch.Tensor, title: str, colour: str) -> None:
    """One uint8 (C, H, W) image on ``ax``, titled, no ticks."""
    x = image.permute(1, 2, 0).numpy()
    ax.imshow(x[..., 0] if x.shape[-1] == 1 else x, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=7, color=colour)
    ax.set_axis_off()


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1em;margin-bottom:.3em}
img{max-width:100%;height:auto}img.pixelated{image-rendering:pixelated}.caption{color:#555;font-size:.9em}.note{color:#555;font-style:italic}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
.facts th{background:#f6f6f6}.small{font-size:.85em}pre{background:#f6f6f6;padding:1em;overflow:auto}"""


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The page: (id, heading, HTML content) per section."""
    body = "".join(f'<section id={key}><h2>{_e(heading)}</h2>{content}</section>\n' for key, heading, content in sections)
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body><h1>{_e(title)}</h1>\n{body}</body></html>\n")
