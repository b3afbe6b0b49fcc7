"""Frames of a camera: a video file (OpenCV) or a folder of frame images (the MOTChallenge `img1/`
layout), read once, in order; boxes cut out of them; OpenCV's HOG people detector for trying the tool
without a detector of one's own.

OpenCV (`opencv-python-headless`, the `video` extra) decodes video; a frame folder needs only Pillow.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from mgn_tf.errors import ConfigError
from mgn_tf.files import image_files

FRAME_NUMBER = re.compile(r"(\d+)$")


def import_cv2():
    try:
        import cv2
    except ImportError as exc:
        raise ConfigError(
            "reading videos and the HOG detector need OpenCV: pip install -e '.[video]' "
            "(opencv-python-headless)"
        ) from exc
    return cv2


def camera_name(path: str | Path) -> str:
    """A camera's name: a video's file stem, a MOTChallenge sequence's folder (the parent of `img1/`, or
    the folder holding it), else the frame folder's name."""
    path = Path(path)
    if path.is_dir():
        return path.parent.name if path.name == "img1" else path.name
    return path.stem


class FrameSource:
    """One camera's frames: `frames(wanted)` yields (1-based frame number, RGB uint8 [H, W, 3]).

    Attributes: `camera` (its name: the video's file stem, or the sequence folder of an `img1/` folder),
    `fps` (`fps` given, else the video's or seqinfo.ini's frame rate, else None), `frame_count` (what the
    video's header or the folder says; None when unknown), `frames_read` (the last frame actually
    decoded: less than asked for when a video is truncated).
    """

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        self.frames_read = 0
        self.camera = camera_name(self.path)
        if self.path.is_dir():
            folder = self.path / "img1" if (self.path / "img1").is_dir() else self.path
            self._files = self._numbered(folder)
            self.frame_count = max(self._files) if self._files else 0
            self.fps = fps or _seqinfo_rate(folder.parent)
        elif self.path.is_file():
            cv2 = import_cv2()
            capture = cv2.VideoCapture(str(self.path))
            if not capture.isOpened():
                raise ConfigError(f"{self.path}: cannot be opened as a video")
            self._files = None
            rate, count = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
            capture.release()
            self.fps = fps or (float(rate) if rate and rate > 0 else None)
            self.frame_count = int(count) if count and count > 0 else None
        else:
            raise ConfigError(f"{self.path}: no such video file or frame folder")

    def _numbered(self, folder: Path) -> dict[int, Path]:
        """Frame number -> file: the number ending each name (000001.jpg) when every name has a distinct
        one, else the position in name order (1-based)."""
        files = image_files(folder)
        if not files:
            raise ConfigError(f"{folder}: holds no frame images")
        numbers = [FRAME_NUMBER.search(f.stem) for f in files]
        values = [int(m[1]) for m in numbers] if all(numbers) else []
        if len(set(values)) == len(files) and min(values) >= 1:
            return dict(zip(values, files, strict=True))
        return {i: f for i, f in enumerate(files, 1)}

    def frames(self, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        """The wanted frames in order; stops early (frames_read says where) when the video ends."""
        if not wanted:
            return
        last = max(wanted)
        if self._files is not None:
            for number in sorted(wanted):
                if number in self._files:
                    with Image.open(self._files[number]) as image:
                        pixels = np.asarray(image.convert("RGB"))
                    self.frames_read = max(self.frames_read, number)
                    yield number, pixels
            self.frames_read = max([n for n in self._files if n <= last], default=0)
            return
        cv2 = import_cv2()
        capture = cv2.VideoCapture(str(self.path))
        try:
            for number in range(1, last + 1):
                if not capture.grab():  # the stream ends (or is truncated) here
                    break
                self.frames_read = number
                if number in wanted:
                    ok, bgr = capture.retrieve()
                    if not ok:
                        break
                    yield number, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()


def _seqinfo_rate(sequence: Path) -> float | None:
    """frameRate of a MOTChallenge sequence's seqinfo.ini, if there is one."""
    ini = sequence / "seqinfo.ini"
    if not ini.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(ini, encoding="utf-8")
        rate = float(parser["Sequence"]["frameRate"])
    except (configparser.Error, KeyError, ValueError):
        return None
    return rate if rate > 0 else None


def clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[int, ...] | None:
    """The box's pixels inside a width x height frame as integer (left, top, right, bottom), or None
    when less than one pixel of it is inside."""
    left, top = max(0, int(round(x))), max(0, int(round(y)))
    right, bottom = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if right - left < 1 or bottom - top < 1:
        return None
    return left, top, right, bottom


def hog_detect(frame: np.ndarray, min_height: int = 0) -> list[tuple[float, float, float, float, float]]:
    """People found by OpenCV's HOG + linear SVM detector (Dalal & Triggs; its default model ships inside
    OpenCV): (x, y, w, h, score) per person. Weak (upright people of at least 64 x 128 pixels), but enough
    to try the tool on one's own video; a real detector's boxes go in through a detection file."""
    cv2 = import_cv2()
    if not hasattr(cv2, "HOGDescriptor"):
        raise ConfigError(
            f"--detector=hog: OpenCV {cv2.__version__} has no HOG detector (OpenCV 5 moved it out): "
            "pip install 'opencv-python-headless<5'"
        )
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    rects, weights = hog.detectMultiScale(frame, winStride=(8, 8), padding=(8, 8), scale=1.05)
    found = [
        (float(x), float(y), float(w), float(h), float(s))
        for (x, y, w, h), s in zip(np.reshape(rects, (-1, 4)), np.ravel(weights), strict=True)
        if h >= min_height
    ]
    return found
