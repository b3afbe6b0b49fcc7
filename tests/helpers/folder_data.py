"""A tiny dataset in the `folder` layout for end-to-end training runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_folder_dataset(root: Path, train_ids: int = 6, per_id: int = 4, test_ids: int = 3) -> Path:
    """`folder` layout: train/<id>/*.png, query/<id>/*_c1_*.png, gallery/<id>/*_c2_*.png; a colour per id."""
    rng = np.random.default_rng(0)

    def person(colour: np.ndarray) -> np.ndarray:
        image = rng.integers(0, 60, (64, 32, 3)).astype(np.int16)
        image[10:60, 6:26] += colour
        return np.clip(image, 0, 255).astype(np.uint8)

    colours = rng.integers(40, 200, (train_ids + test_ids, 3))
    for i in range(train_ids):
        folder = root / "train" / f"person{i:02d}"
        folder.mkdir(parents=True)
        for j in range(per_id):
            Image.fromarray(person(colours[i])).save(folder / f"{j}_c{j % 2 + 1}_.png")
    for i in range(train_ids, train_ids + test_ids):
        for subset, camera in (("query", 1), ("gallery", 2)):
            folder = root / subset / f"person{i:02d}"
            folder.mkdir(parents=True)
            for j in range(2):
                Image.fromarray(person(colours[i])).save(folder / f"{j}_c{camera}_.png")
    return root
