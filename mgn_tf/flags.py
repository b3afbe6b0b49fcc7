"""Command-line flags shared by the entry points, so one flagfile serves training and evaluation."""

from __future__ import annotations

from absl import flags

from mgn_tf.config import OPTIMIZERS, STRATEGIES, ConfigError, TrainConfig
from mgn_tf.data.datasets import dataset_names

F = flags.FLAGS


def define_train_flags() -> None:
    """Defines every training flag (names = TrainConfig fields, plus dataset options)."""
    _D = TrainConfig()
    flags.DEFINE_enum("dataset", _D.dataset, dataset_names(), "Dataset reader.")
    flags.DEFINE_string(
        "data_dir", _D.data_dir, "Dataset root folder (for 'synthetic': where it is generated)."
    )
    flags.DEFINE_string(
        "run_dir", _D.run_dir, "Output folder: checkpoints, logs, weights, config and results."
    )
    flags.DEFINE_enum("cuhk03_variant", "labeled", ["labeled", "detected"], "CUHK03 bounding boxes.")
    flags.DEFINE_integer("split_seed", 0, "CUHK01: seed of the 485/486 identity split.")
    flags.DEFINE_bool("msmt17_use_val", True, "MSMT17: add list_val.txt to the training set.")
    flags.DEFINE_integer("input_height", _D.input_height, "Network input height (multiple of 96).")
    flags.DEFINE_integer("input_width", _D.input_width, "Network input width (multiple of 16).")
    flags.DEFINE_string(
        "backbone_weights",
        _D.backbone_weights,
        "ResNet50 initialisation: imagenet, none, or a path to an .h5 file.",
    )
    flags.DEFINE_bool(
        "zero_init_residual",
        _D.zero_init_residual,
        "From scratch only: start every residual block as the identity (last BatchNorm scale 0).",
    )
    flags.DEFINE_integer("p", _D.p, "Identities per batch (P of the PK batch).")
    flags.DEFINE_integer("k", _D.k, "Images per identity (K of the PK batch).")
    flags.DEFINE_integer("epochs", _D.epochs, "Training epochs.")
    flags.DEFINE_integer(
        "steps_per_epoch", _D.steps_per_epoch, "Batches per epoch; 0 = one pass over the training set."
    )
    flags.DEFINE_enum(
        "optimizer",
        _D.optimizer,
        OPTIMIZERS,
        "sgd: the paper's SGD + momentum + L2 (PyTorch semantics); adam: Adam with the same L2 added to the "
        "gradient (for training from scratch without ImageNet weights, e.g. the CPU configs).",
    )
    flags.DEFINE_float("lr", _D.lr, "Initial learning rate.")
    flags.DEFINE_list(
        "lr_decay_epochs", [str(e) for e in _D.lr_decay_epochs], "Epochs after which lr is multiplied."
    )
    flags.DEFINE_float("lr_decay_factor", _D.lr_decay_factor, "Learning-rate multiplier at each decay epoch.")
    flags.DEFINE_float("momentum", _D.momentum, "SGD momentum.")
    flags.DEFINE_float(
        "weight_decay", _D.weight_decay, "L2 regularisation factor (added to the gradient, as PyTorch)."
    )
    flags.DEFINE_float("margin", _D.margin, "Batch-hard triplet margin.")
    flags.DEFINE_float("softmax_weight", _D.softmax_weight, "Weight of the mean softmax cross-entropy term.")
    flags.DEFINE_float("triplet_weight", _D.triplet_weight, "Weight of the mean batch-hard triplet term.")
    flags.DEFINE_bool("flip", _D.flip, "Random horizontal flip augmentation.")
    flags.DEFINE_integer("seed", _D.seed, "Seed of initialisation, batch order and augmentation.")
    flags.DEFINE_bool(
        "deterministic",
        _D.deterministic,
        "Bit-exact repeat and resume: TF op determinism, one CPU thread, oneDNN and grappler off (restarts).",
    )
    flags.DEFINE_enum("strategy", _D.strategy, STRATEGIES, "tf.distribute strategy (auto: see README).")
    flags.DEFINE_integer(
        "cpu_replicas", _D.cpu_replicas, "Split the CPU into N logical devices (tests, no GPU)."
    )
    flags.DEFINE_bool("sync_bn", _D.sync_bn, "Synchronise BatchNorm statistics across replicas.")
    flags.DEFINE_bool("mixed_precision", _D.mixed_precision, "mixed_float16 compute (GPUs).")
    flags.DEFINE_bool("xla", _D.xla, "Compile the train step with XLA.")
    flags.DEFINE_integer(
        "checkpoint_every_steps", _D.checkpoint_every_steps, "Also checkpoint every N steps (0: off)."
    )
    flags.DEFINE_bool("scan_data", _D.scan_data, "Scan training images for bad files before training.")
    flags.DEFINE_bool("strict_data", _D.strict_data, "Stop at once if the scan finds a bad image.")
    flags.DEFINE_bool(
        "eval_at_end", _D.eval_at_end, "Evaluate rank-k / mAP on the test split after training."
    )
    flags.DEFINE_integer("eval_batch_size", _D.eval_batch_size, "Batch size of the final evaluation.")
    flags.DEFINE_integer(
        "verbose", _D.verbose, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch."
    )


def dataset_options_from_flags() -> dict:
    """Reader options of the chosen --dataset."""
    return {
        "cuhk03": {"variant": F.cuhk03_variant},
        "cuhk01": {"split_seed": F.split_seed},
        "msmt17": {"use_val": F.msmt17_use_val},
    }.get(F.dataset, {})


def config_from_flags() -> TrainConfig:
    """Builds the TrainConfig from parsed flags (flag names are the field names)."""
    try:
        decay = tuple(int(e) for e in F.lr_decay_epochs)
    except ValueError as exc:
        raise ConfigError(f"--lr_decay_epochs={F.lr_decay_epochs}: expected integers, e.g. 40,60") from exc
    fields = {name for name in TrainConfig.__dataclass_fields__} - {"dataset_options", "lr_decay_epochs"}
    return TrainConfig(
        dataset_options=dataset_options_from_flags(),
        lr_decay_epochs=decay,
        **{name: F[name].value for name in fields},
    )
