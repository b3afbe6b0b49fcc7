"""Another process holding a folder's lock (mgn_tf.locks), as a second writer would."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

DIM = 16

HOLD = """
import sys, time
from mgn_tf import locks
with locks.hold(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_elsewhere(directory: Path, seconds: float = 600) -> subprocess.Popen:
    """A Python process (no TensorFlow) that holds `directory`'s lock for `seconds`, once it holds it."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    line = process.stdout.readline()
    assert line.strip() == "held", f"the holder did not take the lock: {line!r}"
    return process


def vector(path: str) -> np.ndarray:
    """The feature row a path is given (unit length, as an index's normalised features): seeded by the
    path, so any stored row can be checked on its own."""
    v = np.random.default_rng(zlib.crc32(path.encode())).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def refused_while_held(
    directory: Path, command: Callable[[], subprocess.CompletedProcess]
) -> tuple[int, str]:
    """Runs `command` while another process holds `directory`'s lock and checks that it exits 2 with one
    `error:` line and no traceback; returns (the holder's pid, that line)."""
    holder = hold_elsewhere(directory)
    try:
        result = command()
    finally:
        holder.kill()
        holder.wait()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return holder.pid, errors[0]
