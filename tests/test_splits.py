"""Training sets from dataset splits (mgn_tf.data.splits), checked item by item on small hand-made splits."""

from __future__ import annotations

from collections import Counter

import pytest

from mgn_tf.data.datasets.base import Split
from mgn_tf.data.splits import combine, combine_all, default_validation_ids, hold_out


def split(name: str, train_pids: list[int], cams: int = 2, per: int = 4, test_pids=(100, 101)) -> Split:
    train = [(f"/{name}/t{p}_{i}.jpg", p, i % cams) for p in train_pids for i in range(per)]
    query = [(f"/{name}/q{p}.jpg", p, 0) for p in test_pids]
    gallery = [(f"/{name}/g{p}_{i}.jpg", p, 1) for p in test_pids for i in range(2)] + [
        (f"/{name}/d.jpg", 0, 1)
    ]
    return Split(name, f"/{name}", train, query, gallery, len(train_pids), cams, distractor_pids=(0,))


def identities(items) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for path, pid, _ in items:
        out.setdefault(pid, set()).add(path)
    return out


def test_combine_keeps_each_datasets_people_apart():
    a, b = split("a", [0, 1, 2]), split("b", [0, 1])
    both = combine([a, b])
    assert both.num_train_pids == 5 and len(both.train) == len(a.train) + len(b.train)
    groups = sorted(sorted(paths) for paths in identities(both.train).values())
    want = sorted(sorted(paths) for s in (a, b) for paths in identities(s.train).values())
    assert groups == want  # pid 0 of a and pid 0 of b stay two identities
    assert sorted(identities(both.train)) == list(range(5))
    assert {cam for _, _, cam in both.train} == {0, 1, 2, 3}  # cameras numbered per dataset
    assert both.query == a.query and combine([a]) is a


def test_combine_all_trains_on_every_image_but_the_distractors():
    s = split("a", [0, 1, 2])
    allsplit = combine_all(s)
    paths = {p for p, _, _ in allsplit.train}
    assert paths == {p for p, _, _ in s.train + s.query + s.gallery} - {"/a/d.jpg"}
    assert allsplit.num_train_pids == 3 + 2
    by_id = identities(allsplit.train)
    assert {
        "/a/q100.jpg",
        "/a/g100_0.jpg",
        "/a/g100_1.jpg",
    } in by_id.values()  # query and gallery: one person
    assert sorted(by_id) == list(range(5))


def test_hold_out_is_a_seeded_disjoint_split_in_market_protocol_shape():
    s = split("a", list(range(10)), cams=2, per=5)
    train, val = hold_out(s, 3, seed=7)
    held = {pid for _, pid, _ in val.query + val.gallery}
    original = identities(s.train)
    assert len(held) == 3
    # every image of a held-out identity is in validation, none in training
    assert {p for pid in held for p in original[pid]} == {p for p, _, _ in val.query + val.gallery}
    assert not {p for p, _, _ in train.train} & {p for p, _, _ in val.query + val.gallery}
    assert len(train.train) + len(val.query) + len(val.gallery) == len(s.train)
    assert train.num_train_pids == 7 and sorted(identities(train.train)) == list(range(7))
    assert Counter((pid, cam) for _, pid, cam in val.query) == {
        (pid, cam): 1 for pid in held for cam in (0, 1)
    }
    assert hold_out(s, 3, seed=7) == (train, val)
    others = [hold_out(s, 3, seed=seed)[1] for seed in range(8)]
    assert len({frozenset(p for _, p, _ in v.query) for v in others}) > 1


def test_hold_out_refuses_what_leaves_too_little():
    s = split("a", list(range(5)))
    with pytest.raises(ValueError, match="cannot hold out 4 of the 5"):
        hold_out(s, 4, 0)
    with pytest.raises(ValueError, match="at least 2"):
        hold_out(s, 1, 0)
    assert default_validation_ids(751) == 75 and default_validation_ids(6) == 2
