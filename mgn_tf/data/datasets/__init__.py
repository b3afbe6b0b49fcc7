"""Dataset readers: folder names and file-name patterns in, plain lists of ``(path, pid, camid)`` out.

This package is the only code that knows which dataset it is reading. Every reader returns a `Split`
whose training pids are relabelled to ``0..num_train_pids-1`` (sorted order of the original pids), whose
query/gallery pids are the original ones, and whose camera ids are 0-based. A folder that does not have
the expected layout, or an image whose name does not parse, raises one `DatasetLayoutError` saying which
dataset, which root, what is missing and what was expected.

Names for `load_dataset` (see `dataset_names`) and their options, one module each:

- ``market1501``: Market-1501 (``bounding_box_train``, ``query``, ``bounding_box_test``, optional
  ``gt_bbox`` returned as ``multi_query``). Junk (pid -1) is dropped everywhere; distractors (pid 0)
  are kept in the gallery only.
- ``dukemtmc``: DukeMTMC-reID, same layout, names ``0001_c2_f0046182.jpg``.
- ``cuhk03``: new protocol (767/700 ids); ``variant="labeled" | "detected"``. Reads the CUHK03-NP
  folders when present, else extracts the raw ``cuhk-03.mat`` release (see
  `mgn_tf.data.datasets.cuhk03_mat`).
- ``msmt17``: MSMT17_V1/V2 with list files; ``use_val=True`` adds ``list_val.txt`` to training.
- ``cuhk01``: flat folder ``PPPPNNN.png``; ``split_seed=0``, ``num_train_ids=None`` (half, rounded down).
- ``folder``: your own data, ``train/<identity>/*``, optional ``query/<identity>/*``,
  ``gallery/<identity>/*``.
- ``synthetic``: the built-in generated dataset (Market layout); ``seed=0``.

Other datasets plug in with `register_dataset(name, reader)`: ``reader(root: Path, **options) -> Split``
is called with the absolute root and the options given to `load_dataset`; `base` holds the helpers the
built-in readers use (`base.make_split` applies the conventions above). Importing this package imports
neither TensorFlow nor PIL.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path

from mgn_tf.data.datasets.base import DatasetLayoutError, Item, Split, root_path
from mgn_tf.data.datasets.cuhk01 import read_cuhk01
from mgn_tf.data.datasets.cuhk03 import read_cuhk03
from mgn_tf.data.datasets.dukemtmc import read_dukemtmc
from mgn_tf.data.datasets.folder import read_folder
from mgn_tf.data.datasets.market1501 import read_market1501
from mgn_tf.data.datasets.msmt17 import read_msmt17
from mgn_tf.data.datasets.synthetic import read_synthetic

__all__ = [
    "DatasetLayoutError",
    "Item",
    "Reader",
    "Split",
    "dataset_names",
    "dataset_options",
    "load_dataset",
    "register_dataset",
]

Reader = Callable[..., Split]  # reader(root: Path, **options) -> Split

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_READERS: dict[str, Reader] = {  # the built-in readers, then those given to register_dataset
    "market1501": read_market1501,
    "dukemtmc": read_dukemtmc,
    "cuhk03": read_cuhk03,
    "msmt17": read_msmt17,
    "cuhk01": read_cuhk01,
    "folder": read_folder,
    "synthetic": read_synthetic,
}


def register_dataset(name: str, reader: Reader, *, replace: bool = False) -> None:
    """Make ``reader`` loadable as dataset ``name`` (matched case-insensitively, stored lower-case).

    ``reader(root, **options)`` gets the absolute root as its first positional argument; its keyword
    parameters are the dataset's options (`dataset_options`). An existing name is refused unless
    ``replace=True``, so a plug-in cannot silently shadow a built-in reader.
    """
    key = _key(name)
    if not isinstance(key, str) or not _NAME.fullmatch(key):
        raise ValueError(
            f"register_dataset: dataset name {name!r} must be letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    if not callable(reader):
        raise ValueError(
            f"register_dataset: the reader for dataset {key!r} is not callable "
            f"(got {type(reader).__name__}); expected reader(root: Path, **options) -> Split"
        )
    _check_signature(key, reader)
    if key in _READERS and not replace:
        raise ValueError(
            f"register_dataset: dataset {key!r} is already registered ({_describe(_READERS[key])}); "
            "pass replace=True to replace it"
        )
    _READERS[key] = reader


def dataset_names() -> tuple[str, ...]:
    """Every dataset name `load_dataset` accepts now: the built-in ones, then registered ones in order."""
    return tuple(_READERS)


def dataset_options(name: str) -> dict[str, object]:
    """The keyword options a dataset takes, with their defaults (`inspect.Parameter.empty`: required)."""
    options, _ = _options(_reader(name))
    return options


def load_dataset(name: str, root: str | Path, **options) -> Split:
    """Read dataset ``name`` (one of `dataset_names`, case-insensitive) under ``root``.

    ``options`` are the reader's keywords (`dataset_options`): ``variant`` for cuhk03, ``use_val`` for
    msmt17, ``split_seed`` and ``num_train_ids`` for cuhk01, ``seed`` for synthetic. An unknown option
    is refused by name, unless the reader takes ``**options`` itself.
    """
    reader = _reader(name)
    allowed, takes_any = _options(reader)
    unknown = sorted(set(options) - set(allowed))
    if unknown and not takes_any:
        takes = ", ".join(allowed) if allowed else "no options"
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; {name} takes {takes}")
    return reader(root_path(root), **options)


# ----------------------------------------------------------------------------------------------- helpers


def _key(name: object) -> object:
    return name.strip().lower() if isinstance(name, str) else name


def _reader(name: str) -> Reader:
    key = _key(name)
    if key not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}")
    return _READERS[key]


def _describe(reader: Reader) -> str:
    """``module.function`` of a reader, for messages."""
    module = getattr(reader, "__module__", None)
    qualname = getattr(reader, "__qualname__", type(reader).__qualname__)
    return f"{module}.{qualname}" if module else qualname


def _check_signature(key: str, reader: Reader) -> None:
    """Refuse a reader that cannot be called as ``reader(root, **options)``."""
    try:
        params = list(inspect.signature(reader).parameters.values())
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"register_dataset: cannot read the signature of the reader for dataset {key!r} ({err}); "
            "expected reader(root: Path, **options) -> Split"
        ) from err
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in (*positional, inspect.Parameter.VAR_POSITIONAL):
        raise ValueError(
            f"register_dataset: the reader for dataset {key!r} ({_describe(reader)}) takes no positional "
            "root argument; expected reader(root: Path, **options) -> Split"
        )


def _options(reader: Reader) -> tuple[dict[str, object], bool]:
    """(keyword options after the root with their defaults, whether it takes ``**options``)."""
    params = list(inspect.signature(reader).parameters.values())[1:]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    options = {p.name: p.default for p in params if p.kind in named}
    return options, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
