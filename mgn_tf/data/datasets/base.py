"""What every dataset reader shares: the `Split` it returns, the one error it raises, and the helpers.

A reader turns folder names and file-name patterns into plain lists of ``(path, pid, camid)``. The
helpers here find a dataset under the root a user passed (`locate`), parse pid and camera from an image
name (`Pattern`), read a folder of images (`read_folder_images`), apply the `Split` conventions
(`make_split`) and read the Market-1501 folder layout that several datasets share (`read_market_layout`).
Every failure is a `DatasetLayoutError` that names the dataset and the folder or file, says what was
expected and lists what was found (`found`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mgn_tf.files import is_image_name

Item = tuple[str, int, int]  # (absolute path, pid, camid), camid 0-based


class DatasetLayoutError(ValueError):
    """A dataset root without the expected folders/files, or an image name that does not parse."""


@dataclass(frozen=True)
class Split:
    """One dataset's train/query/gallery lists.

    Training pids are ``0..num_train_pids-1``, query/gallery pids the dataset's own, camids 0-based (see
    `mgn_tf.data.datasets` for the conventions).
    """

    name: str
    root: str
    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    num_train_pids: int
    num_train_cams: int
    multi_query: list[Item] | None = None
    # Gallery pids that label no one person (Market-1501's "0000" distractor boxes): never trained on,
    # also not by `mgn_tf.data.splits.combine_all`.
    distractor_pids: tuple[int, ...] = ()

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


# ------------------------------------------------------------------------------------- error messages


def found(folder: Path, limit: int = 12) -> str:
    """What a folder holds, for error messages."""
    if not folder.is_dir():
        return "(folder does not exist)"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "(empty folder)"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def missing_message(dataset: str, root: Path, missing: list[str], kind: str, expected: str) -> str:
    """``<dataset>: <root> has no <kind> 'x' (expected ...); found: ...`` for one or more missing entries."""
    what = f"{kind} {missing[0]!r}" if len(missing) == 1 else f"{kind}s " + ", ".join(map(repr, missing))
    return f"{dataset}: {root} has no {what} (expected {expected}); found: {found(root)}"


# ------------------------------------------------------------------------------------- roots and names


def root_path(root: str | Path) -> Path:
    """The absolute form of a user-given root (``~`` expanded), so every item path is absolute."""
    return Path(root).expanduser().absolute()


def locate(dataset: str, root: Path, required: Iterable[str], expected: str, kind: str = "folder") -> Path:
    """``root`` if it holds every ``required`` entry, else its only child folder that does.

    Users pass either the dataset folder or the folder that holds it (the unpacked archive). Raises one
    `DatasetLayoutError` describing ``root`` otherwise.
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
    raise DatasetLayoutError(missing_message(dataset, root, missing, kind, expected))


@dataclass(frozen=True)
class Pattern:
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


# ------------------------------------------------------------------------------------ images and splits


def read_folder_images(dataset: str, folder: Path, pattern: Pattern) -> list[Item]:
    """All images directly in ``folder`` as (path, original pid, camid), sorted by name."""
    names = sorted(name for name in os.listdir(folder) if is_image_name(name) and (folder / name).is_file())
    if not names:
        raise DatasetLayoutError(
            f"{dataset}: {folder} has no images (expected files like {pattern.example}); "
            f"found: {found(folder)}"
        )
    items = []
    for name in names:
        path = folder / name
        pid, camid = pattern.parse(dataset, path)
        items.append((str(path), pid, camid))
    return items


def make_split(
    name: str,
    root: Path,
    train: list[Item],
    query: list[Item],
    gallery: list[Item],
    multi_query: list[Item] | None = None,
    distractor_pids: tuple[int, ...] = (),
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
        distractor_pids=distractor_pids,
    )


# ------------------------------------------------------------------------------------ Market-style layout

MARKET_DIRS = ("bounding_box_train", "query", "bounding_box_test")


def read_market_layout(dataset: str, root: Path, pattern: Pattern, multi_query_dir: str | None) -> Split:
    """bounding_box_train/, query/, bounding_box_test/ [, gt_bbox/] in ``root`` or its only child folder.

    Market-1501, DukeMTMC-reID, CUHK03-NP and the synthetic set share this layout. Junk (pid -1) is
    dropped everywhere; distractors (pid 0) are kept in the gallery only.
    """
    optional = f" [, {multi_query_dir}/]" if multi_query_dir else ""
    expected = ", ".join(d + "/" for d in MARKET_DIRS) + optional
    folder = locate(dataset, root, MARKET_DIRS, expected)
    for sub in MARKET_DIRS:
        if not (folder / sub).is_dir():
            raise DatasetLayoutError(f"{dataset}: {folder / sub} is not a folder (expected {expected})")
    train = [it for it in read_folder_images(dataset, folder / "bounding_box_train", pattern) if it[1] > 0]
    query = [it for it in read_folder_images(dataset, folder / "query", pattern) if it[1] > 0]
    gallery = [it for it in read_folder_images(dataset, folder / "bounding_box_test", pattern) if it[1] >= 0]
    multi_query = None
    if multi_query_dir and (folder / multi_query_dir).is_dir():
        multi_query = [
            it for it in read_folder_images(dataset, folder / multi_query_dir, pattern) if it[1] > 0
        ]
    return make_split(dataset, folder, train, query, gallery, multi_query, distractor_pids=(0,))
