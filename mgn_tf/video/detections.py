"""Person boxes per frame, from the files detectors and trackers write.

Formats (chosen by the file's suffix and first line):
  MOTChallenge text (`.txt`, or a `.csv` without a header): `frame,id,x,y,w,h,conf[,...]`, 1-based
    frames, box corner and size in pixels, id -1 for a plain detection, a track id otherwise
    (det.txt / gt.txt / a tracker's output). Lines of gt.txt marked not to be considered (column 7 is
    0 and there are 9 columns) are kept: the file's producer decides, not this reader.
  CSV with a header naming at least frame, x, y, w, h (id and conf optional; `track_id`, `score`,
    `confidence` accepted as synonyms).
  JSON: a list of boxes {"frame", "id", "x", "y", "w", "h", "conf"} (or "bbox": [x, y, w, h]), or a list
    of frames {"frame": n, "boxes": [...]}, or an object {"<frame>": [boxes]}.
Every problem names the file and line (DetectionError, a usage error).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from mgn_tf.errors import ConfigError

NO_TRACK = -1
SYNONYMS = {"track_id": "id", "track": "id", "score": "conf", "confidence": "conf", "left": "x", "top": "y",
            "width": "w", "height": "h", "frame_id": "frame"}  # fmt: skip


class DetectionError(ConfigError):
    """A detection file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Box:
    frame: int  # 1-based
    track_id: int  # NO_TRACK for a plain detection
    x: float
    y: float
    w: float
    h: float
    conf: float
    line: int  # where it came from in its file (1-based; JSON: the box's position)


def read_detections(path: str | Path) -> list[Box]:
    """Every box of a detection file, in file order; DetectionError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DetectionError(f"{path}: cannot be read ({exc})") from exc
    if path.suffix.lower() == ".json":
        return _from_json(path, text)
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first and any(c.isalpha() for c in first):
        return _from_csv(path, text)
    return _from_mot(path, text)


def _box(path: Path, line: int, frame, track, x, y, w, h, conf) -> Box:
    where = f"{path}:{line}"
    try:
        values = [float(v) for v in (frame, x, y, w, h, conf)]
        track_id = NO_TRACK if track in (None, "") else int(float(track))
    except (TypeError, ValueError):
        raise DetectionError(f"{where}: frame, x, y, w, h and conf must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise DetectionError(f"{where}: a value is not finite")
    frame_f, xf, yf, wf, hf, cf = values
    if frame_f != int(frame_f) or frame_f < 1:
        raise DetectionError(f"{where}: frame {frame} is not a 1-based frame number")
    if wf <= 0 or hf <= 0:
        raise DetectionError(f"{where}: box width and height must be > 0, got {wf:g} x {hf:g}")
    return Box(int(frame_f), track_id if track_id >= 0 else NO_TRACK, xf, yf, wf, hf, cf, line)


def _from_mot(path: Path, text: str) -> list[Box]:
    boxes = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in (line.split(",") if "," in line else line.split())]
        if len(fields) < 6:
            raise DetectionError(
                f"{path}:{number}: a MOTChallenge line needs at least frame,id,x,y,w,h (got {len(fields)} "
                "fields)"
            )
        conf = fields[6] if len(fields) > 6 else 1.0
        boxes.append(_box(path, number, fields[0], fields[1], *fields[2:6], conf))
    return boxes


def _from_csv(path: Path, text: str) -> list[Box]:
    reader = csv.DictReader(io.StringIO(text))
    names = {name: name.strip().lower() for name in reader.fieldnames or []}
    names = {name: SYNONYMS.get(key, key) for name, key in names.items()}
    missing = {"frame", "x", "y", "w", "h"} - set(names.values())
    if missing:
        raise DetectionError(f"{path}: the header lacks the column(s) {', '.join(sorted(missing))}")
    boxes = []
    for number, row in enumerate(reader, 2):
        row = {names[k]: v for k, v in row.items() if k in names}
        boxes.append(_box(path, number, row["frame"], row.get("id"), row["x"], row["y"], row["w"], row["h"],
                          row.get("conf") or 1.0))  # fmt: skip
    return boxes


def _from_json(path: Path, text: str) -> list[Box]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DetectionError(f"{path}: not JSON ({exc})") from exc
    if isinstance(data, dict):
        data = [{"frame": frame, "boxes": boxes} for frame, boxes in data.items()]
    if not isinstance(data, list):
        raise DetectionError(f"{path}: expected a list of boxes or frames, or an object of frames")
    boxes, number = [], 0
    for entry in data:
        inner = entry.get("boxes") if isinstance(entry, dict) else None
        for box in inner if isinstance(inner, list) else [entry]:
            number += 1
            if not isinstance(box, dict):
                raise DetectionError(f"{path}: box {number} is not an object")
            box = {SYNONYMS.get(k, k): v for k, v in box.items()}
            if "bbox" in box and isinstance(box["bbox"], list) and len(box["bbox"]) == 4:
                box.update(zip("xywh", box["bbox"], strict=True))
            frame = box.get("frame", entry.get("frame") if inner is not None else None)
            if any(box.get(k) is None for k in "xywh") or frame is None:
                raise DetectionError(f"{path}: box {number} lacks frame, x, y, w or h")
            boxes.append(_box(path, number, frame, box.get("id"), box["x"], box["y"], box["w"], box["h"],
                              box.get("conf", 1.0)))  # fmt: skip
    return boxes
