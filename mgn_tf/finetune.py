"""Fine-tuning a trained MGN on another dataset: load every weight but the identity classifiers, and
optionally train only the heads (reductions and classifiers) for the first epochs.

The identity classifiers are the only layers whose shape depends on the training set (one row per
identity); everything else, BatchNorm statistics included, is copied by layer name from the source run.
"""

from __future__ import annotations

import os

import keras

# The sub-models holding ResNet50's layers (mgn_tf.model.build_mgn): what --freeze_backbone_epochs freezes.
BACKBONE_LAYERS = ("backbone_trunk", "global_branch", "part2_branch", "part3_branch")
CLASSIFIER_PREFIX = "classifier_"


def is_new_layer(layer: keras.layers.Layer) -> bool:
    """Layers that fine-tuning re-creates for the new identities instead of loading."""
    return layer.name.startswith(CLASSIFIER_PREFIX)


def initialise_from(model: keras.Model, source: str | os.PathLike) -> list[str]:
    """Copies every layer's weights from the trained mgn_tf model at `source` (run folder, checkpoint or
    weights file, as `mgn_tf.inference.load_training_model` takes) into `model`, except the identity
    classifiers; returns the names of the layers left as initialised. Raises ValueError naming the
    first layer that the source lacks or whose weights have other shapes."""
    from mgn_tf.inference import load_training_model

    height, width = model.input_shape[1:3]
    trained, _ = load_training_model(source, (height, width))
    new = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if is_new_layer(layer):
            new.append(layer.name)
            continue
        try:
            origin = trained.get_layer(layer.name)
        except ValueError:
            raise ValueError(f"{source}: the trained model has no layer {layer.name!r}") from None
        values = origin.get_weights()
        shapes = [w.shape for w in values]
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(s) for s in shapes] != expected:
            raise ValueError(
                f"{source}: layer {layer.name!r} has weights of shapes {shapes}, expected {expected}"
            )
        layer.set_weights(values)
    return new


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freezes (or unfreezes) the trunk and the three branches. A frozen Keras BatchNormalization runs in
    inference mode (its moving statistics, not the batch's, and they are not updated), as a PyTorch
    module in eval() mode does when fast-reid freezes it; the optimizer leaves frozen variables, L2 and
    momentum included, untouched."""
    for name in BACKBONE_LAYERS:
        model.get_layer(name).trainable = trainable


def new_variable_paths(model: keras.Model) -> list[str]:
    """The variable paths of the new layers (the optimizer's --new_layer_lr_factor applies to them)."""
    return [v.path for layer in model.layers if is_new_layer(layer) for v in layer.trainable_weights]
