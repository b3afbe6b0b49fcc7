"""The synthetic dataset on disk: which files exist, which random stream draws each, and the marker files.

Layout written under ``root`` (names ``PPPP_cCsS_FFFFFF_BB.jpg`` as in Market-1501):

- ``bounding_box_train/``: identities ``1..num_train_ids``;
- ``query/``: one image per (test identity, camera) it appears in;
- ``bounding_box_test/``: the other images of the test identities (ids ``num_train_ids + 1 ..``), plus
  ``num_distractors`` pid-``0000`` images (partial people, background crops, strangers).

Every identity appears in at least two cameras, so each query has a gallery match from another camera.
Each identity, camera, image and distractor, and the file plan, has its own random stream keyed by
``(seed, stream, ...)``, so one image does not depend on the order in which the others were drawn.

Two files mark ownership and completeness: ``.mgn_synthetic`` is written first and kept (the split
folders belong to this generator and may be regenerated), ``synthetic_complete.json`` is written last
with the settings and file counts (its presence means the dataset is complete).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mgn_tf.data.synthetic.render import Camera, Identity, make_camera, make_identity, render
from mgn_tf.files import atomic_write_json, atomic_write_text

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MARKER_NAME = "synthetic_complete.json"  # written last: its presence means the dataset is complete
_OWNER_NAME = ".mgn_synthetic"  # written first and kept: the split folders belong to this module
_FORMAT_VERSION = 1

# Independent random streams: (seed, stream, ...) -> numpy Generator.
_S_IDENTITY, _S_CAMERA, _S_IMAGE, _S_DISTRACTOR, _S_LAYOUT = range(5)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Generator for one random stream; independent of generation order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]]))


@dataclass(frozen=True)
class _Job:
    split: str
    name: str
    pid: int
    cam: int  # 0-based
    index: int  # image index within (pid, camera), or distractor index


def _plan(
    seed: int,
    num_train_ids: int,
    num_test_ids: int,
    num_cameras: int,
    images_per_id_per_camera: int,
    num_distractors: int,
) -> list[_Job]:
    """Decide every file: which cameras see each identity, splits, frame numbers and names."""
    rng = _rng(seed, _S_LAYOUT)
    frame = rng.integers(0, 2000, size=num_cameras)
    min_cams = min(3, num_cameras)
    jobs: list[_Job] = []

    def name(pid: int, cam: int) -> str:
        frame[cam] += int(rng.integers(25, 400))
        seq = 1 + int(frame[cam]) // 160_000
        return f"{pid:04d}_c{cam + 1}s{seq}_{int(frame[cam]):06d}_{int(rng.integers(1, 4)):02d}.jpg"

    for pid in range(1, num_train_ids + num_test_ids + 1):
        test = pid > num_train_ids
        k = int(rng.integers(min_cams, num_cameras + 1))
        cams = sorted(int(c) for c in rng.choice(num_cameras, size=k, replace=False))
        for pos, cam in enumerate(cams):
            for i in range(images_per_id_per_camera):
                if not test:
                    split = SPLITS[0]
                elif images_per_id_per_camera >= 2:  # one query per camera, the rest in the gallery
                    split = SPLITS[1] if i == 0 else SPLITS[2]
                else:  # one image per camera: alternate cameras between query and gallery
                    split = SPLITS[1] if pos % 2 == 0 else SPLITS[2]
                jobs.append(_Job(split, name(pid, cam), pid, cam, i))
    for j in range(num_distractors):
        cam = int(rng.integers(num_cameras))
        jobs.append(_Job(SPLITS[2], name(0, cam), 0, cam, j))
    return jobs


def generate_synthetic(
    root: str | Path,
    num_train_ids: int = 150,
    num_test_ids: int = 75,
    num_cameras: int = 6,
    images_per_id_per_camera: int = 2,
    image_size: tuple[int, int] = (128, 64),
    num_distractors: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a synthetic Market-1501-layout dataset under ``root`` and return ``root``.

    Each identity is seen by a random subset of ``min(3, num_cameras)..num_cameras`` cameras, with
    ``images_per_id_per_camera`` images per camera. ``image_size`` is (height, width) of the JPEGs.
    Existing split folders are only overwritten if they were written by this module.
    """
    size = _check_arguments(
        num_train_ids, num_test_ids, num_cameras, images_per_id_per_camera, num_distractors, image_size
    )
    root = Path(root)
    _claim(root)
    jobs = _plan(seed, num_train_ids, num_test_ids, num_cameras, images_per_id_per_camera, num_distractors)
    _write_images(root, jobs, seed, num_cameras, size, progress)
    settings = _settings(
        root,
        seed,
        num_train_ids=num_train_ids,
        num_test_ids=num_test_ids,
        num_cameras=num_cameras,
        images_per_id_per_camera=images_per_id_per_camera,
        image_size=size,
        num_distractors=num_distractors,
    )
    counts = {s: sum(j.split == s for j in jobs) for s in SPLITS}
    atomic_write_json(root / MARKER_NAME, {"format_version": _FORMAT_VERSION, **settings, "counts": counts})
    return root


