"""Run in a fresh process (logical devices must be configured before TensorFlow starts):
training steps on one device vs. a 2-replica MirroredStrategy over two logical CPUs.

In float64: a randomly initialised ResNet in float32 is numerically chaotic (the same batch in another
order on ONE device already moves some updates by tens of percent through ties in max pooling and in
the hardest-example selection), so only float64 can show that the two computations are the same.

Prints a JSON line {"max_abs_diff": ..., "max_abs_update": ..., ...}.
"""

from __future__ import annotations

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

keras.config.set_dtype_policy("float64")
# Both sides run without grappler's graph rewrites, which the comparison does not need and which take
# a large part of the run on this two-replica graph.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

from mgn_tf.model import build_mgn  # noqa: E402
from mgn_tf.optimizer import SGDL2  # noqa: E402
from mgn_tf.trainer import MGNTrainer  # noqa: E402

SIZE, P, K, CLASSES = (96, 32), 4, 2, 6


def one_step(strategy: tf.distribute.Strategy, initial: list, images, labels, steps: int) -> list:
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = build_mgn(CLASSES, SIZE, sync_bn=True)
        model.set_weights(initial)
        trainer = MGNTrainer(model)
        trainer.compile(optimizer=SGDL2(0.05, momentum=0.9, l2=5e-4))
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(P * K)
    trainer.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return [w.copy() for w in model.get_weights()]


def main() -> None:
    rng = np.random.default_rng(0)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    images = rng.uniform(0, 255, (steps * P * K, *SIZE, 3))
    labels = np.concatenate([np.repeat(rng.permutation(CLASSES)[:P], K) for _ in range(steps)]).astype(
        np.int32
    )
    keras.utils.set_random_seed(0)
    initial = build_mgn(CLASSES, SIZE, sync_bn=True).get_weights()
    single = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), initial, images, labels, steps)
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored = one_step(mirrored_strategy, initial, images, labels, steps)
    # Relative to the update itself. Conv biases in front of BatchNorm have a zero gradient in exact
    # arithmetic (their update is rounding noise), so per-variable ratios skip updates < 1e-6 of the largest.
    updates = [np.abs(a - w).max() for a, w in zip(single, initial, strict=True)]
    diffs = [np.abs(a - b).max() for a, b in zip(single, mirrored, strict=True)]
    largest = max(updates)
    ratios = [d / u for d, u in zip(diffs, updates, strict=True) if u > 1e-6 * largest]
    global_ratio = np.sqrt(
        sum(np.sum((a - b) ** 2) for a, b in zip(single, mirrored, strict=True))
    ) / np.sqrt(sum(np.sum((a - w) ** 2) for a, w in zip(single, initial, strict=True)))
    print(
        json.dumps(
            {
                "replicas": mirrored_strategy.num_replicas_in_sync,
                "variables": len(ratios),
                "max_diff_over_update": float(max(ratios)),
                "global_diff_over_update": float(global_ratio),
                "largest_update": float(largest),
            }
        )
    )


if __name__ == "__main__":
    main()
