"""Pre-training dataset scan: every image must decode with the training decoder before a long run starts.

`scan_items` reads every file of a dataset list once, in parallel, and sorts it into one of three bins:

- usable as is: PIL loads it completely, its mode is ``RGB``, and `tf.io.decode_image` with the
  arguments of `mgn_tf.images.decode_and_resize` (``channels=3, expand_animations=False``) decodes it
  to PIL's height and width. This covers RGB JPEG, PNG (8- or 16-bit), BMP and WebP.
- converted: PIL reads it but it is not plain RGB (modes ``1``, ``L``, ``P``, ``RGBA``, ``LA``, ``PA``,
  ``CMYK``, ``YCbCr``, ``I;16``, ``I``, ...), or it is RGB in a format or variant TF cannot decode
  (TIFF, ...). It is written once as an 8-bit RGB PNG (lossless, so the pixels are PIL's decode) in
  ``convert_dir`` and the item points at the copy. Decision: every non-RGB file is converted, even those
  TF would decode (grayscale, RGBA, palette PNG), so training only ever reads explicit RGB. Alpha is
  dropped, not composited (what TF does with ``channels=3``); 16-bit values ``v`` become
  ``round(v / 257)`` (what TF does); palette images take their palette colours.
- bad (skipped, or `BadDataError` with ``strict=True``): missing, unreadable (permissions, a folder),
  zero bytes, not an image PIL can identify, truncated (rule: PIL's full ``load()`` raising
  "image file is truncated" / "Truncated File Read" marks the file truncated, whatever TF makes of it,
  because TF may fill a cut JPEG with gray), otherwise corrupt (any other PIL load error), a mode with no
  faithful 8-bit RGB form (``F``), and anything whose final bytes TF still cannot decode.

The scan relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``. EXIF orientation is
ignored, as TF ignores it. Converted copies are named ``<original stem>_<16 hex of sha256(abs path)>.png``
(two files with one basename do not collide); an existing copy at least as new as its source is reused,
so a second scan converts nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from mgn_tf.files import atomic_write_bytes

__all__ = ["ScanReport", "BadDataError", "scan_items", "SCAN_JSON", "SKIPPED_TXT"]

Item = tuple[str, int, int]

SCAN_JSON = "data_scan.json"
SKIPPED_TXT = "skipped_images.txt"
_LIST_LIMIT = 20  # bad files named in an error message

_MODE_NAMES = {
    "1": "bilevel (1)",
    "L": "grayscale (L)",
    "P": "palette (P)",
    "RGBA": "RGBA, alpha dropped",
    "LA": "grayscale+alpha (LA), alpha dropped",
    "PA": "palette+alpha (PA), alpha dropped",
    "RGBa": "premultiplied RGBA (RGBa), alpha dropped",
    "La": "premultiplied LA (La), alpha dropped",
    "RGBX": "RGBX",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "LAB",
    "HSV": "HSV",
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadDataError(ValueError):
    """Bad image files found by a strict scan; ``.report`` holds the full `ScanReport`."""

    def __init__(self, report: ScanReport):
        self.report = report
        super().__init__(
            f"data scan: {len(report.bad)} of {report.num_input} image files cannot be used "
            f"(strict mode):\n{_bad_lines(report.bad, _LIST_LIMIT)}"
        )


@dataclass
class ScanReport:
    """Outcome of `scan_items`; ``items`` is the list to train on."""

    items: list[Item]
    bad: list[tuple[str, str]]
    converted: list[tuple[str, str, str]]
    single_image_pids: list[int]
    lost_pids: list[int] = field(default_factory=list)  # identities with no usable image left
    num_input: int = 0  # items given to the scan

    def summary(self, max_bad: int = 5) -> str:
        """Short human text: counts, reasons by kind and the first few bad files."""
        lines = [
            f"data scan: {self.num_input} items -> {len(self.items)} usable "
            f"({len(self.converted)} converted to RGB PNG), {len(self.bad)} skipped"
        ]
        if self.converted:
            kinds = Counter(reason.split(" -> ")[0] for _, _, reason in self.converted)
            lines.append("  converted: " + "; ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
        if self.bad:
            kinds = Counter(reason.split(":")[0] for _, reason in self.bad)
            lines.append("  skipped: " + "; ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
            lines.append(_bad_lines(self.bad, max_bad))
        if self.single_image_pids:
            lines.append(
                f"  identities with a single usable image (sampled with replacement, no real positive): "
                f"{len(self.single_image_pids)}: {_short_list(self.single_image_pids)}"
            )
        if self.lost_pids:
            lines.append(
                f"  identities that lost every image: {len(self.lost_pids)}: {_short_list(self.lost_pids)}"
            )
        return "\n".join(lines)

    def write(self, run_dir: str | Path) -> Path:
        """Writes ``run_dir/data_scan.json`` (everything) and ``run_dir/skipped_images.txt``
        (``path<TAB>reason`` per line); returns the JSON path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "num_input": self.num_input,
            "num_usable": len(self.items),
            "num_converted": len(self.converted),
            "num_bad": len(self.bad),
            "bad": [{"path": path, "reason": reason} for path, reason in self.bad],
            "converted": [
                {"original": original, "converted": converted, "reason": reason}
                for original, converted, reason in self.converted
            ],
            "single_image_pids": self.single_image_pids,
            "lost_pids": self.lost_pids,
            "items": [list(item) for item in self.items],
        }
        json_path = run_dir / SCAN_JSON
        json_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        skipped = "".join(f"{path}\t{reason}\n" for path, reason in self.bad)
        (run_dir / SKIPPED_TXT).write_text(skipped, encoding="utf-8")
        return json_path


