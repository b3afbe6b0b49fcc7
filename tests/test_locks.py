"""mgn_tf.locks and the gallery writes it serialises: a second process is refused (naming the first) or
waits, a SIGKILLed holder leaves no stale lock, and concurrent writers of one index all land (against the
union of what they wrote, each feature row checked against the vector its path was given)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.locking import DIM, hold_elsewhere, vector

from mgn_tf import locks
from mgn_tf.gallery.index import Gallery, ModelInfo

REPO = Path(__file__).resolve().parents[1]


def test_a_held_folder_is_refused_naming_its_holder_and_freed_when_the_holder_is_killed(tmp_path):
    holder = hold_elsewhere(tmp_path)
    try:
        named = locks.holder(tmp_path)
        assert named["pid"] == holder.pid and named["host"] == os.uname().nodename
        assert named["command"].startswith("python -c") or "-c" in named["command"]
        with pytest.raises(locks.LockBusy, match=rf"--out=x is in use by pid {holder.pid} on "):
            with locks.hold(tmp_path, "--out=x"):
                pass
        started = time.monotonic()
        with pytest.raises(locks.LockBusy, match=r"\(waited 0.5 s\)"):
            with locks.hold(tmp_path, "--out=x", timeout=0.5):
                pass
        assert time.monotonic() - started >= 0.5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with locks.hold(tmp_path, "--out=x"):  # the kernel released the killed holder's lock
        assert locks.holder(tmp_path)["pid"] == os.getpid()
        with locks.hold(tmp_path, "--out=x"):  # nested in one process: free
            pass
        assert locks.holder(tmp_path)["pid"] == os.getpid()
    assert time.monotonic() - started < 0.5
    assert locks.holder(tmp_path) is None  # released: no holder named


def test_a_waiting_process_says_whom_it_waits_for_and_goes_on_when_the_holder_ends(tmp_path, capsys):
    holder = hold_elsewhere(tmp_path, seconds=1.0)
    started = time.monotonic()
    try:
        with locks.hold(tmp_path, "the index x", timeout=60):
            waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert 0.3 < waited < 30
    assert f"the index x is in use by pid {holder.pid}" in capsys.readouterr().err


# --- concurrent writers of one gallery index -------------------------------------------------------------


WRITER = """
import sys, time, json
import numpy as np
from mgn_tf.gallery.index import Gallery
sys.path.insert(0, sys.argv[4])
from helpers.locking import vector
index, paths, delay = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
gallery = Gallery.load(index)
known = {item.path for item in gallery.items}
paths = [p for p in paths if p not in known]
gallery.add_features(np.stack([vector(p) for p in paths]), paths)
time.sleep(delay)  # between reading the index and writing it: where a lost update happens
gallery.save(index)
print(json.dumps(gallery.merged), flush=True)
"""


def new_index(directory: Path, paths: list[str]) -> None:
    probe = np.eye(4, DIM, dtype=np.float32)
    gallery = Gallery(ModelInfo("model", "keras", (96, 32), True, True, probe))
    gallery.add_features(np.stack([vector(p) for p in paths]), paths)
    gallery.save(directory)


@pytest.mark.parametrize("delays", [(0, 0, 0, 0), (0.3, 0, 0.1, 0.2), (0, 0.5, 0.5, 0)], ids=str)
def test_concurrent_writers_of_one_index_all_land_each_image_once(tmp_path, delays):
    """Four processes add to one index at once (the delays between their read and their write vary the
    interleaving); writers 0 and 1 share ten paths. Afterwards the index holds the union, each path once,
    each with its own row, and an exact search finds every row's own path first."""
    index = tmp_path / "index"
    base = [f"/base/{i}.jpg" for i in range(5)]
    new_index(index, base)
    shared = [f"/shared/{i}.jpg" for i in range(10)]
    batches = [[f"/w{w}/{i}.jpg" for i in range(20 + 7 * w)] + (shared if w < 2 else []) for w in range(4)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(index),
                json.dumps(batch),
                str(delay),
                str(Path(__file__).parent),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )  # fmt: skip
        for batch, delay in zip(batches, delays, strict=True)
    ]
    outputs = [w.communicate(timeout=120) for w in writers]
    assert all(w.returncode == 0 for w in writers), [err[-2000:] for _, err in outputs]
    expected = set(base) | {p for batch in batches for p in batch}
    record = json.loads((index / "index.json").read_text())
    gallery = Gallery.load(index)
    paths = [item.path for item in gallery.items]
    assert sorted(paths) == sorted(expected) and record["count"] == len(expected)
    rows = np.concatenate([np.asarray(f) for f in gallery.features])
    np.testing.assert_array_equal(rows, np.stack([vector(p) for p in paths]))
    found = gallery.search(rows, k=1).matches
    assert [m[0].path for m in found] == paths
    merged = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum(m["duplicates"] for m in merged) <= len(shared)  # a shared path stored by one writer only


def test_a_new_index_written_meanwhile_into_the_folder_is_not_overwritten(tmp_path):
    from mgn_tf.gallery import GalleryError

    index = tmp_path / "index"
    probe = np.eye(4, DIM, dtype=np.float32)
    late = Gallery(ModelInfo("model", "keras", (96, 32), True, True, probe))
    late.add_features(np.stack([vector("/late.jpg")]), ["/late.jpg"])
    new_index(index, ["/first.jpg"])  # another process built an index there first
    with pytest.raises(GalleryError, match="already holds an index"):
        late.save(index)
    assert [item.path for item in Gallery.load(index).items] == ["/first.jpg"]
