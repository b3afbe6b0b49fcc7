"""A small MGN trainer and one PK batch at the smallest valid input (96x32), for in-process tests."""

from __future__ import annotations

import keras
import numpy as np

from mgn_tf.model import build_mgn
from mgn_tf.optimizer import SGDL2
from mgn_tf.trainer import MGNTrainer


def tiny_batch() -> tuple[np.ndarray, np.ndarray]:
    """8 random images of 4 identities x 2."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 96, 32, 3)).astype(np.float32)
    labels = np.repeat([3, 0, 2, 1], 2).astype(np.int32)
    return images, labels


def make_trainer(seed: int = 0, weights: tuple[float, float] = (1.0, 1.0)) -> MGNTrainer:
    """A compiled MGNTrainer of a fresh 4-identity model; `weights`: (softmax, triplet) loss weights."""
    keras.utils.set_random_seed(seed)
    trainer = MGNTrainer(
        build_mgn(4, (96, 32)), margin=1.2, softmax_weight=weights[0], triplet_weight=weights[1]
    )
    trainer.compile(optimizer=SGDL2(0.01))
    return trainer
