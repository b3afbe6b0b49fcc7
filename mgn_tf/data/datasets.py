"""Dataset readers: folder names and file-name patterns in, plain lists of ``(path, pid, camid)`` out.

This is the only module that knows which dataset it is reading. Every reader returns a `Split` whose
training pids are relabelled to ``0..num_train_pids-1`` (sorted order of the original pids), whose
query/gallery pids are the original ones, and whose camera ids are 0-based. A folder that does not
have the expected layout, or an image whose name does not parse, raises one `DatasetLayoutError`
saying which dataset, which root, what is missing and what was expected.

Names for `load_dataset` (see `DATASET_NAMES`) and their options:

- ``market1501``: Market-1501 (``bounding_box_train``, ``query``, ``bounding_box_test``, optional
  ``gt_bbox`` returned as ``multi_query``). Junk (pid -1) is dropped everywhere; distractors (pid 0)
  are kept in the gallery only.
- ``dukemtmc``: DukeMTMC-reID, same layout, names ``0001_c2_f0046182.jpg``.
- ``cuhk03``: new protocol (767/700 ids); ``variant="labeled" | "detected"``. Reads the CUHK03-NP
  folders when present, else extracts the raw ``cuhk-03.mat`` release (see `mgn_tf.data.cuhk03_mat`).
- ``msmt17``: MSMT17_V1/V2 with list files; ``use_val=True`` adds ``list_val.txt`` to training.
- ``cuhk01``: flat folder ``PPPPNNN.png``; ``split_seed=0``, ``num_train_ids=None`` (half, rounded down).
- ``folder``: your own data, ``train/<identity>/*``, optional ``query/<identity>/*``,
  ``gallery/<identity>/*``.
- ``synthetic``: the built-in generated dataset (Market layout); ``seed=0``.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Item = tuple[str, int, int]  # (absolute path, pid, camid), camid 0-based

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetLayoutError(ValueError):
    """A dataset root without the expected folders/files, or an image name that does not parse."""


@dataclass(frozen=True)
class Split:
    """One dataset's train/query/gallery lists (see the module docstring for the conventions)."""

    name: str
    root: str
    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    num_train_pids: int
    num_train_cams: int
    multi_query: list[Item] | None = None

    def summary(self) -> str:
        """A small table like torchreid prints: subset | # ids | # images | # cameras."""
        rows = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        if self.multi_query is not None:
            rows.append(("multi-query", self.multi_query))
        rule = "  " + "-" * 44
        lines = [f"=> {self.name} ({self.root})", rule, "  subset      | # ids | # images | # cameras", rule]
        for subset, items in rows:
            ids = len({pid for _, pid, _ in items})
            cams = len({cam for _, _, cam in items})
            lines.append(f"  {subset:<11} | {ids:5d} | {len(items):8d} | {cams:9d}")
        lines.append(rule)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- helpers


