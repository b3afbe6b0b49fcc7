"""Generated camera videos with ground truth, for the video tests and benchmarks/bench_tracking.py.

Synthetic pedestrians (mgn_tf.data.synthetic's identities, drawn once per camera crossing, with fresh
sensor noise every frame) walk across each camera's background, in both directions, so that walkers in
the same band cross and occlude one another; every identity walks through every camera (overlapping
identities), each camera with its own colour response and background. Per camera it writes the video
(MJPG .avi, or a MOTChallenge frame folder `img1/` with seqinfo.ini), the ground truth `gt.txt`
(MOTChallenge: frame,id,x,y,w,h,1,1,1; track ids differ per camera) and the same boxes as plain
detections `det.txt` (id -1), and `identities.json` maps each camera's track id to the person.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mgn_tf.data.synthetic.render import _background, make_camera, make_identity, render

ASPECT = 0.4  # box width / height of a pedestrian
SENSOR_NOISE = 4.0  # grey levels of fresh noise per frame


@dataclass(frozen=True)
class Walk:
    person: int
    track_id: int
    start: int  # first frame (1-based)
    length: int  # frames in view
    x0: float  # box left at the first frame
    x1: float  # box left at the last frame
    top: float
    height: int


def plan(camera: int, people: int, frames: int, size: tuple[int, int], rng: np.random.Generator) -> list:
    """Each person once through the camera: alternating directions, two lanes, starts spread over the
    video so that walkers meet and cross."""
    height, width = size
    walks = []
    for person in range(people):
        box_h = int(round(height * rng.uniform(0.5, 0.6)))
        box_w = int(round(box_h * ASPECT))
        length = int(rng.integers(frames // 2, frames - frames // 8))
        start = 1 + int(rng.integers(0, frames - length + 1))
        left, right = 2.0, float(width - box_w - 2)
        x0, x1 = (left, right) if (person + camera) % 2 == 0 else (right, left)
        top = (height - box_h) * (0.35 if person % 2 == 0 else 0.65) + rng.uniform(-3, 3)
        walks.append(Walk(person, 10 * (camera + 1) + person, start, length, x0, x1, top, box_h))
    return walks


def box_at(walk: Walk, frame: int) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of the walker in `frame`, None when out of view."""
    step = frame - walk.start
    if not 0 <= step < walk.length:
        return None
    x = walk.x0 + (walk.x1 - walk.x0) * step / max(walk.length - 1, 1)
    return int(round(x)), int(round(walk.top)), int(round(walk.height * ASPECT)), walk.height


def generate_videos(
    root: str | Path, cameras: int = 2, people: int = 4, frames: int = 40, size: tuple[int, int] = (240, 320),
    fps: float = 10.0, seed: int = 0, frame_folders: bool = False,
) -> dict:  # fmt: skip
    """Writes the cameras under `root`; returns {"videos", "gt", "det", "identities", "fps", "walks"}."""
    import cv2

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    identities = [make_identity(rng) for _ in range(people)]
    out = {"videos": [], "gt": [], "det": [], "identities": {}, "fps": fps, "walks": {}}
    for c in range(cameras):
        name = f"cam{c + 1}"
        camera = make_camera(rng)
        walks = plan(c, people, frames, size, rng)
        background = np.asarray(_background(rng, camera, *size))
        # One drawing per walk: a person keeps one view and pose while crossing a camera (the renderer picks
        # a random view per image, which in a video would flip front/back from frame to frame).
        sprites = {
            w.track_id: np.asarray(
                render(identities[w.person], camera, rng, (w.height, round(w.height * ASPECT)))
            ).astype(np.float32)
            for w in walks
        }
        if frame_folders:
            (root / name / "img1").mkdir(parents=True, exist_ok=True)
            (root / name / "seqinfo.ini").write_text(
                f"[Sequence]\nname={name}\nframeRate={fps:g}\nseqLength={frames}\n", encoding="utf-8"
            )
            video = root / name
        else:
            video = root / f"{name}.avi"
            writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
        lines = []
        for frame in range(1, frames + 1):
            pixels = background.copy()
            for walk in sorted(walks, key=lambda w: w.top):  # lower on screen = nearer: drawn last
                box = box_at(walk, frame)
                if box is None:
                    continue
                x, y, w, h = box
                noise = rng.normal(0, SENSOR_NOISE, (h, w, 3))
                pixels[y : y + h, x : x + w] = np.clip(sprites[walk.track_id] + noise, 0, 255).astype(
                    np.uint8
                )
                lines.append((frame, walk.track_id, x, y, w, h))
            if frame_folders:
                Image.fromarray(pixels).save(root / name / "img1" / f"{frame:06d}.jpg", quality=92)
            else:
                writer.write(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        if not frame_folders:
            writer.release()
        gt, det = root / f"{name}_gt.txt", root / f"{name}_det.txt"
        gt.write_text("".join(f"{f},{t},{x},{y},{w},{h},1,1,1\n" for f, t, x, y, w, h in lines), "utf-8")
        det.write_text("".join(f"{f},-1,{x},{y},{w},{h},1\n" for f, _, x, y, w, h in lines), "utf-8")
        out["videos"].append(str(video))
        out["gt"].append(str(gt))
        out["det"].append(str(det))
        out["identities"][name] = {str(w.track_id): w.person for w in walks}
        out["walks"][name] = [w.__dict__ for w in walks]
    (root / "identities.json").write_text(json.dumps(out["identities"], indent=2) + "\n", encoding="utf-8")
    return out
