"""Feature response maps (paper Fig. 2 and Fig. 5): where on the image each MGN branch responds.

The response at a location of a branch's output map (Global 12x4x2048, Part-2 and Part-3 24x8x2048 at
384x128) is the L2 norm of the 2048-d feature vector there, as the paper computes it. The Part maps are
also cut into the 2 and 3 stripes the model max-pools (`mgn_tf.geometry.stripe_rows`), so a figure shows
what each part feature sees.

    mgn, _ = load_training_model("runs/market")
    pixels = load_images(paths, mgn.input_shape[1:3])
    maps = response_maps(mgn, pixels)                   # {"global": [B, 12, 4], "part2": [B, 24, 8], ...}
    plot_response_maps(pixels[0], image_maps(maps, 0), "a_response.png")

`response_model` takes the branch outputs inside the model's own graph, so the maps come from the very
weights the embedding uses, without a copy. The figure is one row of 7 panels as in Fig. 2: the image, the
Global map, the 2 Part-2 stripes and the 3 Part-3 stripes, each map bilinearly upsampled and overlaid on
the image as a heat map scaled to the map's own range. A stripe panel shows the whole image, pale outside
the stripe, with only the stripe's rows overlaid: where the stripe lies on the body stays visible. The
panel geometry is stored in the PNG (`read_layout`), so the layout can be checked.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mgn_tf.evaluation.plots import heat_overlay
from mgn_tf.files import atomic_path
from mgn_tf.geometry import stripe_rows
from mgn_tf.inference import check_array
from mgn_tf.model import BRANCHES

BRANCH_NAMES: tuple[str, ...] = tuple(name for name, _, _ in BRANCHES)  # "global", "part2", "part3"
STRIPES: dict[str, int] = {name: stripes for name, stripes, _ in BRANCHES if stripes}  # part2: 2, part3: 3
BRANCH_TITLES = {"global": "Global", "part2": "Part-2", "part3": "Part-3"}
LAYOUT_KEY = "mgn_tf.response_layout"  # PNG text chunk holding the panel geometry (JSON)
MIN_PANEL_HEIGHT = 256  # small inputs (96x32) are shown enlarged by a whole factor
GAP, MARGIN = 6, 8  # pixels between panels; white margin around them
PANEL_TITLE_HEIGHT = 34  # two lines: the panel's name and its map's maximum
TITLE_LINE_HEIGHT = 15
TITLE_POINTS = 9
DPI = 100
PALE = 0.65  # a stripe panel outside its stripe: the image blended this much towards white


# ------------------------------------------------------------------------------------------------ maps


def _output_in_graph(model: keras.Model, layer: keras.layers.Layer):
    """The output tensor of `layer`'s call inside `model`'s graph.

    A nested model's `.output` is the end of its own inner graph, not of its call in `model`: that is the
    output of one of its inbound nodes, the one connected to `model`'s input.
    """
    for node in layer._inbound_nodes:
        if len(node.output_tensors) != 1:
            continue
        (tensor,) = node.output_tensors
        try:
            keras.Model(model.input, tensor)
        except ValueError:  # a call outside `model`'s graph
            continue
        return tensor
    raise ValueError(f"layer {layer.name!r} is not called inside model {model.name!r}")


def response_model(mgn: keras.Model, branches: Sequence[str] = BRANCH_NAMES) -> keras.Model:
    """A model from `mgn`'s input to its branch feature maps {branch: [B, h, w, 2048]}, sharing its layers.

    `mgn`: a `build_mgn` model or its embedding model (any model whose graph calls sub-models named
    `<branch>_branch`). Only the layers the asked branches need run.
    """
    unknown = [b for b in branches if b not in BRANCH_NAMES]
    if unknown or not branches:
        raise ValueError(f"branches must be among {', '.join(BRANCH_NAMES)}, got {list(branches)}")
    outputs = {}
    for branch in branches:
        try:
            layer = mgn.get_layer(f"{branch}_branch")
        except ValueError as exc:
            raise ValueError(
                f"model {mgn.name!r} has no layer '{branch}_branch': response maps need an MGN built by "
                "mgn_tf.model.build_mgn"
            ) from exc
        outputs[branch] = _output_in_graph(mgn, layer)
    return keras.Model(mgn.input, outputs, name=f"{mgn.name}_response")


def _is_response_model(model: keras.Model) -> bool:
    return isinstance(model.output, dict) and bool(model.output) and set(model.output) <= set(BRANCH_NAMES)


def response_maps(model: keras.Model, images: np.ndarray, batch_size: int = 16) -> dict:
    """The response maps of a batch of images (float or uint8 [B, H, W, 3], RGB 0..255 at the model's size).

    `model`: a `response_model`, or an MGN to build one of (all branches). Returns, for each branch the
    model gives, `maps[branch]`: float32 [B, h, w], the L2 norm over channels at every location of the
    branch's output map; for the Part branches also `maps[f"{branch}_stripes"]`: the list of its stripes
    [B, h / N, w], top to bottom, and `maps["stripe_rows"][branch]`: their [start, end) map rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    responses = model if _is_response_model(model) else response_model(model)
    images = check_array(np.asarray(images), tuple(responses.input_shape[1:3]))
    norms: dict[str, list[np.ndarray]] = {branch: [] for branch in responses.output}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].astype(np.float32)
        for branch, fmap in responses(batch, training=False).items():
            norms[branch].append(np.linalg.norm(np.asarray(fmap, np.float32), axis=-1))
    maps: dict = {}
    for branch, parts in norms.items():
        size = tuple(responses.output[branch].shape[1:3])
        maps[branch] = np.concatenate(parts) if parts else np.zeros((0, *size), np.float32)
    for branch in [b for b in maps if b in STRIPES]:
        rows = stripe_rows(maps[branch].shape[1], STRIPES[branch])
        maps.setdefault("stripe_rows", {})[branch] = rows
        maps[f"{branch}_stripes"] = [maps[branch][:, start:end] for start, end in rows]
    return maps