def _is_image(name: str) -> bool:
    """An image file by extension (case-insensitive); hidden files (``.x``, temp files) are not."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _found(folder: Path, limit: int = 12) -> str:
    """What a folder holds, for error messages."""
    if not folder.is_dir():
        return "(folder does not exist)"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "(empty folder)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _root_path(root: str | Path) -> Path:
    return Path(root).expanduser().absolute()


def _missing_message(dataset: str, root: Path, missing: list[str], kind: str, expected: str) -> str:
    what = f"{kind} {missing[0]!r}" if len(missing) == 1 else f"{kind}s " + ", ".join(map(repr, missing))
    return f"{dataset}: {root} has no {what} (expected {expected}); found: {_found(root)}"


def _locate(dataset: str, root: Path, required: Iterable[str], expected: str, kind: str = "folder") -> Path:
    """``root`` if it holds every ``required`` entry, else its only child folder that does.

    Raises one `DatasetLayoutError` describing ``root`` otherwise.
    """
    required = list(required)
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset}: {root} does not exist or is not a folder (expected {expected})")

    def has_all(folder: Path) -> bool:
        return all((folder / entry).exists() for entry in required)

    if has_all(root):
        return root
    candidates = sorted(child for child in root.iterdir() if child.is_dir() and has_all(child))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise DatasetLayoutError(
            f"{dataset}: {root} holds several dataset folders ({names}); pass the one to use as root"
        )
    missing = [entry for entry in required if not (root / entry).exists()]
    raise DatasetLayoutError(_missing_message(dataset, root, missing, kind, expected))


@dataclass(frozen=True)
class _Pattern:
    """A file-name regex (matched against the name without extension) with ``pid`` and ``cam`` groups."""

    regex: re.Pattern[str]
    example: str
    num_cams: int | None  # cameras numbered 1..num_cams; None: no check

    def parse(self, dataset: str, path: Path) -> tuple[int, int]:
        """(pid, camid) of one image; camid = camera number - 1."""
        match = self.regex.fullmatch(Path(path.name).stem)
        if match is None:
            raise DatasetLayoutError(
                f"{dataset}: image {path} does not match the expected name pattern "
                f"{self.regex.pattern!r} (e.g. {self.example})"
            )
        cam = int(match["cam"])
        if cam < 1 or (self.num_cams is not None and cam > self.num_cams):
            raise DatasetLayoutError(
                f"{dataset}: image {path} has camera {cam}, expected 1..{self.num_cams} (e.g. {self.example})"
            )
        return int(match["pid"]), cam - 1


def _read_folder_images(dataset: str, folder: Path, pattern: _Pattern) -> list[Item]:
    """All images directly in ``folder`` as (path, original pid, camid), sorted by name."""
    names = sorted(name for name in os.listdir(folder) if _is_image(name) and (folder / name).is_file())
    if not names:
        raise DatasetLayoutError(
            f"{dataset}: {folder} has no images (expected files like {pattern.example}); "
            f"found: {_found(folder)}"
        )
    items = []
    for name in names:
        path = folder / name
        pid, camid = pattern.parse(dataset, path)
        items.append((str(path), pid, camid))
    return items


def _make_split(
    name: str,
    root: Path,
    train: list[Item],
    query: list[Item],
    gallery: list[Item],
    multi_query: list[Item] | None = None,
) -> Split:
    """Relabel the training pids to 0..C-1 (sorted original pids) and count training cameras."""
    if not train:
        raise DatasetLayoutError(f"{name}: {root} gives no training images")
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in train}))}
    train = [(path, label[pid], cam) for path, pid, cam in train]
    return Split(
        name=name,
        root=str(root),
        train=train,
        query=query,
        gallery=gallery,
        num_train_pids=len(label),
        num_train_cams=len({cam for _, _, cam in train}),
        multi_query=multi_query,
    )


# ------------------------------------------------------------------------------------ Market-style layout

_MARKET_DIRS = ("bounding_box_train", "query", "bounding_box_test")

MARKET_PATTERN = _Pattern(
    re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d)s\d+_\d+_\d+"), "0002_c1s1_000451_03.jpg", num_cams=6
)
DUKE_PATTERN = _Pattern(re.compile(r"(?P<pid>\d+)_c(?P<cam>\d)_f\d+"), "0001_c2_f0046182.jpg", num_cams=8)
CUHK03_NP_PATTERN = _Pattern(re.compile(r"(?P<pid>\d+)_c(?P<cam>\d)_\d+"), "0001_c1_1.png", num_cams=2)
# The synthetic set uses Market names; the suffix after the camera is not checked and cameras are unbounded.
SYNTHETIC_PATTERN = _Pattern(
    re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:[s_].*)?"), "0002_c1s1_000451_03.jpg", num_cams=None
)


def _read_market_layout(dataset: str, root: Path, pattern: _Pattern, multi_query_dir: str | None) -> Split:
    """bounding_box_train/, query/, bounding_box_test/ [, gt_bbox/] in ``root`` or its only child folder.

    Junk (pid -1) is dropped everywhere; distractors (pid 0) are kept in the gallery only.
    """
    optional = f" [, {multi_query_dir}/]" if multi_query_dir else ""
    expected = ", ".join(d + "/" for d in _MARKET_DIRS) + optional
    folder = _locate(dataset, root, _MARKET_DIRS, expected)
    for sub in _MARKET_DIRS:
        if not (folder / sub).is_dir():
            raise DatasetLayoutError(f"{dataset}: {folder / sub} is not a folder (expected {expected})")
    train = [it for it in _read_folder_images(dataset, folder / "bounding_box_train", pattern) if it[1] > 0]
    query = [it for it in _read_folder_images(dataset, folder / "query", pattern) if it[1] > 0]
    gallery = [it for it in _read_folder_images(dataset, folder / "bounding_box_test", pattern) if it[1] >= 0]
    multi_query = None
    if multi_query_dir and (folder / multi_query_dir).is_dir():
        multi_query = [
            it for it in _read_folder_images(dataset, folder / multi_query_dir, pattern) if it[1] > 0
        ]
    return _make_split(dataset, folder, train, query, gallery, multi_query)


def read_market1501(root: Path) -> Split:
    """Market-1501; ``gt_bbox`` (when present) becomes ``multi_query``."""
    return _read_market_layout("market1501", root, MARKET_PATTERN, multi_query_dir="gt_bbox")


def read_dukemtmc(root: Path) -> Split:
    """DukeMTMC-reID (8 cameras)."""
    return _read_market_layout("dukemtmc", root, DUKE_PATTERN, multi_query_dir=None)


def read_synthetic(root: Path, seed: int = 0) -> Split:
    """The built-in synthetic dataset: written under ``root`` if missing, then read as Market layout."""
    from mgn_tf.data.synthetic import ensure_synthetic

    folder = ensure_synthetic(root, seed=seed)
    return _read_market_layout("synthetic", _root_path(folder), SYNTHETIC_PATTERN, multi_query_dir=None)


# ------------------------------------------------------------------------------------------------ CUHK03

CUHK03_VARIANTS = ("labeled", "detected")
_CUHK03_MAT_PATHS = ("cuhk-03.mat", "cuhk03_release/cuhk-03.mat")


def read_cuhk03(root: Path, variant: str = "labeled") -> Split:
    """CUHK03 new protocol (767 train / 700 test ids) from CUHK03-NP folders or the raw .mat release.

    CUHK03-NP: ``<root>[/cuhk03-np]/<variant>/{bounding_box_train,query,bounding_box_test}``.
    Raw release: ``<root>/cuhk-03.mat`` (or ``cuhk03_release/cuhk-03.mat``) with
    ``<root>/cuhk03_new_protocol_config_<variant>.mat``; images are extracted once to
    ``<root>/images_<variant>/``.
    """
    if variant not in CUHK03_VARIANTS:
        raise ValueError(f"cuhk03: unknown variant {variant!r}; expected one of {', '.join(CUHK03_VARIANTS)}")
    if not root.is_dir():
        raise DatasetLayoutError(f"cuhk03: {root} does not exist or is not a folder")
    np_roots = [root] + sorted(c for c in root.iterdir() if c.is_dir() and c.name.lower() == "cuhk03-np")
    for np_root in np_roots:
        if (np_root / variant).is_dir():
            return _read_market_layout("cuhk03", np_root / variant, CUHK03_NP_PATTERN, multi_query_dir=None)
        other = next((v for v in CUHK03_VARIANTS if (np_root / v).is_dir()), None)
        if other is not None:
            raise DatasetLayoutError(
                f"cuhk03: {np_root} has no folder {variant!r} for variant={variant!r} (expected "
                f"{variant}/ beside {other}/, each with bounding_box_train/, query/, bounding_box_test/); "
                f"found: {_found(np_root)}"
            )

    config = root / f"cuhk03_new_protocol_config_{variant}.mat"
    mat_path = next((root / p for p in _CUHK03_MAT_PATHS if (root / p).is_file()), None)
    if mat_path is None:
        raise DatasetLayoutError(
            f"cuhk03: {root} has neither CUHK03-NP folders nor 'cuhk-03.mat' (expected {variant}/ with "
            f"bounding_box_train/, query/, bounding_box_test/ (also under cuhk03-np/), or the raw release "
            f"cuhk-03.mat with {config.name}); found: {_found(root)}"
        )
    if not config.is_file():
        raise DatasetLayoutError(
            f"cuhk03: {root} has no file {config.name!r} (expected it beside {mat_path.name} for "
            f"variant={variant!r}); found: {_found(root)}"
        )
    from mgn_tf.data import cuhk03_mat

    train, query, gallery = cuhk03_mat.load_new_protocol(root, mat_path, config, variant)
    return _make_split("cuhk03", root, train, query, gallery)


# ------------------------------------------------------------------------------------------------ MSMT17

_MSMT_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))  # MSMT17_V1, MSMT17_V2
_MSMT_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
MSMT17_PATTERN = _Pattern(
    re.compile(r"(?P<pid>\d+)_\d+_(?P<cam>\d+)_\w+"), "0000_000_01_0303morning_0015_0.jpg", num_cams=15
)


def _read_msmt_list(list_path: Path, image_dir: Path) -> list[Item]:
    """Lines ``<relpath> <pid>``; camid from the file name's third field; every file must exist."""
    items, missing = [], []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetLayoutError(
                f"msmt17: {list_path}:{lineno}: {line!r} is not '<relative path> <pid>' "
                "(e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0')"
            )
        path = image_dir / fields[0]
        _, camid = MSMT17_PATTERN.parse("msmt17", path)
        if not path.is_file():
            missing.append(path)
        items.append((str(path), int(fields[1]), camid))
    if missing:
        raise DatasetLayoutError(
            f"msmt17: {len(missing)} image(s) listed in {list_path} are missing from {image_dir}, "
            f"e.g. {missing[0]}"
        )
    if not items:
        raise DatasetLayoutError(f"msmt17: {list_path} lists no images (expected lines '<relpath> <pid>')")
    return items


