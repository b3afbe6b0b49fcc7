"""Test tooling: makes a freshly built MGN behave like a trained one for export checks and benchmarks.

`build_mgn` copies one set of ResNet50 weights into the Global, Part-2 and Part-3 branches. Graph
converters (TFLite, tf2onnx) merge identical constant sub-graphs, so a fresh model exports smaller and runs
faster than a trained one, and a parity check on it cannot tell the branches apart: `perturb_branches`
makes them distinct.

Caveat for float16/int8 parity: a fresh model's embeddings are in the tens and nearly parallel for
different images, so a cosine bound is lenient on it. Setting its BatchNorm statistics from data does not
give a better stand-in: a random network with normalised activations amplifies small errors layer after
layer, far beyond what a trained one does. Only trained weights tell; the export tool checks them on
every export.
"""

from __future__ import annotations

import keras
import numpy as np

from mgn_tf.model import build_mgn

PERTURBED_BRANCHES: tuple[str, ...] = ("part2_branch", "part3_branch")


def perturb_branches(model: keras.Model, scale: float = 0.05, seed: int = 0) -> int:
    """Adds seeded Gaussian noise (`scale` × each kernel's std) to the Part branches' kernels, in place.

    Works on the `build_mgn` model or its embedding model (shared layers). Returns the number of
    perturbed kernels.
    """
    rng = np.random.default_rng(seed)
    count = 0
    for branch_name in PERTURBED_BRANCHES:
        for variable in model.get_layer(branch_name).trainable_weights:
            if variable.path.endswith("kernel"):
                value = np.asarray(variable.numpy())
                noise = rng.standard_normal(value.shape).astype(value.dtype)
                variable.assign(value + scale * float(value.std()) * noise)
                count += 1
    return count


def distinct_fresh_model(
    num_classes: int, input_size: tuple[int, int] = (384, 128), seed: int = 0
) -> keras.Model:
    """A seeded `build_mgn` model with distinct branches (no download): tests and benchmarks."""
    keras.utils.set_random_seed(seed)
    model = build_mgn(num_classes, input_size)
    perturb_branches(model, seed=seed)
    return model
