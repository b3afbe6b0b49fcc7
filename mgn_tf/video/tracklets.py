"""Tracklets: one camera's boxes of one person, embedded and pooled into one gallery item.

    items, features, report = index_video(embedder, VideoJob("cam1.mp4", "cam1.txt"), "my_index")

A video (or a frame folder) is read once; the boxes of its detection file (or of the HOG detector) are
filtered (`min_confidence`, `min_box_height`, `frame_stride`), cut out clipped to the frame, resized as
image files are (mgn_tf.images.resize_pixels) and embedded in batches, flip-averaged and L2-normalised.
Boxes sharing a track id form a tracklet: the ids of the detection file, or, for plain detections (id
-1), those of a tracker fed with the embeddings (mgn_tf.video.tracking). A tracklet's feature is the
mean (`pooling="avg"`) or element-wise maximum (`"max"`) of its box features, L2-normalised again; its
thumbnail is its largest crop; a strip of up to STRIP_CROPS crops spread over its frames and a sidecar
JSON with every box are written beside the thumbnail, under `<index>/tracklets/<camera>/`.
`per_box=True` makes every box its own item instead (crops under `<index>/boxes/<camera>/`).

Problems that leave the rest usable are reported, not fatal: a video that ends before frames its
detection file names (truncated), boxes wholly outside the frame. They are printed and returned in
the report's `problems` (the index lists them among its skipped entries).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.metrics import l2_normalize
from mgn_tf.files import atomic_path, atomic_write_json
from mgn_tf.gallery.index import Item
from mgn_tf.video.detections import NO_TRACK, Box, read_detections
from mgn_tf.video.frames import FrameSource, clip_box, hog_detect

POOLINGS = ("avg", "max")
STRIP_CROPS = 6
STRIP_HEIGHT = 128
EMBED_CHUNK = 256  # crops embedded per call
HOG = "hog"
UNTRACKED = "not kept by the tracker"


@dataclass(frozen=True)
class VideoJob:
    """One camera: a video file or frame folder, and its detection file (None: `detector` finds people)."""

    source: str
    detections: str | None = None


@dataclass(frozen=True)
class Options:
    frame_stride: int = 1
    min_confidence: float = -math.inf
    min_box_height: float = 0.0
    fps: float | None = None
    pooling: str = "avg"
    per_box: bool = False
    detector: str | None = None  # "hog" when there is no detection file
    tracker: str | None = None  # for plain detections: a mgn_tf.video.tracking name
    appearance: bool = True  # the tracker matches by mgn_tf's embeddings too (False: motion alone)
    batch_size: int = 32
    progress: bool = False


@dataclass
class _Track:
    boxes: list[tuple[Box, tuple[int, int, int, int]]] = field(default_factory=list)
    total: np.ndarray | None = None
    peak: np.ndarray | None = None
    best: tuple[int, np.ndarray] | None = None  # (area, crop) of its largest crop
    strip: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> crop

    def add(self, box: Box, clipped, crop: np.ndarray, feature: np.ndarray) -> None:
        self.boxes.append((box, clipped))
        self.total = feature.astype(np.float64) if self.total is None else self.total + feature
        self.peak = feature.copy() if self.peak is None else np.maximum(self.peak, feature)
        area = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
        if self.best is None or area > self.best[0]:
            self.best = (area, crop)

    def keep_for_strip(self, frame: int, crop: np.ndarray) -> None:
        """Keeps crops spread over a track of unknown length: past 2 x STRIP_CROPS, every other one is
        dropped, so the strip's crops stay evenly spaced without holding every crop."""
        self.strip[frame] = crop
        if len(self.strip) > 2 * STRIP_CROPS:
            self.strip = {f: self.strip[f] for f in sorted(self.strip)[::2]}