def read_msmt17(root: Path, use_val: bool = True) -> Split:
    """MSMT17_V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``, ``mask_test_v2/``) with list files.

    ``use_val``: add ``list_val.txt`` (when present) to training; train + val (32,621 images, 1,041
    ids) is the official MSMT17 training set.
    """
    expected = "train/ and test/ (V1) or mask_train_v2/ and mask_test_v2/ (V2), " + ", ".join(_MSMT_LISTS)
    if not root.is_dir():
        raise DatasetLayoutError(f"msmt17: {root} does not exist or is not a folder (expected {expected})")
    layouts = [(*dirs, *_MSMT_LISTS) for dirs in _MSMT_DIRS]

    def complete(folder: Path) -> tuple[str, ...] | None:
        return next((lay for lay in layouts if all((folder / e).exists() for e in lay)), None)

    folders = [root] if complete(root) else [c for c in sorted(root.iterdir()) if c.is_dir() and complete(c)]
    if len(folders) != 1:
        if len(folders) > 1:
            names = ", ".join(f.name for f in folders)
            raise DatasetLayoutError(
                f"msmt17: {root} holds several MSMT17 folders ({names}); pass one as root"
            )
        # report against the layout the root comes closest to
        best = max(layouts, key=lambda lay: sum((root / e).exists() for e in lay))
        missing = [e for e in best if not (root / e).exists()]
        raise DatasetLayoutError(_missing_message("msmt17", root, missing, "entry", expected))
    folder = folders[0]
    train_dir, test_dir = (folder / e for e in complete(folder)[:2])
    train = _read_msmt_list(folder / "list_train.txt", train_dir)
    if use_val and (folder / "list_val.txt").is_file():
        train += _read_msmt_list(folder / "list_val.txt", train_dir)
    query = _read_msmt_list(folder / "list_query.txt", test_dir)
    gallery = _read_msmt_list(folder / "list_gallery.txt", test_dir)
    return _make_split("msmt17", folder, train, query, gallery)


