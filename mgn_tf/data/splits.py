"""Training sets made from dataset splits: several datasets in one run, every split of a dataset
(torchreid's ``combineall``), and identities held out of training for validation.

Each function takes and returns `Split`s (plain lists of ``(path, pid, camid)``) and keeps the `Split`
conventions: training pids ``0..C-1``. No TensorFlow, no files read.
"""

from __future__ import annotations

import numpy as np

from mgn_tf.data.datasets.base import Item, Split


def _relabel(keyed: list[tuple[object, Item]]) -> list[Item]:
    """Items keyed by identity -> items with pids 0..C-1 in the order the identities first appear."""
    labels: dict[object, int] = {}
    return [(path, labels.setdefault(key, len(labels)), cam) for key, (path, _, cam) in keyed]


def _train_split(name: str, root: str, train: list[Item], like: Split) -> Split:
    return Split(
        name=name,
        root=root,
        train=train,
        query=like.query,
        gallery=like.gallery,
        num_train_pids=len({pid for _, pid, _ in train}),
        num_train_cams=len({cam for _, _, cam in train}),
        multi_query=like.multi_query,
        distractor_pids=like.distractor_pids,
    )


def combine(splits: list[Split]) -> Split:
    """One training set from several datasets: identities relabelled per dataset (pid 3 of the first and
    pid 3 of the second are two people), cameras numbered per dataset. The query and gallery are the
    first dataset's (each dataset's own test split is evaluated separately)."""
    if len(splits) == 1:
        return splits[0]
    keyed, camera_base = [], 0
    for i, split in enumerate(splits):
        keyed += [((i, pid), (path, pid, cam + camera_base)) for path, pid, cam in split.train]
        camera_base += split.num_train_cams
    name = "+".join(s.name for s in splits)
    root = ", ".join(s.root for s in splits)
    return _train_split(name, root, _relabel(keyed), splits[0])


def combine_all(split: Split) -> Split:
    """Train on every image of the dataset: train, query and gallery (torchreid's ``combineall``), for a
    deployment model. Training and test identities are different people in every supported dataset
    (their pids are relabelled apart); the distractor pids are left out. The returned split keeps the
    query and gallery, which are now training images: an evaluation on them measures nothing."""
    keyed = [(("train", item[1]), item) for item in split.train]
    for item in split.query + split.gallery:
        if item[1] not in split.distractor_pids:
            keyed.append((("test", item[1]), item))
    seen, unique = set(), []
    for key, item in keyed:  # an image in both query and gallery (some datasets) is trained on once
        if item[0] not in seen:
            seen.add(item[0])
            unique.append((key, item))
    return _train_split(f"{split.name}+all", split.root, _relabel(unique), split)


def hold_out(split: Split, num_ids: int, seed: int) -> tuple[Split, Split]:
    """(training split without `num_ids` of its identities, validation split made of them).

    The identities are a seeded draw. Validation follows Market-1501's protocol shape: per identity and
    camera one image (a seeded draw) is a query, every other image is in the gallery, so a query's
    matches are its identity's images from other cameras (an identity seen by one camera gives queries
    the protocol skips). The remaining training identities are relabelled 0..C-1 in their old order.
    """
    pids = np.unique([pid for _, pid, _ in split.train])
    if not 2 <= num_ids < len(pids) - 1:
        raise ValueError(
            f"cannot hold out {num_ids} of the {len(pids)} training identities for validation "
            f"(need at least 2 held out and 2 left to train on)"
        )
    rng = np.random.default_rng([seed, 6007])
    held = set(rng.choice(pids, num_ids, replace=False).tolist())
    train = [item for item in split.train if item[1] not in held]
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in train}))}
    train = [(path, label[pid], cam) for path, pid, cam in train]
    by_view: dict[tuple[int, int], list[Item]] = {}
    for item in split.train:
        if item[1] in held:
            by_view.setdefault((item[1], item[2]), []).append(item)
    query, gallery = [], []
    for view in sorted(by_view):
        items = by_view[view]
        pick = int(rng.integers(len(items)))
        query.append(items[pick])
        gallery += items[:pick] + items[pick + 1 :]
    remaining = _train_split(split.name, split.root, train, split)
    validation = Split(
        name=f"{split.name}-validation",
        root=split.root,
        train=[],
        query=query,
        gallery=gallery,
        num_train_pids=0,
        num_train_cams=0,
    )
    return remaining, validation


def default_validation_ids(num_train_ids: int) -> int:
    """--val_identities=0: a tenth of the training identities, at least 2."""
    return max(2, round(num_train_ids / 10))