def image_maps(maps: dict, index: int) -> dict:
    """The maps of image `index` of a `response_maps` result: the same keys, without the batch axis."""
    one: dict = {}
    for key, value in maps.items():
        if key == "stripe_rows":
            one[key] = value
        elif isinstance(value, list):
            one[key] = [stripe[index] for stripe in value]
        else:
            one[key] = value[index]
    return one


def _stripes(part_map: np.ndarray, branch: str) -> list[tuple[tuple[int, int], np.ndarray]]:
    """((start, end) rows, stripe map) of a Part branch's 2-D map, top to bottom."""
    return [((s, e), part_map[s:e]) for s, e in stripe_rows(part_map.shape[0], STRIPES[branch])]


def _peak(values: np.ndarray, row_offset: int = 0) -> dict:
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return {"max": float(values[row, col]), "argmax": [int(row) + row_offset, int(col)]}


def peaks(maps: dict) -> dict:
    """Where each map of one image (`image_maps`) peaks, as plain JSON values.

    {"global": {"max", "argmax": [row, col]}, "part2": {"max", "argmax", "stripes": [{"stripe": 1,
    "rows": [start, end], "max", "argmax"}, ...], "peak_stripe": k}, "part3": {...}}; map rows and columns
    (a stripe's argmax in the rows of the whole map), `peak_stripe` the stripe (1 = top) with the largest
    maximum.
    """
    found: dict = {}
    for branch in (b for b in BRANCH_NAMES if b in maps):
        found[branch] = _peak(np.asarray(maps[branch]))
        if branch in STRIPES:
            stripes = [
                {"stripe": k, "rows": [s, e], **_peak(np.asarray(stripe), row_offset=s)}
                for k, ((s, e), stripe) in enumerate(_stripes(np.asarray(maps[branch]), branch), 1)
            ]
            found[branch]["stripes"] = stripes
            found[branch]["peak_stripe"] = max(stripes, key=lambda s: s["max"])["stripe"]
    return found


