"""One self-contained HTML page of search results: each query beside its ranked matches, with distances
and same-person flags. Thumbnails are embedded as PNG data URIs, so the page opens anywhere (moved,
mailed, no server) and shows exactly the pixels written here.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mgn_tf.evaluation.plots import THUMB_SIZE, thumbnail
from mgn_tf.files import atomic_write_text
from mgn_tf.gallery.index import Match

FLAG_TEXT = {True: "same person", False: "different", None: ""}
FLAG_CLASS = {True: "same", False: "diff", None: "unknown"}

STYLE = """
body { font-family: sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; } p.note { font-size: 12px; color: #555; max-width: 70em; }
.row { display: flex; align-items: flex-start; gap: 6px; margin: 10px 0; padding: 6px;
       border-bottom: 1px solid #ddd; }
figure { margin: 0; width: 76px; font-size: 10px; text-align: center; overflow-wrap: anywhere; }
figure img { display: block; width: 64px; height: 128px; border: 4px solid #999; image-rendering: auto; }
figure.query img { border-color: #282828; } figure.query { margin-right: 22px; }
figure.same img { border-color: #00aa00; } figure.diff img { border-color: #dc0000; }
img.strip { display: block; width: auto; height: 48px; max-width: 300px; border: none; margin-top: 2px; }
figure:has(img.strip) { width: auto; max-width: 300px; }
.flag { font-weight: bold; } .same .flag { color: #00aa00; } .diff .flag { color: #dc0000; }
"""


def data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(path: str, caption: str, css: str, flag: bool | None = None, tracklet: dict | None = None) -> str:
    name = html.escape(Path(path).name)
    flag_line = f'<br><span class="flag">{FLAG_TEXT[flag]}</span>' if flag is not None else ""
    strip = ""
    if tracklet is not None:  # a video tracklet: where and when it was seen, and a strip of its crops
        name = html.escape(_span(tracklet))
        if tracklet.get("strip") and Path(tracklet["strip"]).is_file():
            with Image.open(tracklet["strip"]) as image:
                pixels = np.asarray(image.convert("RGB"))
            strip = f'<img class="strip" src="{data_uri(pixels)}" alt="crops of {name}">'
    return (
        f'<figure class="{css}"><img src="{data_uri(thumbnail(path))}" alt="{name}" '
        f'title="{html.escape(path)}" width="{THUMB_SIZE[0]}" height="{THUMB_SIZE[1]}">'
        f"<figcaption>{caption}{flag_line}<br>{name}</figcaption>{strip}</figure>"
    )


def _span(t: dict) -> str:
    what = f"#{t['track_id']}" if t.get("track_id") is not None else "box"
    when = f" {t['start']:.1f}-{t['end']:.1f} s" if t.get("start") is not None else ""
    return f"{Path(t['video']).stem} {what}{when} (frames {t['first_frame']}-{t['last_frame']})"


def write_page(
    path: str | os.PathLike,
    queries: Sequence[str],
    matches: Sequence[Sequence[Match]],
    title: str,
    notes: Sequence[str] = (),
) -> Path:
    """Writes the page: one row per query (dark frame) and its matches (rank, distance, flag)."""
    rows = []
    for query, found in zip(queries, matches, strict=True):
        cells = [_figure(query, "query", "query")]
        for m in found:
            caption = f"{m.rank}: d={m.distance:.3f}"
            if m.rerank_distance is not None:
                caption += f"<br>re-ranked {m.rerank_distance:.3f}"
            cells.append(_figure(m.path, caption, FLAG_CLASS[m.same_person], m.same_person, m.tracklet))
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    body = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}{''.join(rows)}</body></html>\n"
    )
    return atomic_write_text(path, page)