def _check_arguments(
    num_train_ids: int,
    num_test_ids: int,
    num_cameras: int,
    images_per_id_per_camera: int,
    num_distractors: int,
    image_size: tuple[int, int],
) -> tuple[int, int]:
    """Refuse counts the Market-1501 names or the queries cannot take; return (height, width) as ints."""
    if num_cameras < 2:
        raise ValueError("num_cameras must be at least 2 (queries need a match from another camera)")
    if min(num_train_ids, num_test_ids, images_per_id_per_camera) < 1 or num_distractors < 0:
        raise ValueError("identity and image counts must be positive (num_distractors >= 0)")
    if num_train_ids + num_test_ids > 9999 or num_cameras > 9:
        raise ValueError("Market-1501 names allow at most 9999 identities and 9 cameras")
    h, w = int(image_size[0]), int(image_size[1])
    if h < 16 or w < 8:
        raise ValueError(f"image_size (height, width) too small: {image_size}")
    return h, w


def _owned(root: Path) -> bool:
    return (root / MARKER_NAME).exists() or (root / _OWNER_NAME).exists()


def _claim(root: Path) -> None:
    """Mark ``root`` as this generator's, drop the marker and stale images; refuse a foreign dataset."""
    dirs = [root / s for s in SPLITS]
    if not _owned(root) and any(d.is_dir() and any(d.iterdir()) for d in dirs):
        raise FileExistsError(
            f"{root} holds a dataset that generate_synthetic did not write; not overwriting"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        root / _OWNER_NAME, "written by mgn_tf.data.synthetic; the split folders may be regenerated\n"
    )
    (root / MARKER_NAME).unlink(missing_ok=True)
    for d in dirs:
        d.mkdir(exist_ok=True)
        for f in d.glob("*.jpg"):  # stale files of an earlier synthetic dataset
            f.unlink()


def _write_images(
    root: Path, jobs: list[_Job], seed: int, num_cameras: int, size: tuple[int, int], progress: bool
) -> None:
    """Render and save every planned image as a quality-95 JPEG."""
    cams = [make_camera(_rng(seed, _S_CAMERA, c)) for c in range(num_cameras)]
    idents: dict[int, Identity] = {}
    it: Iterable[_Job] = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="synthetic dataset", unit="img")
    for job in it:
        img = _render_job(job, seed, cams, idents, size)
        img.save(root / job.split / job.name, format="JPEG", quality=95)


def _render_job(
    job: _Job, seed: int, cams: list[Camera], idents: dict[int, Identity], size: tuple[int, int]
) -> Image.Image:
    """One planned image; a distractor (pid 0) is a stranger or nobody (20 %), badly framed."""
    if job.pid == 0:
        rng = _rng(seed, _S_DISTRACTOR, job.index)
        ident = make_identity(rng) if rng.random() < 0.8 else None
        return render(ident, cams[job.cam], rng, size, distractor=True)
    if job.pid not in idents:
        idents[job.pid] = make_identity(_rng(seed, _S_IDENTITY, job.pid))
    rng = _rng(seed, _S_IMAGE, job.pid, job.cam, job.index)
    return render(idents[job.pid], cams[job.cam], rng, size)


def _settings(root: str | Path, seed: int, **kwargs: Any) -> dict[str, Any]:
    """All generate_synthetic settings for these arguments, defaults filled in, as stored in the marker."""
    bound = inspect.signature(generate_synthetic).bind(root, seed=seed, **kwargs)
    bound.apply_defaults()
    out = {k: v for k, v in bound.arguments.items() if k not in ("root", "progress")}
    out["image_size"] = [int(v) for v in out["image_size"]]
    return out


def _complete(root: Path, settings: dict[str, Any]) -> bool:
    """True if ``root`` holds a finished dataset generated with ``settings`` with all its files."""
    try:
        info = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if info.get("format_version") != _FORMAT_VERSION or any(info.get(k) != v for k, v in settings.items()):
        return False
    counts = info.get("counts", {})
    return all(
        (root / s).is_dir() and sum(1 for _ in (root / s).glob("*.jpg")) == counts.get(s, -1) for s in SPLITS
    )


def ensure_synthetic(root: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Generate the synthetic dataset under ``root`` unless a complete one with the same settings is there.

    ``kwargs`` are further generate_synthetic arguments (defaults otherwise). Returns ``root``.
    """
    root = Path(root)
    settings = _settings(root, seed, **kwargs)
    if not _complete(root, settings):
        generate_synthetic(root, seed=seed, **kwargs)
    return root
