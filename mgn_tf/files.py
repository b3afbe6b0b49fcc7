"""File helpers every module shares: the one atomic write, and the one list of image file extensions.

No TensorFlow here: dataset readers, config parsing and the serving clients use it too.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What `mgn_tf.images.decode_and_resize` (tf.io.decode_image) can decode, matched case-insensitively.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

_TMP_NUMBERS = itertools.count()  # one temporary name per atomic_path call in this process


def is_image_name(name: str) -> bool:
    """An image file by its extension; hidden files (``.x``, temporary files) are not images."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image file under `folder`, recursively, in sorted path order."""
    return sorted(p for p in Path(folder).rglob("*") if is_image_name(p.name) and p.is_file())


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `target` to write to; publishes it as `target` with one rename.

    A crash at any moment leaves either the old `target` or the new one, never half a file. The temporary
    name keeps the target's name as its end (``.tmp-<pid>-<n>-final.weights.h5``), so writers that choose
    the format by extension (Keras weights, PIL, numpy) behave as for the target; ``<n>`` differs per call,
    so threads writing one target at once (the data scan's workers) never share a temporary file and the
    last rename wins. On an exception the temporary file is removed and `target` is left as it was.
    """
    target = Path(target)
    tmp = target.with_name(f".tmp-{os.getpid()}-{next(_TMP_NUMBERS)}-{target.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `target` atomically (see `atomic_path`); returns `target` as a Path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, data: object) -> Path:
    """JSON with two-space indentation and a final newline; values JSON cannot hold are written as str."""
    return atomic_write_text(target, json.dumps(data, indent=2, default=str) + "\n")


def unique_names(names: list[str]) -> list[str]:
    """`names` in order, each one seen before (ignoring case: one file on case-insensitive file systems)
    suffixed `_2`, `_3`, ...: the names of files or folders written side by side."""
    taken: set[str] = set()
    out = []
    for name in names:
        unique, n = name, 1
        while unique.lower() in taken:
            n += 1
            unique = f"{name}_{n}"
        taken.add(unique.lower())
        out.append(unique)
    return out
