"""Similarity of per-language L0 masks (Wang et al. 2020 §3.3 "Parameter Sharing", Figure 4a and 4b).

Inputs are the mask runs written by :func:`negint_ds.analysis.masks.train_language_mask`: directories
``<mask_dir>/<lang>_seed<seed>/log_alpha.safetensors`` holding π = log α per group (``layer{l}.attn`` (H,),
``layer{l}.ffn`` (ffn_dim,), or one value per matrix: ``layer{l}.attn.qkv``, ``.attn.out``, ``.ffn.lin1``,
``.ffn.lin2``). A run is named by its directory name (e.g. ``sw_seed0``).

* Fig. 4a — :func:`similarity_rows`: for each pair of runs, layer and component (``attn``: that layer's
  attention gates; ``ffn``: its FFN gates), the cosine similarity of the two runs' π vectors. A pair of the
  same language with different seeds (En–En) is the paper's control for the method's robustness.
* Fig. 4b — :func:`top_groups`: each run's π divided by that run's largest |π| (so values lie in [−1, 1]
  and runs trained to different π scales are comparable), then language lg's 10 most negative and 10 most
  positive gates next to the other run's values for the same gates. A negative value means the language
  would rather prune the group.

Every plot is written as a PNG (Agg) and a CSV of every number it plots, beside it.
"""
from __future__ import annotations

import io
import math
import os
import re
from typing import Mapping, Sequence

import torch

from ..atomic import atomic_write_bytes
from .mask_layout import LOG_ALPHA_FILE, SIMILARITY_PNG
from .pretrained import AnalysisError
from .tables import write_csv

_KEY = re.compile(r"^layer(\d+)\.(attn|ffn)(?:\.(\w+))?$")
#: Columns of :func:`similarity_rows` rows / ``mask_similarity.csv``.
SIMILARITY_COLUMNS = ("layer", "component", "pair", "run_a", "run_b", "cosine", "n_gates")
#: Columns of :func:`top_groups` rows / ``mask_top_<lg>.csv``.
TOP_COLUMNS = ("side", "rank", "group", "layer", "component", "index", "lang", "ref", "pi_lang", "pi_ref",
               "raw_lang", "raw_ref")


# --------------------------------------------------------------------------------------------- loading
def load_mask(run_dir: str) -> dict[str, torch.Tensor]:
    """π of one mask run: {group name: (n,) float32 tensor}.

    Raises:
        AnalysisError: no ``log_alpha.safetensors`` (the run is missing or unfinished), or a key that is not a
            mask group name.
    """
    from safetensors.torch import load_file

    path = os.path.join(run_dir, LOG_ALPHA_FILE)
    if not os.path.isfile(path):
        raise AnalysisError(f"{path} not found: {run_dir} is not a finished L0 mask run "
                            f"(train it with negint_ds.analysis.masks.train_language_mask)")
    pi = {k: v.float() for k, v in load_file(path).items()}
    bad = [k for k in pi if not _KEY.match(k)]
    if bad:
        raise AnalysisError(f"{path}: unexpected keys {bad[:5]} (expected layer<l>.attn, layer<l>.ffn, ...)")
    return pi


def run_language(name: str) -> str:
    """The language of run ``name`` (``sw_seed0`` → ``sw``)."""
    return name.rsplit("_seed", 1)[0]


def _component_vectors(pi: Mapping[str, torch.Tensor]) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, component): π of that component's gates concatenated in key order} (matrix gates: qkv/out,
    lin1/lin2 in name order)."""
    parts: dict[tuple[int, str], list[tuple[str, torch.Tensor]]] = {}
    for key, v in pi.items():
        m = _KEY.match(key)
        parts.setdefault((int(m.group(1)), m.group(2)), []).append((m.group(3) or "", v.reshape(-1)))
    return {k: torch.cat([v for _, v in sorted(p, key=lambda t: t[0])]) for k, p in sorted(parts.items())}


def _check_same_groups(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: str) -> None:
    shapes_a = {k: tuple(v.shape) for k, v in a.items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.items()}
    if shapes_a != shapes_b:
        diff = sorted(set(shapes_a.items()) ^ set(shapes_b.items()))[:4]
        raise AnalysisError(f"{what}: the runs' mask groups differ ({diff}); compare runs of the same model and "
                            f"grouping")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity a·b / (‖a‖‖b‖) in float64; NaN when either vector is zero."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return math.nan
    return float(a @ b) / (na * nb)


def pair_labels(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Display labels of run pairs: ``sw-en`` from the languages, or the run names where two pairs would
    otherwise share a label."""
    short = [f"{run_language(a)}-{run_language(b)}" for a, b in pairs]
    return [s if short.count(s) == 1 else f"{a}-{b}" for s, (a, b) in zip(short, pairs)]


