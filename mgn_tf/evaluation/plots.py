"""Evaluation figures: CMC curves and ranked lists (paper Fig. 4 style), drawn with Matplotlib's Agg canvas.

No pyplot: figures are `matplotlib.figure.Figure` objects rendered by the Agg backend, so nothing here
needs a display or touches global Matplotlib state. `heat_overlay` draws a feature response map over an
image (`mgn_tf.evaluation.response`, and the ranked lists of `--ranked_response_maps`).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mgn_tf.files import atomic_path

MATCH_RGB = (0, 170, 0)
NON_MATCH_RGB = (220, 0, 0)
QUERY_RGB = (40, 40, 40)
UNKNOWN_RGB = (150, 150, 150)  # a match whose identity is not known (search without a threshold)
THUMB_SIZE = (64, 128)  # width, height of each shown image
BORDER = 4  # frame width in pixels
HEAT_CMAP = "jet"  # response maps: blue = weakest, red = strongest location of the map
HEAT_ALPHA = 0.5  # weight of the heat map over the image


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


def plot_cmc(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    chance: Sequence[float] | None = None,
    title: str = "CMC",
    dpi: int = 120,
) -> Path:
    """CMC curves (rank 1..len) as percentages, one line per `curves` entry (its label is the legend).

    `chance`: the random-ranking CMC, drawn dashed grey.
    """
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    max_len = 1
    for (label, cmc), marker in zip(curves.items(), "osd^v", strict=False):
        cmc = np.asarray(cmc, dtype=np.float64) * 100
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(ranks, cmc, marker=marker, markersize=3, linewidth=1.6, label=label)
        max_len = max(max_len, len(cmc))
    if chance is not None:
        chance = np.asarray(chance, dtype=np.float64) * 100
        ax.plot(
            np.arange(1, len(chance) + 1), chance, "--", color="0.5", linewidth=1.2, label="chance (random)"
        )
    ax.set_xlim(0.5, max_len + 0.5)
    ax.set_ylim(0, 101)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)


@dataclass(frozen=True)
class RankedQuery:
    """One row of the ranked-list figure: the query and its top gallery images."""

    query_path: str
    query_label: str
    gallery_paths: Sequence[str]
    gallery_labels: Sequence[str]
    matches: Sequence[bool | None]  # None: not known (grey frame)


def thumbnail(path: str) -> np.ndarray:
    """The image as uint8 [height, width, 3] at THUMB_SIZE (bilinear); grey with a diagonal if unreadable."""
    width, height = THUMB_SIZE
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))
    except (OSError, ValueError):
        pixels = np.full((height, width, 3), 200, np.uint8)
        rr = np.arange(height)
        pixels[rr, (rr * (width - 1)) // (height - 1)] = 0
        return pixels


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized to `size` (height, width): bilinear with half-pixel centres, as tf.image.resize."""
    height, width = size
    image = Image.fromarray(np.ascontiguousarray(values, np.float32))  # mode "F"
    return np.asarray(image.resize((width, height), Image.BILINEAR))


def heat_overlay(
    pixels: np.ndarray, response: np.ndarray, alpha: float = HEAT_ALPHA, cmap: str = HEAT_CMAP
) -> np.ndarray:
    """`pixels` (uint8 [H, W, 3]) with `response` (a 2-D map of any size) upsampled bilinearly over the
    whole of it, scaled to the map's own min..max (a constant map is all blue), blended in as a heat map."""
    heat = upsample(response, pixels.shape[:2])
    low, high = float(np.min(response)), float(np.max(response))
    scaled = np.clip((heat - low) / (high - low), 0, 1) if high > low else np.zeros_like(heat)
    colours = colormaps[cmap](scaled)[..., :3] * 255
    return np.rint((1 - alpha) * pixels + alpha * colours).astype(np.uint8)


def _thumbnail(path: str, border_rgb: tuple[int, int, int], response: np.ndarray | None = None) -> np.ndarray:
    """`thumbnail` inside a coloured frame, with `response` overlaid (`heat_overlay`) when given."""
    width, height = THUMB_SIZE
    pixels = thumbnail(path)
    if response is not None:
        pixels = heat_overlay(pixels, response)
    framed = np.empty((height + 2 * BORDER, width + 2 * BORDER, 3), np.uint8)
    framed[:] = border_rgb
    framed[BORDER:-BORDER, BORDER:-BORDER] = pixels
    return framed


