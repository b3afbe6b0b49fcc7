"""``python -m mgn_tf.data.synthetic ROOT [--seed N] ...``: write the synthetic dataset, print its counts."""

from __future__ import annotations

import argparse
import inspect
import json

import mgn_tf.data.synthetic as package
from mgn_tf.data.synthetic.layout import MARKER_NAME, generate_synthetic

_INT_OPTIONS = (
    "seed",
    "num_train_ids",
    "num_test_ids",
    "num_cameras",
    "images_per_id_per_camera",
    "num_distractors",
)


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), generate under ROOT and print the per-split counts."""
    defaults = inspect.signature(generate_synthetic).parameters
    p = argparse.ArgumentParser(
        prog="python -m mgn_tf.data.synthetic", description=package.__doc__.splitlines()[0]
    )
    p.add_argument("root")
    for name in _INT_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=defaults[name].default)
    p.add_argument("--height", type=int, default=defaults["image_size"].default[0])
    p.add_argument("--width", type=int, default=defaults["image_size"].default[1])
    a = vars(p.parse_args(argv))
    root, size = a.pop("root"), (a.pop("height"), a.pop("width"))
    out = generate_synthetic(root, image_size=size, **a)
    print(json.loads((out / MARKER_NAME).read_text())["counts"])


if __name__ == "__main__":
    main()
