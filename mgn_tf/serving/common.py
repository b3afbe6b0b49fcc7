"""Client-side helpers shared by the REST and gRPC clients: reading image files and ranking.

Only the standard library and numpy (Pillow, if installed, for a stricter check), so a client machine does
not need TensorFlow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mgn_tf.evaluation.metrics import l2_normalize
from mgn_tf.files import image_files as _folder_images

# Formats tf.io.decode_image (the server's decoder) reads, by their leading bytes (JPEG XL left out).
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}


class UnreadableImageError(ValueError):
    """An image file the server could not decode; the message names the file. Raised before sending."""


def image_format(data: bytes) -> str | None:
    """ "JPEG", "PNG", "GIF", "BMP" or "WEBP" from the leading bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file the server can decode; raises UnreadableImageError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableImageError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    kind = image_format(data)
    if kind is None:
        raise UnreadableImageError(
            f"{path} is not a JPEG, PNG, GIF, BMP or WebP image (the formats the server decodes)"
        )
    try:
        from PIL import Image
    except ImportError:
        return data
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt data
        raise UnreadableImageError(f"{path} is a corrupt {kind} image: {exc}") from exc
    return data


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files given directly plus the image files inside given folders (recursive, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += _folder_images(item)
        else:
            files.append(item)
    return files


def cosine_ranking(query: np.ndarray, gallery: np.ndarray, top_k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the indices and cosine similarities of the `top_k` most similar gallery rows."""
    similarity = l2_normalize(query) @ l2_normalize(gallery).T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
    return order, np.take_along_axis(similarity, order, axis=1)


def print_results(
    query_files: Sequence[Path],
    query: np.ndarray,
    gallery_files: Sequence[Path],
    gallery: np.ndarray | None,
    top_k: int,
) -> None:
    """Prints each query's embedding summary, or its top-k gallery matches when a gallery is given."""
    if gallery is None:
        for path, vector in zip(query_files, query, strict=True):
            head = " ".join(f"{v:.4f}" for v in vector[:6])
            print(f"{path}: dim {vector.size}, norm {np.linalg.norm(vector):.4f}, [{head} ...]")
        return
    order, scores = cosine_ranking(query, gallery, top_k)
    for path, indices, sims in zip(query_files, order, scores, strict=True):
        print(f"{path}:")
        for rank, (i, s) in enumerate(zip(indices, sims, strict=True), 1):
            print(f"  {rank:2d}. {s:.4f}  {gallery_files[i]}")


def define_client_flags(default_server: str, server_help: str) -> list[str]:
    """absl flags shared by the REST and gRPC clients; returns their names."""
    from absl import flags

    before = set(flags.FLAGS)
    flags.DEFINE_string("server", default_server, server_help)
    flags.DEFINE_string("model_name", "mgn", "Served model name.")
    flags.DEFINE_integer("version", None, "Model version (default: the latest).")
    flags.DEFINE_string("gallery", None, "Gallery folder: rank it by cosine similarity for each query.")
    flags.DEFINE_integer("top_k", 5, "Gallery matches to print per query.")
    flags.DEFINE_integer("batch_size", 32, "Images per request.")
    return [name for name in flags.FLAGS if name not in before]


def run_client(argv: list[str], embed_files, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Client entry: embed the query files (and a gallery folder), print embeddings or a ranking.

    Returns the exit code: 0; 2 for a usage error (a bad flag value, a missing path or a file that is not
    an image, found before anything is sent); 1 when the server fails.
    """
    from absl import flags

    from mgn_tf import cli

    f = flags.FLAGS
    for name in ("top_k", "batch_size"):
        if f[name].value < 1:
            return cli.error(f"--{name}={f[name].value}: must be >= 1")
    missing = [item for item in argv[1:] if not Path(item).exists()]
    if missing:
        return cli.error(f"no such file or folder: {missing[0]}")
    files = image_files(argv[1:])
    if not files:
        return cli.error("give query image files or folders (with images)")
    gallery_files: list[Path] = []
    if f.gallery:
        if not Path(f.gallery).is_dir():
            return cli.error(f"--gallery={f.gallery}: no such folder")
        gallery_files = image_files([f.gallery])
        if not gallery_files:
            return cli.error(f"--gallery={f.gallery}: no image files in it")
    try:
        for path in [*files, *gallery_files]:  # every file before the first request
            read_image_file(path)
    except UnreadableImageError as exc:
        return cli.error(exc)
    options = dict(server=f.server, model_name=f.model_name, version=f.version, batch_size=f.batch_size)
    try:
        query = embed_files(files, **options)
        gallery = embed_files(gallery_files, **options) if gallery_files else None
    except (RuntimeError, UnreadableImageError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_results(files, query, gallery_files, gallery, f.top_k)
    return 0
