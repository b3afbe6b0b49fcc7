"""MGN's training step as a `keras.Model` subclass, so Keras's `fit` brings progress bars, callbacks and
distribution.

Per example, loss = softmax_weight * mean over the 8 identity heads of cross-entropy (label-smoothed
                    if asked)
                  + triplet_weight * mean over the 3 global features of batch-hard triplet,
and the batch loss is its mean over the GLOBAL batch: per-replica sums are scaled by the global batch
size (`tf.nn.compute_average_loss`), so the gradients all-reduced by the optimizer equal one device's.
Under a strategy the triplet features and labels are all-gathered, so each anchor mines its hardest
positive and negative in the whole global batch, as a single device (or the paper's DataParallel) does.

MultiWorkerMirroredStrategy: Keras 3.15's `fit` fails there in two places (keras-team/keras#20585): its
eager "symbolic build" reduces a distributed batch, which the collective strategy cannot do eagerly, and
it reduces each replica's scalar logs with `axis=0`. `MGNTrainer` builds everything before `fit` (so it
skips that build) and returns its logs as [1]-vectors under that strategy (so the reduction is a mean).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from mgn_tf.losses import batch_hard_triplet_per_anchor, softmax_per_example

LOSS_TERMS = ("loss", "softmax", "triplet")


class MGNTrainer(keras.Model):
    """Wraps the MGN model (`mgn_tf.model.build_mgn`) with MGN's losses in `train_step`."""

    def __init__(
        self,
        mgn: keras.Model,
        margin: float = 1.2,
        softmax_weight: float = 1.0,
        triplet_weight: float = 1.0,
        label_smoothing: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mgn = mgn
        self.margin = margin
        self.softmax_weight = softmax_weight
        self.triplet_weight = triplet_weight
        self.label_smoothing = label_smoothing
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_TERMS}
        self.trackers["id_accuracy"] = keras.metrics.Mean(name="id_accuracy")
        # Every variable lives in the (built) MGN model; train_step calls it directly, never `self`.
        self.built = mgn.built
        self._sync_statistics = None  # traced once, on the first sync_moving_statistics()

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Nothing to build here (model and optimizer are built before fit), and Keras's own build step
        # breaks under MultiWorkerMirroredStrategy (see the module docstring).
        if not _multi_worker(self.distribute_strategy):
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def call(self, images, training=False):
        return self.mgn(images, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _triplet(self, labels: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
        """Per local anchor: the mean over feature sets of batch-hard triplet against the global batch."""
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        local = tf.shape(labels)[0]
        if replicas > 1:
            all_labels = context.all_gather(labels, axis=0)
            all_features = context.all_gather(features, axis=0)
            offset = local * context.replica_id_in_sync_group
        else:
            all_labels, all_features, offset = labels, features, 0
        per_set = []
        for i in range(features.shape[1]):
            per_anchor = batch_hard_triplet_per_anchor(all_labels, all_features[:, i], self.margin)
            per_set.append(per_anchor[offset : offset + local])
        return tf.add_n(per_set) / tf.cast(len(per_set), per_set[0].dtype)

    def compute_losses(self, images, labels, training: bool = True) -> dict[str, tf.Tensor]:
        """Per-example loss terms [local batch] for one replica's batch."""
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        outputs = self.mgn(images, training=training)
        softmax = softmax_per_example(labels, outputs["logits"], self.label_smoothing)
        triplet = self._triplet(labels, outputs["triplet_features"])
        triplet = tf.cast(triplet, softmax.dtype)
        total = self.softmax_weight * softmax + self.triplet_weight * triplet
        predicted = tf.argmax(outputs["logits"], axis=-1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predicted, labels[:, None]), softmax.dtype), axis=1)
        return {"loss": total, "softmax": softmax, "triplet": triplet, "id_accuracy": accuracy}

    def train_step(self, data):
        images, labels = data
        with tf.GradientTape() as tape:
            terms = self.compute_losses(images, labels, training=True)
            # Sum over this replica / (local batch * replicas): the all-reduced gradient is the global mean's.
            loss = tf.nn.compute_average_loss(terms["loss"])
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(terms)

    def _update_trackers(self, terms: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, values in terms.items():
            self.trackers[name].update_state(tf.reduce_mean(values))
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        if _multi_worker(self.distribute_strategy):  # Keras reduces them with axis=0 there
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def sync_moving_statistics(self) -> None:
        """Sets every replica's BatchNorm moving mean / variance to their mean over all replicas (all
        workers included). Keras keeps these statistics per replica (each sees its own part of the batch),
        so without this the workers of MultiWorkerMirroredStrategy would save different models. Training
        mode never reads them, so calling this at checkpoints leaves the training trajectory unchanged."""
        if self._sync_statistics is None:
            self._sync_statistics = moving_statistics_sync(self.mgn, self.distribute_strategy)
        self._sync_statistics()

    def test_step(self, data):
        images, labels = data
        return self._update_trackers(self.compute_losses(images, labels, training=False))


def moving_statistics_sync(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable[[], None]:
    """A function that averages `model`'s BatchNorm moving statistics over all replicas (a no-op on one)."""
    statistics = [v.value for v in model.non_trainable_variables if "moving_" in v.path]
    if strategy.num_replicas_in_sync == 1 or not statistics:
        return lambda: None

    def average_replicas():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in statistics])
        for variable, mean in zip(statistics, means, strict=True):
            variable.assign(mean)  # aggregation NONE: each replica writes its own copy

    return tf.function(lambda: strategy.run(average_replicas))


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True under MultiWorkerMirroredStrategy with more than one worker."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()
    )