# ------------------------------------------------------------------------------------------------ CUHK01

CUHK01_PATTERN = _Pattern(re.compile(r"(?P<pid>\d{4})(?P<cam>\d{3})"), "0001001.png", num_cams=4)


def read_cuhk01(root: Path, split_seed: int = 0, num_train_ids: int | None = None) -> Split:
    """CUHK01: a flat folder of ``PPPPNNN.png`` (NNN 001-002 camera A, 003-004 camera B).

    The sorted identities are permuted with ``numpy.random.default_rng(split_seed).permutation``;
    the first ``num_train_ids`` (default: half, rounded down: 485 of 971) train, the rest test.
    Test identities' camera-A images are the queries, their camera-B images the gallery.
    """
    if not root.is_dir():
        raise DatasetLayoutError(f"cuhk01: {root} does not exist or is not a folder (expected PPPPNNN.png)")

    def has_images(folder: Path) -> bool:
        return any(_is_image(name) for name in os.listdir(folder))

    folder = root
    if not has_images(root):
        children = [c for c in sorted(root.iterdir()) if c.is_dir() and has_images(c)]
        if len(children) != 1:
            raise DatasetLayoutError(
                f"cuhk01: {root} has no images (expected a flat folder of PPPPNNN.png, e.g. 0001001.png, "
                f"here or in a single sub-folder such as campus/); found: {_found(root)}"
            )
        folder = children[0]
    items = _read_folder_images("cuhk01", folder, CUHK01_PATTERN)
    items = [(path, pid, 0 if view < 2 else 1) for path, pid, view in items]  # views 0,1 → A; 2,3 → B

    ids = np.array(sorted({pid for _, pid, _ in items}))
    n_train = len(ids) // 2 if num_train_ids is None else num_train_ids
    if not 0 < n_train < len(ids):
        raise ValueError(f"cuhk01: num_train_ids={n_train} must be between 1 and {len(ids) - 1}")
    order = np.random.default_rng(split_seed).permutation(len(ids))
    train_ids = {int(pid) for pid in ids[order[:n_train]]}
    train = [it for it in items if it[1] in train_ids]
    query = [it for it in items if it[1] not in train_ids and it[2] == 0]
    gallery = [it for it in items if it[1] not in train_ids and it[2] == 1]
    return _make_split("cuhk01", folder, train, query, gallery)


# ---------------------------------------------------------------------------------------- folder (custom)

