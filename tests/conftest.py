"""Shared fixtures: the real images and reference vectors in ../shared beside the repository."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

import mgn_tf  # noqa: F401  (first, before any test module imports TensorFlow: its oneDNN default applies)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# runtime auto's measured choices (mgn_tf.inference.runtime_cache_file): the tests, and the commands they
# run, measure in a cache of their own instead of reading or writing the user's ~/.cache/mgn_tf.
os.environ.setdefault("MGN_TF_CACHE_DIR", tempfile.mkdtemp(prefix="mgn_tf_cache_"))

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


# --- the session's one export (test_export.py and test_inference.py: the xdist group "export") -------


@pytest.fixture(scope="session")
def exported(tmp_path_factory, mini_market_dir):
    from helpers.exported import export_run

    return export_run(tmp_path_factory.mktemp("export"), mini_market_dir)


@pytest.fixture(scope="session")
def truth(exported):
    from helpers.exported import KerasTruth

    return KerasTruth(exported.run_dir / "final.weights.h5")


@pytest.fixture(scope="session")
def query_files(mini_market_dir: Path) -> list[Path]:
    """Real images the export's parity check did not use (it used bounding_box_test)."""
    return sorted((mini_market_dir / "query").glob("*.jpg"))[:6]


# --- scheduling on two cores (pytest-xdist: `-n 2`, with `--dist loadgroup` from pyproject.toml) -------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "own_worker_unit(minutes): a slow test that a worker runs on its own, longest first; `minutes` is "
        "its rough duration on 2 cores, used only to order the run",
    )


def _minutes(item: pytest.Item) -> float:
    mark = item.get_closest_marker("own_worker_unit")
    return float(mark.kwargs.get("minutes", 1)) if mark else 0.0


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups (xdist#1241)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Gives every test an `xdist_group`, the unit a worker takes: its module (so module- and
    session-scoped fixtures are built once per run), the group its module names (test_export.py and
    test_inference.py share one export), or itself for `own_worker_unit` tests. Order: named groups (the
    export, the largest unit), then own units longest first, then the rest, so neither worker is left
    alone with a long test at the end.
    Without xdist the marks change nothing and only the order differs."""
    named = set()
    for item in items:
        if item.get_closest_marker("own_worker_unit"):
            group = item.nodeid
        elif (mark := item.get_closest_marker("xdist_group")) is not None:
            group = mark.kwargs.get("name") or mark.args[0]
            named.add(item.nodeid)
        else:
            group = item.module.__name__
        item.add_marker(pytest.mark.xdist_group(name=group))
    items.sort(key=lambda item: (item.nodeid not in named, -_minutes(item)))  # stable: file order kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """Stops the run if xdist did not group (pytest 9.2 made `--dist loadgroup` a silent no-op,
    pytest-dev/pytest-xdist#1386): every module fixture and the export would then run once per test."""
    if node.config.getoption("dist") == "loadgroup" and ids and not all("@" in nodeid for nodeid in ids):
        raise pytest.UsageError(
            f"pytest-xdist did not apply the test groups with pytest {pytest.__version__} (xdist#1386): "
            "install the pytest range pinned in pyproject.toml"
        )