# ---------------------------------------------------------------------------------------------- figure


def figure_layout(image_size: Sequence[int], title: str | None = None) -> dict:
    """The geometry of `plot_response_maps`'s figure for an image of `image_size` (height, width).

    Returns {"size": [width, height] of the PNG, "image_size", "scale": display pixels per image pixel,
    "panels": [{"title", "branch", "stripe", "box": [left, top, right, bottom), "overlay_rows": [top,
    bottom) or None}, ...]} in PNG pixels; 7 panels left to right: Image, Global, Part-2 stripes 1-2,
    Part-3 stripes 1-3. `overlay_rows` are the rows a panel's map covers.
    """
    height, width = int(image_size[0]), int(image_size[1])
    scale = max(1, math.ceil(MIN_PANEL_HEIGHT / height))
    panel_h, panel_w = height * scale, width * scale
    entries = [("Image", None, None, None), ("Global", "global", None, (0, panel_h))]
    for branch, count in STRIPES.items():
        # the map's stripes cover equal parts of the image: its rows times the image pixels per map row
        for k, rows in enumerate(stripe_rows(panel_h, count), 1):
            entries.append((f"{BRANCH_TITLES[branch]} stripe {k}", branch, k, rows))
    total_w = 2 * MARGIN + len(entries) * panel_w + (len(entries) - 1) * GAP
    title_lines = _wrap(title, total_w).count("\n") + 1 if title else 0
    top = MARGIN + title_lines * TITLE_LINE_HEIGHT + PANEL_TITLE_HEIGHT
    panels = []
    for i, (name, branch, stripe, rows) in enumerate(entries):
        left = MARGIN + i * (panel_w + GAP)
        panels.append({
            "title": name, "branch": branch, "stripe": stripe,
            "box": [left, top, left + panel_w, top + panel_h],
            "overlay_rows": None if rows is None else [top + rows[0], top + rows[1]],
        })  # fmt: skip
    return {
        "size": [total_w, top + panel_h + MARGIN],
        "image_size": [height, width],
        "scale": scale,
        "panels": panels,
    }


def _text_width(text: str, points: float) -> float:
    """Pixels `text` takes at `points` in the figure's font and DPI, as the Agg renderer draws it."""
    renderer = RendererAgg(1, 1, DPI)
    return renderer.get_text_width_height_descent(text, FontProperties(size=points), ismath=False)[0]


def _wrap(title: str, width_px: int, points: float = TITLE_POINTS) -> str:
    """`title` in lines that each fit between the margins, measured in the font they are drawn in: broken
    at spaces and after path separators, and a word longer than a line (a long path) cut where it fills
    one."""
    available = width_px - 2 * MARGIN
    lines = []
    for paragraph in title.split("\n"):
        line = ""
        for piece in re.split(r"(?<=[/\\ ])", paragraph):
            while piece:
                if _text_width(line + piece, points) <= available:
                    line, piece = line + piece, ""
                elif line.strip():
                    lines.append(line.rstrip())
                    line, piece = "", piece.lstrip()
                else:  # one piece wider than a line
                    fits = max(
                        [k for k in range(1, len(piece) + 1) if _text_width(piece[:k], points) <= available],
                        default=1,
                    )
                    lines.append(piece[:fits])
                    line, piece = "", piece[fits:]
        lines.append(line.rstrip())
    return "\n".join(lines)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [height, width, 3] RGB, got shape {image.shape}")
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _panel_pixels(pixels: np.ndarray, panel: dict, maps: dict) -> np.ndarray:
    """The display pixels of one panel: the image, overlaid with its map over `overlay_rows`."""
    if panel["branch"] is None:
        return pixels
    top = panel["box"][1]
    start, end = (r - top for r in panel["overlay_rows"])
    if panel["stripe"] is None:
        return heat_overlay(pixels, maps[panel["branch"]])
    (_, stripe) = _stripes(np.asarray(maps[panel["branch"]]), panel["branch"])[panel["stripe"] - 1]
    shown = np.rint(PALE * 255 + (1 - PALE) * pixels.astype(np.float32)).astype(np.uint8)
    shown[start:end] = heat_overlay(pixels[start:end], stripe)
    return shown