_CAMERA_TOKEN = re.compile(r"(?<![A-Za-z0-9])c(\d+)(?=s\d|[^A-Za-z0-9]|$)", re.IGNORECASE)


def _identity_images(subset_dir: Path) -> list[tuple[Path, str]]:
    """(image path, identity name) for every image under ``subset_dir/<identity>/`` (recursively)."""
    stray = sorted(p.name for p in subset_dir.iterdir() if p.is_file() and _is_image(p.name))
    if stray:
        raise DatasetLayoutError(
            f"folder: {subset_dir} holds images directly ({stray[0]}, ...); expected one sub-folder per "
            f"identity: {subset_dir.name}/<identity>/<images>"
        )
    found = []
    for identity in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
        paths = [Path(d) / f for d, _, files in os.walk(identity) for f in files if _is_image(f)]
        found += [(path, identity.name) for path in sorted(paths)]
    return found


def read_folder(root: Path) -> Split:
    """Your own data: ``train/<identity>/<images>``, optional ``query/<identity>/…`` and ``gallery/…``.

    Identities are folder names (any string): training ones are relabelled 0..C-1 in sorted order,
    query/gallery ones numbered in the sorted order of their union (same name, same pid). Cameras
    come from a ``c<N>`` token in the file name (``x_c3_y.jpg``, ``0001_c3s1_…``), numbers mapped in
    sorted order over all subsets to 0..K-1; images without one get camid 0 (train, query) or 1
    (gallery), so no query/gallery pair is discarded as a same-camera match.
    """
    expected = "train/<identity>/<images>, optional query/<identity>/..., gallery/<identity>/..."
    if not root.is_dir():
        raise DatasetLayoutError(f"folder: {root} does not exist or is not a folder (expected {expected})")
    if not (root / "train").is_dir():
        raise DatasetLayoutError(_missing_message("folder", root, ["train"], "folder", expected))
    subsets = {
        s: _identity_images(root / s) if (root / s).is_dir() else [] for s in ("train", "query", "gallery")
    }
    if not subsets["train"]:
        raise DatasetLayoutError(
            f"folder: {root / 'train'} has no images ({', '.join(IMAGE_EXTENSIONS)}) in identity "
            f"sub-folders (expected {expected}); found: {_found(root / 'train')}"
        )

    def token(path: Path) -> int | None:
        match = _CAMERA_TOKEN.search(path.stem)
        return None if match is None else int(match.group(1))

    tokens = {s: [token(p) for p, _ in subsets[s]] for s in subsets}
    cam_index = {
        n: i for i, n in enumerate(sorted({t for ts in tokens.values() for t in ts if t is not None}))
    }
    default_cam = {"train": 0, "query": 0, "gallery": 1}
    test_names = sorted({name for s in ("query", "gallery") for _, name in subsets[s]})
    test_pid = {name: i for i, name in enumerate(test_names)}
    train_pid = {name: i for i, name in enumerate(sorted({name for _, name in subsets["train"]}))}

    def items(subset: str, pids: dict[str, int]) -> list[Item]:
        return [
            (str(path), pids[name], default_cam[subset] if tok is None else cam_index[tok])
            for (path, name), tok in zip(subsets[subset], tokens[subset], strict=True)
        ]

    return _make_split(
        "folder", root, items("train", train_pid), items("query", test_pid), items("gallery", test_pid)
    )


# ---------------------------------------------------------------------------------------------- registry

_READERS: dict[str, Callable[..., Split]] = {
    "market1501": read_market1501,
    "dukemtmc": read_dukemtmc,
    "cuhk03": read_cuhk03,
    "msmt17": read_msmt17,
    "cuhk01": read_cuhk01,
    "folder": read_folder,
    "synthetic": read_synthetic,
}
DATASET_NAMES: tuple[str, ...] = tuple(_READERS)


def dataset_options(name: str) -> dict[str, object]:
    """The keyword options a dataset takes, with their defaults."""
    reader = _reader(name)
    params = list(inspect.signature(reader).parameters.values())[1:]
    return {p.name: p.default for p in params}


def _reader(name: str) -> Callable[..., Split]:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _READERS[key]


def load_dataset(name: str, root: str | Path, **options) -> Split:
    """Read dataset ``name`` (one of `DATASET_NAMES`, case-insensitive) under ``root``.

    ``options`` are the reader's keywords (`dataset_options`): ``variant`` for cuhk03, ``use_val`` for
    msmt17, ``split_seed`` and ``num_train_ids`` for cuhk01, ``seed`` for synthetic.
    """
    reader = _reader(name)
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) if allowed else "no options"
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; {name} takes {takes}")
    return reader(_root_path(root), **options)