@dataclass
class Report:
    """What one video gave: counts, and the problems met (each one line)."""

    source: str
    camera: str
    detections: str | None = None
    boxes_read: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> count (filters)
    embedded: int = 0
    items: int = 0
    frames_used: int = 0  # frames with boxes (or searched by the detector)
    frames_read: int = 0  # the last frame decoded
    fps: float | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def check_options(options: Options) -> None:
    if options.frame_stride < 1:
        raise ConfigError(f"--frame_stride={options.frame_stride}: must be >= 1")
    if options.pooling not in POOLINGS:
        raise ConfigError(f"--tracklet_pooling={options.pooling}: must be one of {', '.join(POOLINGS)}")
    if options.fps is not None and not options.fps > 0:
        raise ConfigError(f"--fps={options.fps}: must be > 0")
    if options.detector not in (None, HOG):
        raise ConfigError(f"--detector={options.detector}: the built-in detector is {HOG}")


def index_video(
    embedder, job: VideoJob, index_dir: str | Path, options: Options = Options(), flip: bool = True,
    normalize: bool = True,
) -> tuple[list[Item], np.ndarray, Report]:  # fmt: skip
    """(gallery items, their features [n, D] float32, report) of one video; thumbnails, strips and
    sidecars written under `index_dir`. ConfigError (one line) for an unusable video or detection file."""
    source = FrameSource(job.source, options.fps)
    report = Report(str(Path(job.source).resolve()), source.camera, job.detections, fps=source.fps)
    boxes, needs_tracker = check_job(job, options, report)
    tracker = None
    if needs_tracker:
        from mgn_tf.video import tracking

        tracker = tracking.make_tracker(options.tracker, source.fps, options.appearance)
    tracks = _embed_boxes(embedder, source, boxes, options, tracker, report, flip)
    items, features = _items(tracks, source, report, Path(index_dir).resolve(), options, normalize)
    report.items = len(items)
    return items, features, report


def check_job(job: VideoJob, options: Options, report: Report | None = None) -> tuple[list[Box], bool]:
    """(the detection file's boxes that pass the filters, whether a tracker must link them): what can be
    checked before any model is loaded. ConfigError for bad options, a bad file, a file with ids on some
    boxes only, or plain detections without --tracker (or --per_box)."""
    from mgn_tf.video.tracking import TRACKERS

    check_options(options)
    boxes = _wanted_boxes(job, options, report or Report(job.source, ""))
    plain = sum(b.track_id == NO_TRACK for b in boxes) if job.detections else None
    if plain and plain < len(boxes) and not options.per_box:
        raise ConfigError(
            f"{job.detections}: {len(boxes) - plain} boxes have track ids and {plain} do not (id -1); "
            "give a file with ids on every box, or on none"
        )
    needs_tracker = not options.per_box and (job.detections is None or plain == len(boxes) > 0)
    if needs_tracker and options.tracker is None:
        what = job.detections or f"--detector={options.detector}"
        raise ConfigError(
            f"{what}: plain detections (no track ids): pass --tracker ({', '.join(TRACKERS)}) to link "
            "them into tracklets, or --per_box to index every box"
        )
    return boxes, needs_tracker


def _wanted_boxes(job: VideoJob, options: Options, report: Report) -> list[Box]:
    """The detection file's boxes that pass the filters (none when the detector finds them)."""
    if job.detections is None:
        if options.detector is None:
            raise ConfigError(f"{job.source}: give its --detections file, or --detector={HOG}")
        return []
    boxes = read_detections(job.detections)
    report.boxes_read = len(boxes)
    kept = []
    for box in boxes:
        reason = (
            "confidence" if box.conf < options.min_confidence
            else "height" if box.h < options.min_box_height
            else "stride" if (box.frame - 1) % options.frame_stride
            else None
        )  # fmt: skip
        if reason:
            report.dropped[reason] = report.dropped.get(reason, 0) + 1
        else:
            kept.append(box)
    return kept