def _panel_maximum(panel: dict, maps: dict) -> float | None:
    if panel["branch"] is None:
        return None
    values = np.asarray(maps[panel["branch"]])
    if panel["stripe"] is not None:
        values = _stripes(values, panel["branch"])[panel["stripe"] - 1][1]
    return float(np.max(values))


def _text_strip(width: int, height: int, texts: list[tuple[float, float, str, float]]) -> np.ndarray:
    """A white uint8 [height, width, 3] strip with each (x, y, text, points) centred at pixel (x, y)."""
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    for x, y, text, points in texts:
        fig.text(x / width, 1 - y / height, text, ha="center", va="center", fontsize=points)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    strip = np.full((height, width, 3), 255, np.uint8)
    rows, cols = min(height, rgba.shape[0]), min(width, rgba.shape[1])  # the canvas may round a pixel off
    strip[:rows, :cols] = rgba[:rows, :cols, :3]
    return strip


def plot_response_maps(
    image: np.ndarray, maps: dict, path: str | os.PathLike, title: str | None = None
) -> Path:
    """Writes one image's response maps as a PNG laid out like paper Fig. 2; returns its path.

    `image`: the network input [H, W, 3], RGB 0..255 (what the maps were computed on). `maps`: that image's
    maps (`image_maps`), with "global", "part2" and "part3". One row of 7 panels (`figure_layout`, also
    stored in the PNG: `read_layout`): the image, then Global, the 2 Part-2 stripes and the 3 Part-3
    stripes, each map overlaid as a heat map scaled to its own range, its maximum under its name.
    """
    pixels = _as_uint8(image)
    missing = [b for b in BRANCH_NAMES if b not in maps]
    if missing:
        raise ValueError(f"maps lack {', '.join(missing)} (response_maps of a model with every branch)")
    if any(np.ndim(maps[b]) != 2 for b in BRANCH_NAMES):
        raise ValueError("pass the maps of one image (image_maps(maps, i)), not of a batch")
    layout = figure_layout(pixels.shape[:2], title)
    scale = layout["scale"]
    shown = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)  # whole-factor enlargement
    total_w, total_h = layout["size"]
    canvas = np.full((total_h, total_w, 3), 255, np.uint8)
    texts = []
    if title:
        for i, line in enumerate(_wrap(title, total_w).split("\n")):
            texts.append((total_w / 2, MARGIN + (i + 0.5) * TITLE_LINE_HEIGHT, line, TITLE_POINTS))
    for panel in layout["panels"]:
        left, top, right, bottom = panel["box"]
        canvas[top:bottom, left:right] = _panel_pixels(shown, panel, maps)
        maximum = _panel_maximum(panel, maps)
        label = panel["title"] if maximum is None else f"{panel['title']}\nmax {maximum:.3g}"
        texts.append(((left + right) / 2, top - PANEL_TITLE_HEIGHT / 2, label, 8))
    header = layout["panels"][0]["box"][1]
    canvas[:header] = _text_strip(total_w, header, texts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(LAYOUT_KEY, json.dumps(layout))
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", pnginfo=info)
    return path


def read_layout(path: str | os.PathLike) -> dict:
    """The `figure_layout` stored in a PNG written by `plot_response_maps`."""
    with Image.open(path) as png:
        text = png.text.get(LAYOUT_KEY) if hasattr(png, "text") else None
    if text is None:
        raise ValueError(f"{path} holds no response-map layout (not written by plot_response_maps)")
    return json.loads(text)
