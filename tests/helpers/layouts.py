"""The real mini Market-1501 images laid out as each dataset reader expects (symbolic links, renamed), so a
config of configs/ can train on its own reader here, where the public datasets cannot be downloaded."""

from __future__ import annotations

import re
from pathlib import Path

_MARKET_NAME = re.compile(r"(?P<pid>\d{4})_c(?P<cam>\d)s\d_(?P<frame>\d+)_\d+")
SUBSETS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def market_items(mini_market: Path) -> dict[str, list[tuple[Path, int, int]]]:
    """{subset: [(path, pid, camera 1..6)]} of the mini Market-1501 in `mini_market`."""
    items = {}
    for subset, folder in SUBSETS.items():
        rows = []
        for path in sorted((mini_market / folder).glob("*.jpg")):
            match = _MARKET_NAME.match(path.name)
            rows.append((path, int(match["pid"]), int(match["cam"])))
        items[subset] = rows
    return items


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve())


def dataset_root(dataset: str, mini_market: Path, root: Path, cuhk01: Path) -> Path:
    """The --data_dir of `dataset` built in `root` from the mini Market-1501 images (CUHK01: the real
    dataset in `cuhk01`; synthetic: a folder the generator fills)."""
    if dataset == "market1501":
        return mini_market
    if dataset == "cuhk01":
        return cuhk01
    if dataset == "synthetic":
        return root / "synthetic"
    items = market_items(mini_market)
    if dataset == "dukemtmc":
        for subset, rows in items.items():
            for i, (path, pid, cam) in enumerate(rows):
                _link(path, root / SUBSETS[subset] / f"{pid:04d}_c{cam}_f{i:07d}.jpg")
        return root
    if dataset == "cuhk03":  # CUHK03-NP, both variants; two cameras
        for variant in ("labeled", "detected"):
            for subset, rows in items.items():
                for i, (path, pid, cam) in enumerate(rows):
                    _link(path, root / variant / SUBSETS[subset] / f"{pid:04d}_c{cam % 2 + 1}_{i}.png")
        return root
    if dataset == "msmt17":  # MSMT17_V1: train/, test/ and list files
        lists = {"train": "list_train.txt", "query": "list_query.txt", "gallery": "list_gallery.txt"}
        number = 0  # query and gallery share test/: every name its own number
        for subset, rows in items.items():
            folder = "train" if subset == "train" else "test"
            lines = []
            for path, pid, cam in rows:
                number += 1
                relative = f"{pid:04d}/{pid:04d}_{number:03d}_{cam:02d}_0303morning_{number:04d}_0.jpg"
                _link(path, root / folder / relative)
                lines.append(f"{relative} {pid}\n")
            (root / lists[subset]).write_text("".join(lines))
        return root
    raise ValueError(f"no layout for dataset {dataset!r}")