# --------------------------------------------------------------------------------------------- Fig. 4a
def similarity_rows(masks: Mapping[str, Mapping[str, torch.Tensor]], pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """Per pair, layer and component: the cosine similarity of π (Fig. 4a).

    Args:
        masks: {run name: π of that run} (from :func:`load_mask`).
        pairs: (run a, run b) names, e.g. ``[("sw_seed0", "en_seed0"), ("en_seed0", "en_seed1")]``.

    Returns:
        Rows ``{"layer": int, "component": "attn"|"ffn", "pair": label, "run_a", "run_b", "cosine": float
        (NaN if a vector is all zeros), "n_gates": int}``, ordered by pair, component, layer.

    Raises:
        AnalysisError: a run is not in ``masks``, or the two runs' groups differ.
    """
    rows = []
    for label, (a, b) in zip(pair_labels(pairs), pairs):
        for r in (a, b):
            if r not in masks:
                raise AnalysisError(f"mask run {r!r} not loaded (have {sorted(masks)})")
        _check_same_groups(masks[a], masks[b], f"{a} vs {b}")
        va, vb = _component_vectors(masks[a]), _component_vectors(masks[b])
        for comp in ("attn", "ffn"):
            for (layer, c), v in va.items():
                if c == comp:
                    rows.append({"layer": layer, "component": comp, "pair": label, "run_a": a, "run_b": b,
                                 "cosine": cosine(v, vb[(layer, c)]), "n_gates": v.numel()})
    return rows


# --------------------------------------------------------------------------------------------- Fig. 4b
def _flat(pi: Mapping[str, torch.Tensor]) -> tuple[list[tuple[str, int, str, int]], torch.Tensor]:
    """Every gate as (display name, layer, component, index) with its π, in key then index order."""
    names, values = [], []
    for key in sorted(pi, key=lambda k: (int(_KEY.match(k).group(1)), k)):
        m = _KEY.match(key)
        v = pi[key].reshape(-1)
        for i in range(v.numel()):
            names.append((f"{key}[{i}]" if v.numel() > 1 else key, int(m.group(1)), m.group(2), i))
        values.append(v)
    return names, torch.cat(values).double()


def normalise(pi: torch.Tensor) -> torch.Tensor:
    """π / max|π| over the run's gates (values in [−1, 1]); all-zero π is returned unchanged."""
    scale = float(pi.abs().max()) if pi.numel() else 0.0
    return pi / scale if scale > 0 else pi.clone()


def top_groups(pi_lang: Mapping[str, torch.Tensor], pi_ref: Mapping[str, torch.Tensor], k: int = 10,
               lang: str = "lg", ref: str = "en") -> list[dict]:
    """Language ``lang``'s k most negative and k most positive gates (normalised π) with ``ref``'s values (Fig. 4b).

    Each run's π is divided by its own largest |π| (:func:`normalise`) before ranking and reporting.

    Args:
        pi_lang, pi_ref: π of the two runs (same groups).
        k: gates per side (fewer when the run has fewer than 2k gates; the sides never overlap).
        lang, ref: labels written into the rows.

    Returns:
        Rows ordered from the most negative to the most positive ``lang`` value: ``{"side": "negative" |
        "positive", "rank": 1-based within the side (1 = most extreme), "group": e.g. "layer1.ffn[17]", "layer",
        "component", "index", "lang", "ref", "pi_lang"/"pi_ref": normalised, "raw_lang"/"raw_ref": π}``.

    Raises:
        AnalysisError: the runs' groups differ; ValueError: k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_same_groups(pi_lang, pi_ref, f"{lang} vs {ref}")
    names, raw_l = _flat(pi_lang)
    _, raw_r = _flat(pi_ref)
    norm_l, norm_r = normalise(raw_l), normalise(raw_r)
    order = torch.argsort(norm_l, stable=True).tolist()
    neg = order[:k]
    pos = [i for i in order[-k:] if i not in neg]
    rows = []
    for side, idx in (("negative", neg), ("positive", pos)):
        for j, i in enumerate(idx):
            name, layer, comp, index = names[i]
            rank = j + 1 if side == "negative" else len(idx) - j
            rows.append({"side": side, "rank": rank, "group": name, "layer": layer, "component": comp,
                         "index": index, "lang": lang, "ref": ref, "pi_lang": float(norm_l[i]),
                         "pi_ref": float(norm_r[i]), "raw_lang": float(raw_l[i]), "raw_ref": float(raw_r[i])})
    return rows


# --------------------------------------------------------------------------------------------- plots
def _csv_path(png: str) -> str:
    return os.path.splitext(png)[0] + ".csv"


def _save(fig, png: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(png, buf.getvalue())


def _figure(size: tuple[float, float]):
    # A Figure bound to the Agg canvas directly: no pyplot state, no global backend switch in the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_similarity(rows: Sequence[Mapping], png: str) -> list[str]:
    """Fig. 4a: cosine similarity of π (y) against layer (x), one line per pair × component (attention solid,
    FFN dashed). Writes ``png`` and, beside it, the CSV of every plotted point (:data:`SIMILARITY_COLUMNS`).

    Returns:
        [png path, csv path].
    """
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    colours = {}
    for pair in dict.fromkeys(r["pair"] for r in rows):
        for comp, style in (("attn", "-"), ("ffn", "--")):
            pts = sorted((r["layer"], r["cosine"]) for r in rows if r["pair"] == pair and r["component"] == comp)
            if not pts:
                continue
            line, = ax.plot(*zip(*pts), style, marker="o", markersize=4, label=f"{pair} {comp}",
                            color=colours.get(pair))
            colours[pair] = line.get_color()
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity of π")
    layers = sorted({r["layer"] for r in rows})
    if layers:
        ax.set_xticks(layers)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Parameter similarity across layers (L0 masks)")
    fig.tight_layout()
    _save(fig, png)
    csv_path = _csv_path(png)
    write_csv(rows, SIMILARITY_COLUMNS, csv_path)
    return [png, csv_path]


def plot_top_groups(rows: Sequence[Mapping], png: str) -> list[str]:
    """Fig. 4b: bars of the normalised π of ``lang`` and ``ref`` for the rows of :func:`top_groups` (most
    negative on the left, most positive on the right). Writes ``png`` and the CSV beside it
    (:data:`TOP_COLUMNS`).

    Returns:
        [png path, csv path].
    """
    fig = _figure((max(6.0, 0.45 * len(rows) + 2), 4))
    ax = fig.add_subplot()
    x = list(range(len(rows)))
    lang = rows[0]["lang"] if rows else "lang"
    ref = rows[0]["ref"] if rows else "ref"
    ax.bar([i - 0.2 for i in x], [r["pi_lang"] for r in rows], width=0.4, label=lang)
    ax.bar([i + 0.2 for i in x], [r["pi_ref"] for r in rows], width=0.4, label=ref)
    ax.set_xticks(x)
    ax.set_xticklabels([r["group"] for r in rows], rotation=90, fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("normalised π (π / max|π| of the run)")
    ax.set_title(f"{lang}: most negative and most positive mask parameters, with {ref}'s")
    ax.legend()
    fig.tight_layout()
    _save(fig, png)
    csv_path = _csv_path(png)
    write_csv(rows, TOP_COLUMNS, csv_path)
    return [png, csv_path]


# --------------------------------------------------------------------------------------------- report
def _parse_pair(p) -> tuple[str, str]:
    if isinstance(p, str):
        if p.count(":") != 1:
            raise AnalysisError(f"pair {p!r}: expected 'run_a:run_b', e.g. 'sw_seed0:en_seed0'")
        a, b = p.split(":")
        return a, b
    a, b = p
    return str(a), str(b)


def write_mask_report(mask_dir: str, pairs: Sequence, out_dir: str, k: int = 10) -> list[str]:
    """Fig. 4a for every pair and Fig. 4b for every pair of two languages, from the runs in ``mask_dir``.

    Args:
        mask_dir: the ``out_dir`` given to :func:`~negint_ds.analysis.masks.train_language_mask`.
        pairs: (run a, run b) directory names, or ``"run_a:run_b"`` strings, e.g.
            ``[("sw_seed0", "en_seed0"), ("en_seed0", "en_seed1")]``.
        out_dir: where the report goes (created).
        k: gates per side in Fig. 4b.

    Writes ``mask_similarity.png``/``.csv`` and, for each pair whose languages differ, ``mask_top_<lang a>.png``/
    ``.csv`` (``mask_top_<run a>_vs_<run b>`` when a language has several such pairs).

    Returns:
        The paths written.

    Raises:
        AnalysisError: no pairs, a run is missing or unfinished, or two runs' groups differ.
    """
    pairs = [_parse_pair(p) for p in pairs]
    if not pairs:
        raise AnalysisError("no run pairs to compare")
    names = list(dict.fromkeys(n for p in pairs for n in p))
    masks = {n: load_mask(os.path.join(mask_dir, n)) for n in names}
    os.makedirs(out_dir, exist_ok=True)
    written = plot_similarity(similarity_rows(masks, pairs), os.path.join(out_dir, SIMILARITY_PNG))
    cross = [(a, b) for a, b in pairs if run_language(a) != run_language(b)]
    for a, b in cross:
        la, lb = run_language(a), run_language(b)
        many = sum(run_language(x) == la for x, _ in cross) > 1
        stem = f"mask_top_{a}_vs_{b}" if many else f"mask_top_{la}"
        rows = top_groups(masks[a], masks[b], k=k, lang=la, ref=lb)
        written += plot_top_groups(rows, os.path.join(out_dir, stem + ".png"))
    return written


__all__ = ["SIMILARITY_COLUMNS", "TOP_COLUMNS", "cosine", "load_mask", "normalise", "pair_labels", "plot_similarity",
           "plot_top_groups", "run_language", "similarity_rows", "top_groups", "write_csv", "write_mask_report"]
