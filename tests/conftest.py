"""Shared fixtures: the real images and reference vectors in ../shared beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(os.environ.get("MGN_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` next to the repository (CI clones the repo with shared/ beside it)."""
    if not SHARED.is_dir():
        raise FileNotFoundError(
            f"{SHARED} not found: tests read real images and reference vectors from ../shared "
            "beside the repository (or set MGN_SHARED_DIR)"
        )
    return SHARED


@pytest.fixture(scope="session")
def mini_market_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "mini_market1501"


@pytest.fixture(scope="session")
def cuhk01_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "cuhk01"


@pytest.fixture(scope="session")
def reid_vectors(shared_dir: Path):
    import numpy as np

    return np.load(shared_dir / "testdata" / "reid_eval_vectors.npz")