def _frame_boxes(source: FrameSource, boxes: list[Box], options: Options):
    """(frame number, frame, its boxes) in order: the detection file's, or HOG's on every stride-th frame."""
    if boxes:
        by_frame: dict[int, list[Box]] = {}
        for box in boxes:
            by_frame.setdefault(box.frame, []).append(box)
        for number, frame in source.frames(set(by_frame)):
            yield number, frame, by_frame[number]
        return
    count = source.frame_count or 0
    wanted = set(range(1, count + 1, options.frame_stride))
    line = 0
    for number, frame in source.frames(wanted):
        found = []
        for x, y, w, h, score in hog_detect(frame, options.min_box_height):
            if score >= options.min_confidence:
                line += 1
                found.append(Box(number, NO_TRACK, x, y, w, h, score, line))
        yield number, frame, found


def _embed_boxes(embedder, source, boxes, options, tracker, report, flip) -> dict[int, _Track]:
    """Cuts out and embeds every box; returns the tracks (by id; per box: by running number)."""
    from mgn_tf.images import resize_pixels

    tracks: dict[int, _Track] = {}
    pending: list[tuple[Box, tuple, np.ndarray, np.ndarray]] = []  # box, clipped, crop, resized
    outside = []
    strip_frames = _strip_frames(boxes) if boxes and not tracker else {}
    embedder.expect(len(boxes) * (2 if flip else 1))  # all boxes come in chunks: a large job may freeze

    def flush():
        if not pending:
            return
        batch = np.stack([p[3] for p in pending])
        features = embedder.embed(batch, options.batch_size, flip=flip, normalize=True)
        if tracker is not None:
            boxes_xyxy, scores = [p[1] for p in pending], [p[0].conf for p in pending]
            ids = tracker.update(pending[0][0].frame, frame, boxes_xyxy, scores, features)
        else:
            ids = [p[0].track_id for p in pending]
        for (box, clipped, crop, _), track_id, feature in zip(pending, ids, features, strict=True):
            if track_id is None:  # a tracker that has not confirmed this box as part of a track yet
                report.dropped[UNTRACKED] = report.dropped.get(UNTRACKED, 0) + 1
                continue
            key = len(tracks) + 1 if options.per_box else int(track_id)
            track = tracks.setdefault(key, _Track())
            track.add(box, clipped, crop, feature)
            if tracker is not None:
                track.keep_for_strip(box.frame, crop)
            elif box.frame in strip_frames.get(key, ()):
                track.strip[box.frame] = crop
        report.embedded += len(pending)
        pending.clear()

    total = len({b.frame for b in boxes}) if boxes else None
    with tqdm(total=total, desc=f"{source.camera}", unit="frame", disable=not options.progress) as bar:
        for _, frame, frame_boxes in _frame_boxes(source, boxes, options):
            height, width = frame.shape[:2]
            for box in frame_boxes:
                clipped = clip_box(box.x, box.y, box.w, box.h, width, height)
                if clipped is None:
                    outside.append(box)
                    continue
                # a copy: a view would keep its whole frame alive while the track holds the crop
                crop = frame[clipped[1] : clipped[3], clipped[0] : clipped[2]].copy()
                pending.append((box, clipped, crop, resize_pixels(crop, embedder.input_size)))
            if tracker is not None or len(pending) >= EMBED_CHUNK:
                flush()
            report.frames_used += 1
            bar.update(1)
        flush()
    report.frames_read = source.frames_read
    _report_problems(source, boxes, outside, report)
    return tracks


def _strip_frames(boxes: list[Box]) -> dict[int, set[int]]:
    """Per track id, the frames of up to STRIP_CROPS of its boxes spread evenly over its span."""
    frames: dict[int, list[int]] = {}
    for box in boxes:
        frames.setdefault(box.track_id, []).append(box.frame)
    return {track_id: set(spread(sorted(numbers))) for track_id, numbers in frames.items()}


def spread(values: list, count: int = STRIP_CROPS) -> list:
    """Up to `count` of `values` evenly spaced from the first to the last."""
    picks = np.linspace(0, len(values) - 1, min(count, len(values))).round().astype(int)
    return [values[i] for i in picks]


