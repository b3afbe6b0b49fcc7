"""A searchable gallery of one's own images: embeddings of one model, stored as plain files.

    gallery = Gallery.build(embedder, paths)          # flip-averaged, L2-normalised embeddings
    gallery.add(more_paths)                            # appended; unreadable images skipped and listed
    gallery.save("my_index")                           # index.json + features_*.npy + items_*.jsonl
    gallery = Gallery.load("my_index")                 # features memory-mapped, never read whole
    result = gallery.search(["who.jpg"], k=10)         # or query features [Q, D]

On disk (a folder): `index.json` (format, the model: source, format, input size, flip / normalisation,
and its fingerprint), `probe.npy` (the fingerprint: embeddings of fixed synthetic images), and one
shard per build or add: `features_NNNNN.npy` ([n, D] float32 or float16, np.load-able) and
`items_NNNNN.jsonl` (one {"path", "pid", "camera"} per line; pid and camera parsed from Market-1501
style names like 0002_c1s1_000451_03.jpg, else null). index.json is written last, so an interrupted
add leaves the index as it was. Writers take the folder's lock (mgn_tf.locks) from re-reading index.json
to writing it, so concurrent adds all land (see Gallery.save).

The fingerprint makes "same model" checkable across formats: a run directory and its fp32 SavedModel /
TFLite / ONNX exports give the same probe embeddings (cosine >= FINGERPRINT_MIN_COSINE), another model
or a lossy int8 export does not, and adding to or querying an index with it is refused.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import mgn_tf.gallery.knn as knn
from mgn_tf import locks
from mgn_tf.evaluation.metrics import l2_normalize
from mgn_tf.files import atomic_path, atomic_write_json

if TYPE_CHECKING:
    from mgn_tf.evaluation.settings import RerankParams
    from mgn_tf.inference import Embedder

INDEX_JSON = "index.json"
PROBE_NPY = "probe.npy"
FORMAT_NAME = "mgn_tf gallery index"
FORMAT_VERSION = 2  # 2: items may be video tracklets; version-1 indexes (images only) still load
READ_VERSIONS = (1, 2)
FINGERPRINT_MIN_COSINE = 0.999
PROBE_SEED = 1501
NUM_PROBES = 4
EMBED_CHUNK = 256  # files embedded per call, so one unreadable file costs one chunk's re-check
NAME_PATTERN = re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)(s\d+)?_.*")  # Market-1501 / DukeMTMC style
DTYPES = ("float32", "float16")


class GalleryError(ValueError):
    """A gallery that cannot be read, or an operation it refuses (another model, other settings)."""


@dataclass(frozen=True)
class Item:
    """A gallery entry: an image file, or a video tracklet (`tracklet` set; `path` is its thumbnail,
    `camera` the video's camera name; see mgn_tf.video.tracklets)."""

    path: str
    pid: int | None = None
    camera: int | str | None = None
    tracklet: dict | None = None

    def to_json(self) -> dict:
        record = {"path": self.path, "pid": self.pid, "camera": self.camera}
        return record if self.tracklet is None else {**record, "tracklet": self.tracklet}


def parse_name(path: str) -> Item:
    """Item of an image path; pid and camera number from a Market-1501 style name, else None."""
    match = NAME_PATTERN.fullmatch(Path(path).stem)
    if match is None:
        return Item(path)
    return Item(path, int(match["pid"]), int(match["cam"]))


@dataclass
class ModelInfo:
    """What produced a gallery's features, with its fingerprint (`probe`, [NUM_PROBES, D] unit rows)."""

    source: str
    format: str
    input_size: tuple[int, int]
    flip: bool
    normalize: bool
    probe: np.ndarray

    def to_json(self) -> dict:
        return {
            "source": self.source, "format": self.format, "input_size": list(self.input_size),
            "flip": self.flip, "normalize": self.normalize, "dim": int(self.probe.shape[1]),
        }  # fmt: skip


def probe_images(input_size: tuple[int, int]) -> np.ndarray:
    """NUM_PROBES fixed uint8 images [N, H, W, 3]: seeded noise and smooth colour gradients."""
    height, width = input_size
    rng = np.random.default_rng(PROBE_SEED)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    images = [rng.integers(0, 256, (height, width, 3))]
    for i in range(1, NUM_PROBES):
        phase = rng.random(3) * 2 * np.pi
        images.append(
            np.stack([127.5 + 127.5 * np.sin(2 * np.pi * (i * yy + c * xx) + phase[c]) for c in range(3)], -1)
        )
    return np.clip(np.stack(images), 0, 255).astype(np.uint8)


def fingerprint(embedder: Embedder, flip: bool) -> np.ndarray:
    """The model's embeddings of `probe_images`, L2-normalised, float32 [NUM_PROBES, D]."""
    return embedder.embed(probe_images(embedder.input_size), flip=flip, normalize=True)


def model_info(embedder: Embedder, flip: bool = True, normalize: bool = True) -> ModelInfo:
    if embedder.baked_flip_norm and not (flip and normalize):
        raise GalleryError(
            f"{embedder.path} flip-averages and L2-normalises inside (exported with --bake_flip_norm); it "
            "cannot index without flip or normalisation"
        )
    return ModelInfo(
        str(Path(embedder.path).resolve()), embedder.format, embedder.input_size, bool(flip), bool(normalize),
        fingerprint(embedder, flip),
    )  # fmt: skip


def check_same_model(stored: ModelInfo, embedder: Embedder, where: str) -> None:
    """Raises GalleryError (one line) unless `embedder` is the model that built the gallery at `where`."""
    if tuple(embedder.input_size) != tuple(stored.input_size):
        raise GalleryError(
            f"{embedder.path} takes {embedder.input_size[0]}x{embedder.input_size[1]} images, the index at "
            f"{where} was built at {stored.input_size[0]}x{stored.input_size[1]}"
        )
    probe = fingerprint(embedder, stored.flip)
    if probe.shape != stored.probe.shape:
        raise GalleryError(
            f"{embedder.path} gives {probe.shape[1]}-d embeddings, the index at {where} holds "
            f"{stored.probe.shape[1]}-d ones (built by {stored.source})"
        )
    cosine = float(np.min(np.sum(probe * stored.probe, axis=1)))
    if cosine < FINGERPRINT_MIN_COSINE:
        raise GalleryError(
            f"{embedder.path} is not the model that built the index at {where} ({stored.source}): its "
            f"fingerprint embeddings differ (cosine {cosine:.4f} < {FINGERPRINT_MIN_COSINE}); index the "
            "images again with this model into a new folder"
        )


def embed_files(
    embedder: Embedder, paths: Sequence[str], flip: bool, normalize: bool, batch_size: int = 32,
    progress: bool = False, description: str = "embedding",
) -> tuple[np.ndarray, list[str], list[dict]]:  # fmt: skip
    """(features of the readable files, those files, [{"path", "error"}] of the others), in order."""
    from tqdm.auto import tqdm

    from mgn_tf.images import unreadable

    outputs, kept, skipped = [], [], []
    embedder.expect(len(paths) * (2 if flip else 1))  # embedded in chunks: say how many in all
    with tqdm(total=len(paths), desc=description, unit="img", disable=not progress) as bar:
        for a in range(0, len(paths), EMBED_CHUNK):
            chunk = list(paths[a : a + EMBED_CHUNK])
            try:
                features = embedder.embed(chunk, batch_size, flip=flip, normalize=normalize)
            except ValueError:  # ImageReadError, or TensorFlow's unnamed decode error: which file?
                bad = unreadable(chunk, embedder.input_size)
                if not bad:
                    raise
                skipped += [{"path": str(path), "error": str(error)} for path, error in bad]
                chunk = [p for p in chunk if p not in {path for path, _ in bad}]
                features = embedder.embed(chunk, batch_size, flip=flip, normalize=normalize)
            outputs.append(features)
            kept += [str(p) for p in chunk]
            bar.update(len(paths[a : a + EMBED_CHUNK]))
    dim = outputs[0].shape[1] if outputs else 0
    return (np.concatenate(outputs) if outputs else np.zeros((0, dim), np.float32)), kept, skipped


@dataclass
class Shard:
    features: np.ndarray  # [n, D] (a memory map when loaded)
    items: list[Item]
    file: str | None = None  # features file name once saved
    added: str = ""  # when it was added (ISO 8601, UTC)
    scattered: np.ndarray | None = None  # the same file mapped for scattered row reads (no readahead)

    @property
    def rows(self) -> np.ndarray:
        return self.features if self.scattered is None else self.scattered


@dataclass
class Match:
    rank: int
    index: int
    path: str
    distance: float
    pid: int | None
    camera: int | None
    rerank_distance: float | None = None
    same_person: bool | None = None
    tracklet: dict | None = None

    def to_json(self) -> dict:
        record = dict(self.__dict__)
        if self.tracklet is None:
            record.pop("tracklet")
        return record


@dataclass
class SearchResult:
    """Per query, its matches in rank order; `recall_vs_exact` for an approximate backend, when asked."""

    matches: list[list[Match]]
    backend: str
    rerank: dict | None = None
    recall_vs_exact: dict | None = None
    seconds: dict = field(default_factory=dict)


class Gallery:
    """Embeddings of a list of images by one model, searchable; see the module docstring."""

    def __init__(self, model: ModelInfo, dtype: str = "float32", embedder: Embedder | None = None):
        if dtype not in DTYPES:
            raise GalleryError(f"feature dtype must be one of {DTYPES}, got {dtype!r}")
        self.model, self.dtype, self.embedder = model, dtype, embedder
        self.shards: list[Shard] = []
        self.skipped: list[dict] = []
        self.root: Path | None = None
        self.merged: dict | None = None  # what the last save merged (see save)
        self._faiss: dict[tuple, knn.FaissIndex] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls, embedder: Embedder, paths: Sequence[str | os.PathLike], *, flip: bool = True,
        normalize: bool = True, dtype: str = "float32", batch_size: int = 32, progress: bool = False,
    ) -> Gallery:  # fmt: skip
        """Embeds `paths` with `embedder` (unreadable files skipped, listed in `.skipped`)."""
        gallery = cls(model_info(embedder, flip, normalize), dtype, embedder)
        gallery.add(paths, batch_size=batch_size, progress=progress)
        return gallery

    def add(self, paths: Sequence[str | os.PathLike], batch_size: int = 32, progress: bool = False) -> dict:
        """Embeds and appends the images of `paths` not already in the gallery; returns the counts
        {"added", "skipped", "already_indexed"} (skipped files are also appended to `.skipped`)."""
        if self.embedder is None:
            raise GalleryError(
                "this gallery has no embedder: Gallery.load(dir, embedder=...) or .embedder = ..."
            )
        known = {item.path for shard in self.shards for item in shard.items}
        wanted, seen = [], set()
        for p in paths:
            resolved = str(Path(p).resolve())
            if resolved not in known and resolved not in seen:
                seen.add(resolved)
                wanted.append(resolved)
        m = self.model
        features, kept, skipped = embed_files(
            self.embedder, wanted, m.flip, m.normalize, batch_size, progress, "indexing"
        )
        if len(kept):
            self.add_features(features, kept)
        self.skipped += skipped
        return {"added": len(kept), "skipped": len(skipped), "already_indexed": len(paths) - len(wanted)}

    def add_features(self, features: np.ndarray, paths: Sequence[str], items: Sequence[Item] | None = None):
        """Appends precomputed features [n, D] (of this gallery's model and settings) for `paths`."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim or len(features) != len(paths):
            raise GalleryError(
                f"features must be [{len(paths)}, {self.dim}] for {len(paths)} paths, got {features.shape}"
            )
        items = list(items) if items is not None else [parse_name(p) for p in paths]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.shards.append(Shard(features.astype(self.dtype, copy=False), items, None, stamp))
        self._faiss.clear()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.model.probe.shape[1])

    def __len__(self) -> int:
        return sum(len(s.items) for s in self.shards)

    @property
    def items(self) -> list[Item]:
        return [item for shard in self.shards for item in shard.items]

    @property
    def rows(self) -> list[np.ndarray]:
        """The shards' features for reading scattered rows (candidates), in gallery order."""
        return [s.rows for s in self.shards]

    @property
    def features(self) -> list[np.ndarray]:
        """The shards' feature arrays (memory maps for a loaded gallery), in gallery order."""
        return [s.features for s in self.shards]

    def __repr__(self) -> str:
        return f"Gallery({len(self)} images, {self.dim}-d {self.dtype}, model={self.model.source!r})"

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike, lock_timeout: float | None = 600.0) -> Path:
        """Writes the gallery to `directory`: a new index there, or, when the gallery was loaded from it,
        its new shards added to the index as it is now.

        The folder's lock (mgn_tf.locks) is held from re-reading index.json to writing it, so two
        processes adding to one index both land: images another process added since this gallery was
        loaded are kept (and become part of this gallery), and new images it indexed meanwhile are not
        stored twice. `lock_timeout`: seconds to wait for another writer (None: as long as it takes).
        Returns the folder; `.merged` says what the merge found ({"others", "duplicates"})."""
        directory = Path(directory)
        with locks.hold(directory, f"the index {directory}", lock_timeout):
            same = self.root is not None and self.root.resolve() == directory.resolve()
            if (directory / INDEX_JSON).exists():
                if not same:
                    raise GalleryError(
                        f"{directory} already holds an index (another process may have just written it); "
                        "load it to add images, or use a new folder"
                    )
                self.merged = self._merge_current(directory)
            else:
                self.merged = {"others": 0, "duplicates": 0}
                if not same:  # a copy: every shard written anew
                    for shard in self.shards:
                        shard.file = None
            self._write(directory)
        self.root = directory
        return directory

    def _merge_current(self, directory: Path) -> dict:
        """Takes the shards of the index as it is now in `directory` (under its lock), with this
        gallery's unsaved shards after them less the images already there."""
        current = Gallery.load(directory)
        if current.dtype != self.dtype or current.dim != self.dim:
            raise GalleryError(
                f"{directory} now holds {current.dim}-d {current.dtype} features, this gallery "
                f"{self.dim}-d {self.dtype}: another process rebuilt the index"
            )
        mine = {s.file for s in self.shards if s.file}
        others = sum(len(s.items) for s in current.shards if s.file not in mine)
        there = {item.path for item in current.items}
        fresh, duplicates = [], 0
        for shard in (s for s in self.shards if not s.file):
            keep = [i for i, item in enumerate(shard.items) if item.path not in there]
            duplicates += len(shard.items) - len(keep)
            there.update(shard.items[i].path for i in keep)
            if len(keep) == len(shard.items):
                fresh.append(shard)
            elif keep:
                rows = np.asarray(shard.features)[keep]
                fresh.append(Shard(rows, [shard.items[i] for i in keep], None, shard.added))
        known = {json.dumps(entry, sort_keys=True) for entry in current.skipped}
        skipped = current.skipped + [s for s in self.skipped if json.dumps(s, sort_keys=True) not in known]
        self.shards, self.skipped = current.shards + fresh, skipped
        self._faiss.clear()
        return {"others": others, "duplicates": duplicates}

    def _write(self, directory: Path) -> None:
        """Writes the unsaved shards under names the index does not use, then probe.npy and index.json
        (last: a reader never sees an index whose files are not all there)."""
        used = {s.file for s in self.shards if s.file}
        number = 0
        for shard in self.shards:
            if shard.file:
                continue
            while f"features_{number:05d}.npy" in used:
                number += 1
            name = f"features_{number:05d}.npy"
            used.add(name)
            with atomic_path(directory / name) as tmp, open(tmp, "wb") as handle:
                np.save(handle, np.asarray(shard.features, self.dtype))
            lines = "".join(json.dumps(item.to_json()) + "\n" for item in shard.items)
            with atomic_path(directory / _items_name(name)) as tmp:
                tmp.write_text(lines, encoding="utf-8")
            shard.file = name
        with atomic_path(directory / PROBE_NPY) as tmp, open(tmp, "wb") as handle:
            np.save(handle, self.model.probe.astype(np.float32))
        record = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "model": self.model.to_json(),
            "dtype": self.dtype, "count": len(self), "distance": "euclidean",
            "shards": [
                {"features": s.file, "items": _items_name(s.file), "count": len(s.items), "added": s.added}
                for s in self.shards
            ],
            "skipped": self.skipped,
        }  # fmt: skip
        atomic_write_json(directory / INDEX_JSON, record)

    @classmethod
    def load(cls, directory: str | os.PathLike, embedder: Embedder | None = None) -> Gallery:
        """Opens a saved gallery (features memory-mapped). With `embedder`, checks it is the same model."""
        directory = Path(directory)
        path = directory / INDEX_JSON
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GalleryError(f"{directory} is not a gallery index (no {INDEX_JSON})") from None
        except (OSError, ValueError) as exc:
            raise GalleryError(f"{path} cannot be read: {exc}") from exc
        if record.get("format") != FORMAT_NAME or record.get("version") not in READ_VERSIONS:
            raise GalleryError(
                f"{path} is not a {FORMAT_NAME} of version {' or '.join(map(str, READ_VERSIONS))} (a newer "
                "mgn_tf wrote it?)"
            )
        m = record["model"]
        try:
            probe = np.load(directory / PROBE_NPY)
        except (OSError, ValueError) as exc:
            raise GalleryError(f"{directory / PROBE_NPY} cannot be read: {exc}") from exc
        model = ModelInfo(m["source"], m["format"], tuple(m["input_size"]), m["flip"], m["normalize"], probe)
        gallery = cls(model, record["dtype"])
        for entry in record["shards"]:
            try:
                features = np.load(directory / entry["features"], mmap_mode="r")
                lines = (directory / entry["items"]).read_text(encoding="utf-8").splitlines()
            except (OSError, ValueError) as exc:
                raise GalleryError(f"{directory}: shard {entry['features']} cannot be read: {exc}") from exc
            items = [Item(**json.loads(line)) for line in lines]
            if features.shape != (entry["count"], model.probe.shape[1]) or len(items) != entry["count"]:
                raise GalleryError(
                    f"{directory}: shard {entry['features']} holds {features.shape} features and "
                    f"{len(items)} items, index.json says {entry['count']}"
                )
            scattered = np.load(directory / entry["features"], mmap_mode="r")
            if hasattr(mmap, "MADV_RANDOM") and getattr(scattered, "_mmap", None) is not None:
                # Readahead fetches ~128 KiB around each touched page: for the few rows a query's candidates
                # need, that reads most of the file. The sequential exact scan keeps its own mapping.
                scattered._mmap.madvise(mmap.MADV_RANDOM)
            shard = Shard(features, items, entry["features"], entry.get("added", ""), scattered)
            gallery.shards.append(shard)
        gallery.skipped = list(record.get("skipped", []))
        gallery.root = directory
        if embedder is not None:
            gallery.attach(embedder)
        return gallery

    def attach(self, embedder: Embedder) -> None:
        """Embeds new images and queries with `embedder`; GalleryError unless it is the gallery's model."""
        check_same_model(self.model, embedder, str(self.root or self.model.source))
        self.embedder = embedder

    # ------------------------------------------------------------------ search
    def embed_queries(
        self, paths: Sequence[str | os.PathLike], batch_size: int = 32, progress: bool = False
    ) -> tuple[np.ndarray, list[str], list[dict]]:
        """(features, readable paths, skipped) of query images, with the gallery's model and settings."""
        if self.embedder is None:
            raise GalleryError("this gallery has no embedder to embed query images with")
        paths = [str(Path(p).resolve()) for p in paths]
        return embed_files(
            self.embedder, paths, self.model.flip, self.model.normalize, batch_size, progress, "queries"
        )

    def search(
        self, queries: Sequence[str | os.PathLike] | np.ndarray, k: int = 10, *, backend: str = "exact",
        nprobe: int = knn.DEFAULT_NPROBE, ef_search: int = knn.DEFAULT_EF_SEARCH, nlist: int | None = None,
        rerank: RerankParams | None = None, rerank_pool: int = 100, threshold: float | None = None,
        recall_queries: int = 0, keep: np.ndarray | None = None,
    ) -> SearchResult:  # fmt: skip
        """The k nearest gallery images of each query (image paths, embedded here, or features [Q, D]).

        backend: "exact" or "faiss_flat" / "faiss_ivfpq" (nlist cells, nprobe visited, 64-byte codes, the
        best REFINE_FACTOR x k candidates ranked exactly) / "faiss_ivf" (float32 cells) / "faiss_hnsw"
        (ef_search). rerank: k-reciprocal re-ranking of the queries' top-`rerank_pool` candidates (all of
        them when the pool covers the gallery: then equal to re-ranking the whole gallery). threshold:
        mark each match same_person = distance < threshold. recall_queries: for an approximate
        backend, also search that many queries exactly and report recall@k. keep: bool [Q, N], the
        gallery items each query may match (camera / time filters, the query's own tracklet left out):
        the k nearest allowed items, fewer when fewer are allowed.
        """
        if len(self) == 0:
            raise GalleryError("the gallery is empty")
        if k < 1:
            raise GalleryError(f"k must be >= 1, got {k}")
        if backend not in knn.BACKENDS:
            raise GalleryError(f"backend must be one of {', '.join(knn.BACKENDS)}, got {backend!r}")
        if isinstance(queries, np.ndarray):
            features = queries
        else:
            features, _, skipped = self.embed_queries(list(queries))
            if skipped:
                raise GalleryError(f"cannot read query image {skipped[0]['path']}: {skipped[0]['error']}")
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise GalleryError(f"query features must be [Q, {self.dim}], got {features.shape}")
        if self.model.normalize:
            features = l2_normalize(features)
        seconds: dict = {}
        started = time.perf_counter()
        wanted = max(k, rerank_pool) if rerank is not None else k
        if keep is not None and np.shape(keep) != (len(features), len(self)):
            raise GalleryError(f"keep must be [{len(features)}, {len(self)}], got {np.shape(keep)}")
        neighbours = self._search_kept(features, wanted, backend, nprobe, ef_search, nlist, seconds, keep)
        seconds["search"] = round(time.perf_counter() - started, 3)
        recall = None
        if recall_queries and backend not in ("exact", "faiss_flat") and keep is None:
            sample = np.unique(
                np.linspace(0, len(features) - 1, min(recall_queries, len(features))).astype(int)
            )
            exact = knn.exact_search(features[sample], self.features, k)
            recall = {
                "k": k, "queries": int(len(sample)),
                "recall": knn.recall_at_k(neighbours.indices[sample, :k], exact.indices),
            }  # fmt: skip
        rerank_d = None
        if rerank is not None:
            started = time.perf_counter()
            neighbours, rerank_d = self._rerank(features, neighbours, rerank, k, keep)
            seconds["rerank"] = round(time.perf_counter() - started, 3)
        items = self.items
        matches = []
        for q in range(len(features)):
            row = []
            for r in range(min(k, neighbours.indices.shape[1])):
                g = int(neighbours.indices[q, r])
                if g < 0:
                    break
                d = float(neighbours.distances[q, r])
                item = items[g]
                row.append(
                    Match(r + 1, g, item.path, d, item.pid, item.camera,
                          None if rerank_d is None else float(rerank_d[q, r]),
                          None if threshold is None else bool(d < threshold), item.tracklet)
                )  # fmt: skip
            matches.append(row)
        params = None if rerank is None else {**rerank.__dict__, "pool": rerank_pool}
        return SearchResult(matches, backend, params, recall, seconds)

    def _search_kept(self, features, k, backend, nprobe, ef_search, nlist, seconds, keep) -> knn.Neighbours:
        """`_search` restricted to the allowed items: asks for 4x more neighbours until each query has k
        allowed ones (or all it is allowed), then drops the others."""
        if keep is None:
            return self._search(features, k, backend, nprobe, ef_search, nlist, seconds)
        keep = np.asarray(keep, bool)
        reachable = np.minimum(keep.sum(1), k)
        ask = min(len(self), 4 * k)
        while True:
            found = self._search(features, ask, backend, nprobe, ef_search, nlist, seconds)
            allowed = (found.indices >= 0) & np.take_along_axis(keep, np.maximum(found.indices, 0), 1)
            if ask >= len(self) or (allowed.sum(1) >= reachable).all():
                break
            ask = min(len(self), 4 * ask)
        return knn.refine(features, self.rows, np.where(allowed, found.indices, -1), k)

    def _search(self, features, k, backend, nprobe, ef_search, nlist, seconds) -> knn.Neighbours:
        if backend == "exact":
            return knn.exact_search(features, self.features, k)
        kind = backend.removeprefix("faiss_")
        index = self.faiss_index(kind, nlist, seconds)
        wanted = k * knn.REFINE_FACTOR if kind == "ivfpq" else k  # compressed distances: refine more
        candidates = index.search(features, wanted, nprobe=nprobe, ef_search=ef_search)
        return knn.refine(features, self.rows, candidates, k)

    def faiss_index(self, kind: str, nlist: int | None = None, seconds: dict | None = None) -> knn.FaissIndex:
        """The faiss index of this gallery (built once; cached in the gallery folder when saved)."""
        key = (kind, nlist)
        if key in self._faiss:
            return self._faiss[key]
        started = time.perf_counter()
        name = f"faiss_{kind}_{len(self)}" + (f"_{nlist}" if nlist else "") + ".index"
        cached = self.root / name if self.root is not None and all(s.file for s in self.shards) else None
        if cached is not None and cached.exists():
            index = knn.FaissIndex.load(cached, kind, len(self))
        else:
            index = knn.FaissIndex.build(self.features, kind, nlist, spherical=self.model.normalize)
            if cached is not None and kind != "flat":
                index.save(cached)
        if seconds is not None:
            seconds[f"faiss_{kind}_ready"] = round(time.perf_counter() - started, 3)
        self._faiss[key] = index
        return index

    def _rerank(self, features, neighbours: knn.Neighbours, params: RerankParams, k: int, keep=None):
        """k-reciprocal re-ranking (mgn_tf.evaluation.rerank) restricted to the candidates' union (of
        which each query keeps only the items `keep` allows it)."""
        from mgn_tf.evaluation.rerank import re_ranking_features

        pool = np.unique(neighbours.indices[neighbours.indices >= 0])
        cand = knn.gather(self.rows, pool)
        dist = np.empty((len(features), len(pool)), np.float32)
        for rows, chunk in re_ranking_features(features, cand, params.k1, params.k2, params.lambda_value):
            dist[rows] = chunk
        if keep is not None:
            dist[~np.asarray(keep, bool)[:, pool]] = np.inf
        order = np.lexsort((np.broadcast_to(pool, dist.shape), dist), axis=1)[:, :k]
        indices = np.where(np.isfinite(np.take_along_axis(dist, order, 1)), pool[order], -1)
        return knn.Neighbours(indices, knn.exact_distances(features, self.rows, indices)), np.take_along_axis(
            dist, order, 1
        )


def _items_name(features_name: str | None) -> str | None:
    return (
        None
        if features_name is None
        else features_name.replace("features_", "items_").replace(".npy", ".jsonl")
    )