def scan_items(
    items: Iterable[Item],
    convert_dir: str | Path,
    strict: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> ScanReport:
    """Checks every item's image file (see the module docstring for the rules), converting what needs it.

    Each distinct path is read once. Raises `BadDataError` after the scan if ``strict`` and any file is
    bad, and ValueError if no item is usable. ``workers``: threads (default: 2 per CPU, at most 16).
    """
    items = [(str(path), int(pid), int(camid)) for path, pid, camid in items]
    if not items:
        raise ValueError("data scan: the item list is empty, there is nothing to train on")
    convert_dir = Path(convert_dir)
    convert_dir.mkdir(parents=True, exist_ok=True)
    paths = list(dict.fromkeys(path for path, _, _ in items))
    if workers is None:
        workers = min(16, 2 * _num_cpus())
    workers = max(1, min(workers, len(paths)))

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data-scan")
    try:
        results = pool.map(lambda path: _check(path, convert_dir), paths)
        bar = tqdm(results, total=len(paths), desc="scan images", unit="img", disable=not progress)
        checked = dict(zip(paths, bar, strict=True))
    except BaseException:  # Ctrl-C or a convert_dir write error: do not wait for the queued files
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()

    usable, bad, converted = [], [], []
    for path in paths:
        final, reason = checked[path]
        if final is None:
            bad.append((path, reason))
        elif final != path:
            converted.append((path, final, reason))
    for path, pid, camid in items:
        final, _ = checked[path]
        if final is not None:
            usable.append((final, pid, camid))

    counts = Counter(pid for _, pid in {(path, pid) for path, pid, _ in usable})  # distinct images per pid
    report = ScanReport(
        items=usable,
        bad=bad,
        converted=converted,
        single_image_pids=sorted(pid for pid, n in counts.items() if n == 1),
        lost_pids=sorted({pid for _, pid, _ in items} - set(counts)),
        num_input=len(items),
    )
    if strict and bad:
        raise BadDataError(report)
    if not usable:
        raise ValueError(
            f"data scan: none of the {len(items)} items has a usable image file:\n"
            f"{_bad_lines(bad, _LIST_LIMIT)}"
        )
    return report


# --------------------------------------------------------------------------------------------- one file


def _check(path: str, convert_dir: Path) -> tuple[str | None, str]:
    """(path to train on, reason) for one file; path None: bad, reason says why."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "missing: no such file"
    except PermissionError:
        return None, "unreadable: permission denied"
    except IsADirectoryError:
        return None, "unreadable: is a directory, not a file"
    except OSError as exc:
        return None, f"unreadable: {_one_line(exc.strerror or exc)}"
    if not data:
        return None, "empty: file has 0 bytes"

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return None, f"not an image: PIL cannot identify the format (file starts with {data[:12]!r})"
    except Exception as exc:  # any failure to open names the file and never stops the scan
        return None, f"corrupt: {_exc_text(exc)}"
    fmt = image.format or "image"
    try:
        image.load()
    except OSError as exc:
        text = _exc_text(exc)
        if "truncated" in text.lower():
            return None, f"truncated: {fmt} data ends early ({text})"
        return None, f"corrupt: {fmt} cannot be decoded ({text})"
    except Exception as exc:
        return None, f"corrupt: {fmt} cannot be decoded ({_exc_text(exc)})"

    if image.mode == "RGB":
        error = _tf_decode_error(data, image.size)
        if error is None:
            return path, "ok"
        reason = f"{fmt} RGB that TF cannot decode ({error})"
    elif image.mode in _SIXTEEN_BIT_MODES:
        reason = f"{fmt} 16-bit grayscale ({image.mode}), scaled to 8 bits"
    elif image.mode in _MODE_NAMES:
        reason = f"{fmt} {_MODE_NAMES[image.mode]}"
    else:
        return None, f"unsupported: {fmt} pixel mode {image.mode} has no faithful 8-bit RGB form"
    return _convert(path, image, convert_dir, reason)


def _convert(path: str, image: Image.Image, convert_dir: Path, reason: str) -> tuple[str | None, str]:
    """Writes (or reuses) the RGB PNG copy of ``image`` and checks TF decodes it."""
    source = Path(path)
    digest = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    target = convert_dir / f"{source.stem}_{digest}.png"
    reason = f"{reason} -> RGB PNG"
    try:
        fresh = target.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except OSError:
        fresh = False
    if fresh and _tf_decode_error(_read_or_empty(target), image.size) is None:
        return str(target), reason  # converted by an earlier scan
    try:
        rgb = _to_rgb(image)
    except Exception as exc:
        return None, f"unsupported: {image.mode} to RGB conversion failed ({_exc_text(exc)})"
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG", compress_level=1)
    data = buffer.getvalue()
    error = _tf_decode_error(data, image.size)
    if error is not None:
        return None, f"undecodable: TF cannot decode even the RGB PNG copy ({error})"
    try:
        atomic_write_bytes(target, data)  # a crash never leaves half a PNG
    except OSError as exc:
        raise OSError(f"data scan: cannot write the RGB copy of {path} to {target}: {exc}") from exc
    return str(target), reason


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of a loaded image: alpha dropped, 16-bit scaled by 1/257 (as TF does)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        gray = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1), "RGB")
    if image.mode == "PA":
        image = image.convert("RGBA")
    return image.convert("RGB")


def _tf_decode_error(data: bytes, size: tuple[int, int]) -> str | None:
    """None if the training decoder turns ``data`` into a [height, width, 3] image of PIL's ``size``."""
    try:
        # The op `tf.io.decode_image(..., channels=3, expand_animations=False)` runs for uint8, minus the
        # Python wrapper, which costs as much as the decode itself for a small image.
        image = tf.raw_ops.DecodeImage(contents=data, channels=3, expand_animations=False, dtype=tf.uint8)
    except tf.errors.OpError as exc:
        return _exc_text(exc)
    width, height = size
    if tuple(image.shape) != (height, width, 3):
        return f"TF decodes shape {tuple(image.shape)}, PIL {height}x{width}"
    return None


# ---------------------------------------------------------------------------------------------- helpers


def _num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _exc_text(exc: BaseException) -> str:
    """One clean line from an exception (TF's ``{{function_node ...}}`` and ``[Op:...]`` removed)."""
    text = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", str(exc)).strip()
    return _one_line(text or type(exc).__name__)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _short_list(values: list[int], limit: int = 20) -> str:
    more = f", ... ({len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(map(str, values[:limit])) + more


def _bad_lines(bad: list[tuple[str, str]], limit: int) -> str:
    lines = [f"    {path}: {reason}" for path, reason in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"    ... and {len(bad) - limit} more (see {SKIPPED_TXT} in the run folder)")
    return "\n".join(lines)