def plot_ranked_lists(
    rows: Sequence[RankedQuery],
    path: str | os.PathLike,
    title: str,
    dpi: int = 100,
    responses: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """One query per row (left, dark frame), then its ranked gallery images framed green (same identity)
    red (different identity) or grey (not known), each with its label above it. One mosaic per row.

    `responses`: a response map per image path, overlaid on its thumbnail (`heat_overlay`)."""
    responses = responses or {}
    if not rows:
        raise ValueError("no queries to show")
    top = max(len(r.gallery_paths) for r in rows)
    cell_w, cell_h = THUMB_SIZE[0] + 2 * BORDER, THUMB_SIZE[1] + 2 * BORDER
    step, gap = cell_w + 6, cell_w // 2  # pixels from one thumbnail to the next; query-to-gallery gap
    pad = 8  # white margin left and right
    row_w = 2 * pad + gap + step * top + cell_w
    inch = 1.35 / dpi  # figure inches per mosaic pixel
    # the title wrapped to the figure's width (about 5 points per character at 8.5 pt)
    title = "\n".join(textwrap.fill(line, max(40, int(row_w * inch * 72 / 5))) for line in title.split("\n"))
    label_in, title_in, bottom_in = 20 * inch, 0.2 + 0.14 * (title.count("\n") + 1), 0.1
    row_in = cell_h * inch + label_in
    fig_h = len(rows) * row_in + title_in + bottom_in
    fig = Figure(figsize=(row_w * inch, fig_h))
    for i, row in enumerate(rows):
        mosaic = np.full((cell_h, row_w, 3), 255, np.uint8)
        query = _thumbnail(row.query_path, QUERY_RGB, responses.get(row.query_path))
        tiles = [(query, pad, row.query_label)]
        for j, (gpath, label, match) in enumerate(
            zip(row.gallery_paths, row.gallery_labels, row.matches, strict=True)
        ):
            colour = UNKNOWN_RGB if match is None else MATCH_RGB if match else NON_MATCH_RGB
            tiles.append((_thumbnail(gpath, colour, responses.get(gpath)), pad + gap + step * (j + 1), label))
        for tile, x, _ in tiles:
            mosaic[:, x : x + cell_w] = tile
        bottom = fig_h - title_in - (i + 1) * row_in
        ax = fig.add_axes((0, bottom / fig_h, 1, cell_h * inch / fig_h))
        ax.imshow(mosaic, interpolation="bilinear", aspect="auto")
        for _, x, label in tiles:
            ax.text(x + cell_w / 2, -3, label, ha="center", va="bottom", fontsize=6.5)
        ax.set_xlim(-0.5, row_w - 0.5)
        ax.set_ylim(cell_h - 0.5, -0.5)
        ax.axis("off")
    fig.suptitle(title, fontsize=8.5, y=1 - 0.05 / fig_h, va="top")
    return _save(fig, path, dpi)


def plot_roc(verification: dict, path: str | os.PathLike, title: str = "ROC", dpi: int = 120) -> Path:
    """TPR against FPR (log axis) of an `mgn_tf.evaluation.verification` record, its target points
    marked with their distance thresholds."""
    curve = verification["curve"]
    fpr, tpr = np.asarray(curve["fpr"], np.float64), np.asarray(curve["tpr"], np.float64) * 100
    low = 1.0 / max(verification["num_negative_pairs"], 1)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    shown = fpr >= low
    ax.plot(np.maximum(fpr[shown], low), tpr[shown], linewidth=1.6, label="ROC (query-gallery pairs)")
    for point in verification["points"]:
        x = max(point["fpr"], low)
        ax.plot([x], [100 * point["tpr"]], "o", markersize=4, color="C3")
        ax.annotate(
            f"FPR {point['target_fpr']:g}: TPR {100 * point['tpr']:.1f}%, d < {point['threshold']:.3f}",
            (x, 100 * point["tpr"]), textcoords="offset points", xytext=(6, -10), fontsize=7,
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(low, 1)
    ax.set_ylim(0, 101)
    ax.set_xlabel("false-positive rate (different people accepted)")
    ax.set_ylabel("true-positive rate (%)")
    ax.set_title(
        f"{title}: {verification['num_positive_pairs']} positive, {verification['num_negative_pairs']} "
        f"negative pairs", fontsize=9,
    )  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)
