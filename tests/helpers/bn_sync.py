"""Run in a fresh process (logical devices must be configured before TensorFlow starts): BatchNorm moving
statistics of a 2-replica MirroredStrategy before and after `mgn_tf.trainer.moving_statistics_sync`.

Prints a JSON line {"before": [per replica [mean, variance]], "after": [...]}.
"""

from __future__ import annotations

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from mgn_tf.trainer import moving_statistics_sync  # noqa: E402


def per_replica(strategy: tf.distribute.Strategy, layer: keras.layers.BatchNormalization) -> list:
    return [
        [
            strategy.experimental_local_results(v.value)[r].numpy().tolist()
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        for r in range(strategy.num_replicas_in_sync)
    ]


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    norm = keras.layers.BatchNormalization(momentum=0.5, name="bn")
    model = keras.Sequential([keras.Input((3,)), norm])
# Replica r sees a batch of mean 10 r and spread r + 1: different moving statistics per replica.
batches = strategy.experimental_distribute_values_from_function(
    lambda ctx: (
        tf.constant([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]]) * float(ctx.replica_id_in_sync_group + 1)
        + 10.0 * float(ctx.replica_id_in_sync_group)
    )
)
tf.function(lambda x: strategy.run(lambda b: model(b, training=True), args=(x,)))(batches)
before = per_replica(strategy, norm)
moving_statistics_sync(model, strategy)()
print(json.dumps({"before": before, "after": per_replica(strategy, norm)}))
