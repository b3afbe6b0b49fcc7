"""Command-line flags of the tools, defined in groups, and their conversion to plain settings.

One flagfile serves training and evaluation: `python -m mgn_tf.train` defines the data, training and
evaluation groups; `python -m mgn_tf.evaluate` defines the same groups (a training flagfile parses) and
lists the data and evaluation ones in its --help. Each `define_*` function returns the names it defined,
which the tools pass to `mgn_tf.cli.run` as the flags their --help lists. Nothing below the entry points
reads flags: they turn them into a `TrainConfig` / `EvalSettings` here. No TensorFlow is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from absl import flags

from mgn_tf.config import (
    ERASING_FILLS,
    EVAL_SPLITS,
    LR_SCHEDULES,
    ON_BAD_FILE,
    OPTIMIZERS,
    RESUME_OVERRIDABLE,
    STRATEGIES,
    TrainConfig,
)
from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.settings import DISTANCES, POOLING, EvalSettings, RerankParams
from mgn_tf.geometry import PAPER_INPUT_SIZE, InputSize, check_input_size

F = flags.FLAGS


def _names_defined_by(define: Callable[[], None]) -> list[str]:
    before = set(F)
    define()
    return [name for name in F if name not in before]


def define_data_flags(input_size: InputSize | None = PAPER_INPUT_SIZE) -> list[str]:
    """Dataset, run directory and input size; `input_size` None: taken from the run or artefact."""
    defaults = TrainConfig()

    def define() -> None:
        flags.DEFINE_string(
            "dataset",
            defaults.dataset,
            "Dataset reader: market1501, dukemtmc, cuhk03, msmt17, cuhk01, folder, synthetic, or one "
            "registered with mgn_tf.data.datasets.register_dataset. Training only: a comma list trains on "
            "several datasets at once (identities relabelled per dataset), with one --data_dir each.",
        )
        flags.DEFINE_string(
            "data_dir",
            defaults.data_dir,
            "Dataset root folder (synthetic: where it is generated); a comma list for several datasets.",
        )
        flags.DEFINE_string(
            "run_dir", defaults.run_dir, "Run folder: checkpoints, logs, weights, config and evaluation."
        )
        flags.DEFINE_enum("cuhk03_variant", "labeled", ["labeled", "detected"], "CUHK03 bounding boxes.")
        flags.DEFINE_integer("split_seed", 0, "CUHK01: seed of the 485/486 identity split.")
        flags.DEFINE_bool("msmt17_use_val", True, "MSMT17: add list_val.txt to the training set.")
        suffix = "" if input_size else " Default: the size the model was trained or exported at."
        height, width = input_size or (None, None)
        flags.DEFINE_integer("input_height", height, f"Network input height (multiple of 96).{suffix}")
        flags.DEFINE_integer("input_width", width, f"Network input width (multiple of 16).{suffix}")

    return _names_defined_by(define)


def define_train_flags() -> list[str]:
    """Every training flag (names = TrainConfig fields)."""
    d = TrainConfig()

    def define() -> None:
        flags.DEFINE_string(
            "backbone_weights",
            d.backbone_weights,
            "ResNet50 initialisation: imagenet, none, or a path to an .h5 file.",
        )
        flags.DEFINE_bool(
            "zero_init_residual",
            d.zero_init_residual,
            "From scratch only: start every residual block as the identity (last BatchNorm scale 0).",
        )
        flags.DEFINE_integer("p", d.p, "Identities per batch (P of the PK batch).")
        flags.DEFINE_integer("k", d.k, "Images per identity (K of the PK batch).")
        flags.DEFINE_integer("epochs", d.epochs, "Training epochs.")
        flags.DEFINE_integer(
            "steps_per_epoch", d.steps_per_epoch, "Batches per epoch; 0 = one pass over the training set."
        )
        flags.DEFINE_integer(
            "max_steps",
            d.max_steps,
            "Stop this command after step N of the run (0: train every epoch), e.g. to check a config in "
            "seconds: the step's checkpoint and final weights are written, and the same command without "
            "it (or with a larger N) continues from there.",
        )
        flags.DEFINE_enum(
            "optimizer",
            d.optimizer,
            OPTIMIZERS,
            "sgd: the paper's SGD + momentum + L2 (PyTorch semantics); adam: Adam with the same L2 added to "
            "the gradient (for training from scratch without ImageNet weights, e.g. the CPU configs).",
        )
        flags.DEFINE_float("lr", d.lr, "Initial learning rate.")
        flags.DEFINE_list(
            "lr_decay_epochs", [str(e) for e in d.lr_decay_epochs], "Epochs after which lr is multiplied."
        )
        flags.DEFINE_float(
            "lr_decay_factor", d.lr_decay_factor, "Learning-rate multiplier at each decay epoch."
        )
        flags.DEFINE_float("momentum", d.momentum, "SGD momentum.")
        flags.DEFINE_float(
            "weight_decay", d.weight_decay, "L2 regularisation factor (added to the gradient, as PyTorch)."
        )
        flags.DEFINE_float("margin", d.margin, "Batch-hard triplet margin.")
        flags.DEFINE_float(
            "softmax_weight", d.softmax_weight, "Weight of the mean softmax cross-entropy term."
        )
        flags.DEFINE_float("triplet_weight", d.triplet_weight, "Weight of the mean batch-hard triplet term.")
        flags.DEFINE_bool("flip", d.flip, "Random horizontal flip augmentation.")
        flags.DEFINE_integer("pad_crop", d.pad_crop, "Zero-pad by N pixels, then random crop (0: off).")
        flags.DEFINE_float(
            "jitter_brightness", d.jitter_brightness, "Colour jitter: brightness factor range ±b."
        )
        flags.DEFINE_float("jitter_contrast", d.jitter_contrast, "Colour jitter: contrast factor range ±c.")
        flags.DEFINE_float("jitter_saturation", d.jitter_saturation, "Colour jitter: saturation range ±s.")
        flags.DEFINE_float("jitter_hue", d.jitter_hue, "Colour jitter: hue shift range ±h (at most 0.5).")
        flags.DEFINE_float(
            "random_erasing",
            d.random_erasing,
            "Random erasing probability (Zhong et al. 2017: area 0.02-0.4, aspect 0.3-3.3; 0: off).",
        )
        flags.DEFINE_enum(
            "erasing_fill", d.erasing_fill, ERASING_FILLS, "Erased pixels: ImageNet mean pixel or random."
        )
        flags.DEFINE_float(
            "label_smoothing", d.label_smoothing, "Label smoothing epsilon of the 8 softmax heads (0: off)."
        )
        flags.DEFINE_enum(
            "lr_schedule",
            d.lr_schedule,
            LR_SCHEDULES,
            "step: x lr_decay_factor at each of --lr_decay_epochs (paper); cosine: to 0 at the last step.",
        )
        flags.DEFINE_integer(
            "warmup_epochs", d.warmup_epochs, "Linear learning-rate warm-up over the first N epochs (0: off)."
        )
        flags.DEFINE_float("warmup_factor", d.warmup_factor, "Warm-up starts at lr x this factor.")
        flags.DEFINE_string(
            "init_from",
            d.init_from,
            "Fine-tune: start from a trained mgn_tf run folder, checkpoint or weights file; every weight "
            "but the identity classifiers is loaded (they are new, sized for this dataset).",
        )
        flags.DEFINE_integer(
            "freeze_backbone_epochs",
            d.freeze_backbone_epochs,
            "Train only the reductions and classifiers for the first N epochs (trunk and branches frozen, "
            "their BatchNorms in inference mode); N = --epochs trains only them (a linear probe).",
        )
        flags.DEFINE_float(
            "new_layer_lr_factor",
            d.new_layer_lr_factor,
            "With --init_from: learning-rate multiplier of the layers it did not load (the classifiers).",
        )
        flags.DEFINE_bool(
            "combine_all",
            d.combine_all,
            "Train on every split of the dataset (train + query + gallery, torchreid's combineall): a "
            "deployment model; no evaluation on the test split after training.",
        )
        flags.DEFINE_integer(
            "eval_every_epochs",
            d.eval_every_epochs,
            "Evaluate every N epochs during training (rank-1/mAP/mINP in history.csv, TensorBoard and "
            "validation.json; the best mAP kept in best.weights.h5). 0: only after training.",
        )
        flags.DEFINE_enum(
            "eval_split",
            d.eval_split,
            EVAL_SPLITS,
            "What --eval_every_epochs evaluates: validation = --val_identities held out of training; test "
            "= the dataset's test split (model selection on the test set: reported as such).",
        )
        flags.DEFINE_integer(
            "val_identities",
            d.val_identities,
            "Training identities held out for validation (a draw from --seed; 0: a tenth, at least 2).",
        )
        flags.DEFINE_integer("seed", d.seed, "Seed of initialisation, batch order and augmentation.")
        flags.DEFINE_bool(
            "deterministic",
            d.deterministic,
            "Bit-exact repeat and resume: TF op determinism, one CPU thread, oneDNN and grappler off.",
        )
        flags.DEFINE_enum("strategy", d.strategy, STRATEGIES, "tf.distribute strategy (auto: see README).")
        flags.DEFINE_integer("cpu_replicas", d.cpu_replicas, "Split the CPU into N logical devices (tests).")
        flags.DEFINE_bool("sync_bn", d.sync_bn, "Synchronise BatchNorm statistics across replicas.")
        flags.DEFINE_bool("mixed_precision", d.mixed_precision, "mixed_float16 compute (GPUs).")
        flags.DEFINE_bool("xla", d.xla, "Compile the train step with XLA.")
        flags.DEFINE_integer(
            "checkpoint_every_steps", d.checkpoint_every_steps, "Also checkpoint every N steps (0: off)."
        )
        flags.DEFINE_bool("scan_data", d.scan_data, "Scan training images for bad files before training.")
        flags.DEFINE_bool("strict_data", d.strict_data, "Stop at once if the scan finds a bad image.")
        flags.DEFINE_enum(
            "on_bad_file",
            d.on_bad_file,
            ON_BAD_FILE,
            "A training image unreadable during training (changed after the scan): substitute = train on "
            "another image of its identity, chosen from --seed and the position (listed in "
            "replaced_images.json); stop = exit 4 naming the file.",
        )
        flags.DEFINE_list(
            "resume_override",
            list(d.resume_override),
            "Settings that may differ from the run's config.json when resuming (e.g. lr after a non-finite "
            f"loss); recorded in config.json. Accepted: {', '.join(RESUME_OVERRIDABLE)}.",
        )
        flags.DEFINE_bool(
            "eval_at_end",
            d.eval_at_end,
            "Evaluate on the test split after training (the evaluation flags apply; writes <run_dir>/eval).",
        )
        flags.DEFINE_integer(
            "verbose", d.verbose, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch."
        )

    return _names_defined_by(define)


def define_eval_flags() -> list[str]:
    """How to evaluate (names = EvalSettings fields, re-ranking split into --rerank, --k1, --k2, ...)."""
    d = EvalSettings()
    rr = RerankParams()

    def define() -> None:
        flags.DEFINE_integer("eval_batch_size", d.eval_batch_size, "Images per inference batch.")
        flags.DEFINE_bool(
            "eval_flip",
            d.eval_flip,
            "Average each image's features with those of its mirror image (paper §4.1). Named eval_flip "
            "because --flip is the training augmentation flag.",
        )
        flags.DEFINE_enum("distance", d.distance, list(DISTANCES), "Query-gallery distance.")
        flags.DEFINE_bool("normalize", d.normalize, "L2-normalise features before the distance.")
        flags.DEFINE_bool(
            "rerank", True, "Also report results with k-reciprocal re-ranking (Zhong et al. 2017)."
        )
        flags.DEFINE_integer("k1", rr.k1, "Re-ranking k1 (k-reciprocal neighbourhood size).")
        flags.DEFINE_integer("k2", rr.k2, "Re-ranking k2 (local query expansion size).")
        flags.DEFINE_float("lambda_value", rr.lambda_value, "Re-ranking weight of the original distance.")
        flags.DEFINE_enum(
            "multi_query",
            d.multi_query,
            list(POOLING),
            "Market-1501 multi-query: pool (avg / max) each query's feature with those of the gt_bbox images "
            "of the same identity and camera.",
        )
        flags.DEFINE_integer("max_rank", d.max_rank, "Longest rank of the CMC curve.")
        flags.DEFINE_integer(
            "num_ranked_queries", d.num_ranked_queries, "Queries in ranked_list.png (0: none)."
        )
        flags.DEFINE_bool(
            "ranked_response_maps",
            d.ranked_response_maps,
            "Overlay each image's Global-branch feature response map (paper Fig. 2) on the ranked-list "
            "thumbnails; Keras models only (run directory, checkpoint, *.weights.h5).",
        )
        flags.DEFINE_integer("chunk_size", d.chunk_size, "Query rows per distance / re-ranking chunk.")
        flags.DEFINE_bool("progress", d.progress, "Show progress bars during feature extraction.")

    return _names_defined_by(define)


def define_runtime_flag() -> list[str]:
    """--runtime of the tools that run a model (evaluate, search)."""
    from mgn_tf.inference import RUNTIMES

    flags.DEFINE_enum(
        "runtime",
        "auto",
        list(RUNTIMES),
        "What runs the model. native: each format's own runtime (TensorFlow, LiteRT, onnxruntime). "
        "openvino: OpenVINO in float32, for a run's weights (converted in memory) or an .onnx file "
        "(a dependency of mgn_tf). auto: native, except that a run or an .onnx file embedding a large job "
        "runs on the fastest float32 runtime measured on this machine at the job's batch size (TensorFlow "
        "frozen, OpenVINO or LiteRT on a TFLite conversion of the weights made once; onnxruntime or "
        "OpenVINO), a choice cached per machine in $MGN_TF_CACHE_DIR, else $XDG_CACHE_HOME/mgn_tf, else "
        "~/.cache/mgn_tf (runtime_choice.json; the conversions in litert/ beside it).",
    )
    return ["runtime"]


def dataset_options_from_flags() -> dict:
    """Reader options of the chosen --dataset (of each, for a comma list)."""
    per_dataset = {
        "cuhk03": {"variant": F.cuhk03_variant},
        "cuhk01": {"split_seed": F.split_seed},
        "msmt17": {"use_val": F.msmt17_use_val},
    }
    options: dict = {}
    for name in F.dataset.split(","):
        options.update(per_dataset.get(name.strip().lower(), {}))
    return options


def input_size_from_flags() -> InputSize | None:
    """(--input_height, --input_width) when the user set them (command line or flagfile), else None;
    ConfigError naming both flags for one without the other or a size the model cannot take."""
    if not (F["input_height"].present or F["input_width"].present):
        return None
    given = f"--input_height={F.input_height} --input_width={F.input_width}"
    if F.input_height is None or F.input_width is None:
        raise ConfigError(f"{given}: pass both or neither")
    try:
        return check_input_size((F.input_height, F.input_width))
    except ValueError as exc:
        raise ConfigError(f"{given}: {exc}") from exc


def eval_settings_from_flags() -> EvalSettings:
    """EvalSettings from the parsed flags, validated (ConfigError names the flag)."""
    rerank = RerankParams(F.k1, F.k2, F.lambda_value) if F.rerank else None
    fields: Sequence[str] = [name for name in EvalSettings.__dataclass_fields__ if name != "rerank"]
    return EvalSettings(rerank=rerank, **{name: F[name].value for name in fields}).validate()


def config_from_flags() -> TrainConfig:
    """Builds the TrainConfig from parsed flags (flag names are the field names)."""
    try:
        decay = tuple(int(e) for e in F.lr_decay_epochs)
    except ValueError as exc:
        raise ConfigError(f"--lr_decay_epochs={F.lr_decay_epochs}: expected integers, e.g. 40,60") from exc
    special = {"dataset_options", "lr_decay_epochs", "evaluation", "dataset", "resume_override"}
    fields = [name for name in TrainConfig.__dataclass_fields__ if name not in special]
    return TrainConfig(
        dataset=",".join(name.strip().lower() for name in F.dataset.split(",")),
        dataset_options=dataset_options_from_flags(),
        lr_decay_epochs=decay,
        resume_override=tuple(name.strip() for name in F.resume_override if name.strip()),
        evaluation=eval_settings_from_flags(),
        **{name: F[name].value for name in fields},
    )