def _report_problems(source: FrameSource, boxes: list[Box], outside: list[Box], report: Report) -> None:
    if outside:
        first = outside[0]
        where = f"{report.detections}:{first.line}" if report.detections else f"{report.source} (HOG)"
        report.problems.append(
            f"{where}: {len(outside)} box(es) lie wholly outside the frame and were skipped, e.g. frame "
            f"{first.frame} box x={first.x:g} y={first.y:g} w={first.w:g} h={first.h:g}"
        )
    beyond = [b for b in boxes if b.frame > source.frames_read]
    if beyond:
        expected = f" (its header says {source.frame_count} frames)" if source.frame_count else ""
        report.problems.append(
            f"{report.source}: the video ends after frame {source.frames_read}{expected}: {len(beyond)} "
            f"box(es) in frames {beyond[0].frame}..{max(b.frame for b in beyond)} were skipped (truncated?)"
        )


def _items(tracks, source, report, index_dir: Path, options: Options, normalize: bool):
    kind = "boxes" if options.per_box else "tracklets"
    folder = index_dir / kind / source.camera
    folder.mkdir(parents=True, exist_ok=True)
    items, features = [], []
    for key in sorted(tracks):
        track = tracks[key]
        pooled = track.total / len(track.boxes) if options.pooling == "avg" else track.peak
        features.append(l2_normalize(pooled[None].astype(np.float32))[0] if normalize else pooled)
        boxes = sorted(track.boxes, key=lambda b: b[0].frame)
        first, last = boxes[0][0].frame, boxes[-1][0].frame
        name = f"{boxes[0][0].frame:06d}_{key:06d}" if options.per_box else f"{key:06d}"
        thumb = folder / f"{name}.jpg"
        _save_jpeg(track.best[1], thumb)
        record = {
            "video": report.source, "track_id": None if options.per_box else key, "first_frame": first,
            "last_frame": last, "start": _seconds(first, source.fps), "end": _seconds(last, source.fps),
            "boxes": len(boxes), "pooling": options.pooling,
        }  # fmt: skip
        if not options.per_box:
            strip = folder / f"{name}_strip.jpg"
            _save_strip([track.strip[f] for f in spread(sorted(track.strip))], strip)
            sidecar = folder / f"{name}.json"
            atomic_write_json(sidecar, {
                **record, "camera": source.camera, "fps": source.fps,
                "boxes": [{"frame": b.frame, "x": b.x, "y": b.y, "w": b.w, "h": b.h, "conf": b.conf,
                           "clipped": list(c)} for b, c in boxes],
            })  # fmt: skip
            record.update(strip=str(strip), boxes_file=str(sidecar))
        else:
            box, clipped = boxes[0]
            record["box"] = {"x": box.x, "y": box.y, "w": box.w, "h": box.h, "conf": box.conf}
        items.append(Item(str(thumb), None, source.camera, record))
    dim = features[0].shape[0] if features else 0
    return items, (np.stack(features).astype(np.float32) if features else np.zeros((0, dim), np.float32))


def _seconds(frame: int, fps: float | None) -> float | None:
    return None if fps is None else round((frame - 1) / fps, 3)


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="JPEG", quality=92)


def _save_strip(crops: Sequence[np.ndarray], path: Path) -> None:
    """The crops side by side at STRIP_HEIGHT pixels high (aspect ratio kept)."""
    images = [Image.fromarray(np.ascontiguousarray(c)) for c in crops]
    images = [im.resize((max(1, round(im.width * STRIP_HEIGHT / im.height)), STRIP_HEIGHT)) for im in images]
    strip = Image.new("RGB", (sum(im.width for im in images) + 2 * (len(images) - 1), STRIP_HEIGHT), "white")
    left = 0
    for im in images:
        strip.paste(im, (left, 0))
        left += im.width + 2
    with atomic_path(path) as tmp:
        strip.save(tmp, format="JPEG", quality=88)
