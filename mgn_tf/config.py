"""The training configuration: plain values, checked before any work starts.

Field names are the command-line flag names of `python -m mgn_tf.train`, so every validation message
names the flag to fix. No TensorFlow here: flags are parsed and checked before TensorFlow is imported
(so `--deterministic` can still set TensorFlow's environment).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from mgn_tf.data.datasets import dataset_names
from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.settings import EvalSettings
from mgn_tf.geometry import InputSize, check_input_size

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
OPTIMIZERS = ("sgd", "adam")
ON_BAD_FILE = ("substitute", "stop")  # what the training pipeline does with a file gone bad mid-run
LR_SCHEDULES = ("step", "cosine")
EVAL_SPLITS = ("validation", "test")  # what --eval_every_epochs evaluates
ERASING_FILLS = ("mean", "random")

# Resume: every setting in a run's config.json is compared with the resumed run's, except these, which
# change neither the model, the data order nor the optimisation (only how, where or how loudly it runs).
# A new TrainConfig field is compared unless it is added here, with the reason.
NOT_COMPARED_ON_RESUME: dict[str, str] = {
    "run_dir": "the run folder itself (it may have been moved)",
    "epochs": "may grow: the order of every epoch depends only on --seed and its index (checked: not "
    "below the epochs already trained)",
    "deterministic": "bit-exact execution, not a different computation",
    "strategy": "the devices (the global batch and its order stay the same)",
    "cpu_replicas": "the devices (the global batch and its order stay the same)",
    "num_replicas": "the devices (the global batch and its order stay the same)",
    "xla": "compilation, not a different computation",
    "checkpoint_every_steps": "when checkpoints are written",
    "max_steps": "where this command stops, not what a step computes (a later command trains on)",
    "scan_data": "the scan itself (what it removes shows in num_train_images, which is compared)",
    "strict_data": "whether a bad file stops the run",
    "on_bad_file": "what happens to a file that goes bad mid-run (every replacement is listed)",
    "eval_at_end": "the evaluation after training",
    "eval_every_epochs": "when the evaluation during training runs (validation.json lists the epochs)",
    "evaluation": "the evaluation after training",
    "verbose": "console output",
    "resume_override": "the override request itself (recorded in resume_overrides)",
    "resume_overrides": "the record of earlier overrides",
    "dataset_summary": "a description of the dataset (its training part is compared through num_classes "
    "and num_train_images)",
    "versions": "library versions (a resume may run on another installation)",
}
# Compared settings a user may change on resume with --resume_override=<name>[,...]: optimisation
# hyper-parameters, applied from the resumed step on. The rest would make the saved state meaningless
# (model shape, data order, the position of a step) and can never be overridden.
RESUME_OVERRIDABLE = (
    "lr",
    "lr_decay_epochs",
    "lr_decay_factor",
    "momentum",
    "weight_decay",
    "margin",
    "softmax_weight",
    "triplet_weight",
    "label_smoothing",
    "flip",
    "mixed_precision",
)
# Keys of TrainConfig.dataset_options -> the flag that sets them (mgn_tf.flags.dataset_options_from_flags).
OPTION_FLAGS = {"variant": "cuhk03_variant", "split_seed": "split_seed", "use_val": "msmt17_use_val"}
# config.json entries the engine adds to the TrainConfig fields, as a user would read them.
DERIVED_NAMES = {
    "num_classes": "training identities",
    "num_train_images": "training images",
    "steps_per_epoch": "steps per epoch",
}


@dataclass
class TrainConfig:
    dataset: str = "synthetic"
    data_dir: str = "data/synthetic"
    run_dir: str = "runs/synthetic"
    dataset_options: dict = field(default_factory=dict)
    input_height: int = 384
    input_width: int = 128
    backbone_weights: str = "imagenet"
    zero_init_residual: bool = False
    p: int = 16
    k: int = 4
    epochs: int = 80
    steps_per_epoch: int = 0
    max_steps: int = 0
    optimizer: str = "sgd"
    lr: float = 0.01
    lr_decay_epochs: tuple[int, ...] = (40, 60)
    lr_decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    margin: float = 1.2
    softmax_weight: float = 1.0
    triplet_weight: float = 1.0
    flip: bool = True
    pad_crop: int = 0
    jitter_brightness: float = 0.0
    jitter_contrast: float = 0.0
    jitter_saturation: float = 0.0
    jitter_hue: float = 0.0
    random_erasing: float = 0.0
    erasing_fill: str = "mean"
    label_smoothing: float = 0.0
    lr_schedule: str = "step"
    warmup_epochs: int = 0
    warmup_factor: float = 0.1
    init_from: str = ""
    freeze_backbone_epochs: int = 0
    new_layer_lr_factor: float = 1.0
    combine_all: bool = False
    eval_every_epochs: int = 0
    eval_split: str = "validation"
    val_identities: int = 0
    seed: int = 0
    deterministic: bool = False
    strategy: str = "auto"
    cpu_replicas: int = 0
    sync_bn: bool = False
    mixed_precision: bool = False
    xla: bool = False
    checkpoint_every_steps: int = 0
    scan_data: bool = True
    strict_data: bool = False
    on_bad_file: str = "substitute"
    resume_override: tuple[str, ...] = ()
    eval_at_end: bool = True
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    verbose: int = 1

    @property
    def datasets(self) -> list[tuple[str, str]]:
        """(reader name, root) of every dataset of the run: --dataset and --data_dir are comma lists of
        the same length (one --data_dir for one dataset)."""
        names = [n.strip().lower() for n in self.dataset.split(",")]
        roots = [d.strip() for d in self.data_dir.split(",")] if len(names) > 1 else [self.data_dir]
        return list(zip(names, roots, strict=False))

    @property
    def input_size(self) -> InputSize:
        return self.input_height, self.input_width

    @property
    def backbone(self) -> str | None:
        """`build_mgn`'s backbone_weights: None for --backbone_weights=none (training from scratch)."""
        return None if self.backbone_weights in ("none", "") else self.backbone_weights

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid flag."""

        def need(ok: bool, flag: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"--{flag}={getattr(self, flag)!r}: {message}")

        def one_of(flag: str, values: tuple[str, ...]) -> None:
            need(getattr(self, flag) in values, flag, f"accepted values: {', '.join(values)}")

        names = dataset_names()
        chosen = [n.strip().lower() for n in self.dataset.split(",")]
        for name in chosen:
            need(name in names, "dataset", f"{name!r} is not a dataset; accepted values: {', '.join(names)}")
        if len(chosen) > 1:
            roots = self.data_dir.split(",")
            need(
                len(roots) == len(chosen), "data_dir",
                f"{len(chosen)} datasets need {len(chosen)} comma-separated folders, got {len(roots)}",
            )  # fmt: skip
        need(len(set(self.datasets)) == len(self.datasets), "dataset", "a dataset folder is listed twice")
        need(self.p >= 2, "p", "P (identities per batch) must be >= 2 for the batch-hard triplet loss")
        need(self.k >= 1, "k", "K (images per identity) must be >= 1")
        need(self.k >= 2 or self.triplet_weight == 0, "k", "K must be >= 2 when --triplet_weight > 0")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(
            self.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0 (0 = one pass over the training set)"
        )
        need(self.max_steps >= 0, "max_steps", "must be >= 0 (0: train every epoch)")
        one_of("optimizer", OPTIMIZERS)
        need(self.lr > 0, "lr", "must be > 0")
        need(0 < self.lr_decay_factor <= 1, "lr_decay_factor", "must be in (0, 1]")
        need(all(e > 0 for e in self.lr_decay_epochs), "lr_decay_epochs", "epochs must be positive integers")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.margin >= 0, "margin", "must be >= 0")
        need(self.softmax_weight >= 0, "softmax_weight", "must be >= 0")
        need(self.triplet_weight >= 0, "triplet_weight", "must be >= 0")
        need(self.softmax_weight + self.triplet_weight > 0, "softmax_weight", "both loss weights are 0")
        one_of("strategy", STRATEGIES)
        need(self.cpu_replicas >= 0, "cpu_replicas", "must be >= 0")
        need(
            self.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must be >= 0 (0 = every epoch only)"
        )
        one_of("on_bad_file", ON_BAD_FILE)
        need(self.pad_crop >= 0, "pad_crop", "must be >= 0 (0: off)")
        for name in ("jitter_brightness", "jitter_contrast", "jitter_saturation"):
            need(getattr(self, name) >= 0, name, "must be >= 0 (0: off)")
        need(0 <= self.jitter_hue <= 0.5, "jitter_hue", "must be in [0, 0.5] (0: off)")
        need(0 <= self.random_erasing <= 1, "random_erasing", "a probability in [0, 1] (0: off)")
        one_of("erasing_fill", ERASING_FILLS)
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1) (0: off)")
        one_of("lr_schedule", LR_SCHEDULES)
        need(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0 (0: no warm-up)")
        need(0 < self.warmup_factor <= 1, "warmup_factor", "must be in (0, 1]")
        need(self.freeze_backbone_epochs >= 0, "freeze_backbone_epochs", "must be >= 0 (0: off)")
        need(
            self.freeze_backbone_epochs <= self.epochs, "freeze_backbone_epochs",
            f"must be at most --epochs={self.epochs} (equal: only the heads train, a linear probe)",
        )  # fmt: skip
        need(self.new_layer_lr_factor > 0, "new_layer_lr_factor", "must be > 0")
        need(
            self.new_layer_lr_factor == 1 or bool(self.init_from), "new_layer_lr_factor",
            "only with --init_from (the layers it does not load are the new ones)",
        )  # fmt: skip
        if self.init_from:
            need(
                Path(self.init_from).exists(), "init_from",
                "no such run folder, checkpoint or weights file",
            )  # fmt: skip
        need(self.eval_every_epochs >= 0, "eval_every_epochs", "must be >= 0 (0: only after training)")
        one_of("eval_split", EVAL_SPLITS)
        need(self.val_identities >= 0, "val_identities", "must be >= 0 (0: a tenth of the identities)")
        need(
            not self.val_identities or (self.eval_every_epochs and self.eval_split == "validation"),
            "val_identities", "only with --eval_every_epochs and --eval_split=validation",
        )  # fmt: skip
        need(
            not (self.combine_all and self.eval_every_epochs and self.eval_split == "test"), "combine_all",
            "trains on the test split: evaluate during training on --eval_split=validation",
        )  # fmt: skip
        for name in self.resume_override:
            if name not in RESUME_OVERRIDABLE:
                raise ConfigError(
                    f"--resume_override={','.join(self.resume_override)}: {name!r} cannot be overridden "
                    f"on resume (accepted: {', '.join(RESUME_OVERRIDABLE)})"
                )
        self.evaluation.validate()
        try:
            check_input_size(self.input_size)
        except ValueError as exc:
            raise ConfigError(
                f"--input_height={self.input_height} --input_width={self.input_width}: {exc}"
            ) from exc
        if self.backbone not in (None, "imagenet"):
            need(
                Path(self.backbone_weights).is_file(),
                "backbone_weights",
                "no such file (accepted: imagenet, none, or the path of a ResNet50 no-top .h5 weights file)",
            )
        need(
            not self.zero_init_residual or self.backbone is None,
            "zero_init_residual",
            "only with --backbone_weights=none (it would overwrite the pretrained residual blocks)",
        )
        for name, root in self.datasets:
            if name != "synthetic":
                need(Path(root).is_dir(), "data_dir", f"no such folder {root!r} for dataset {name!r}")

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _setting_name(key: str) -> str:
    if key in DERIVED_NAMES:
        return f"{DERIVED_NAMES[key]} ({key})"
    if key.startswith("dataset_options."):
        option = key.split(".", 1)[1]
        return f"--{OPTION_FLAGS.get(option, option)}"
    return f"--{key}"


def _flatten(record: dict) -> dict:
    """config.json entries with each dataset option as its own setting."""
    flat = {k: v for k, v in record.items() if k != "dataset_options"}
    for option, value in (record.get("dataset_options") or {}).items():
        flat[f"dataset_options.{option}"] = value
    return flat


def resume_changes(old: dict, new: dict) -> dict[str, tuple[object, object]]:
    """Compared settings that differ between a run's config.json (`old`) and a resumed run's record
    (`new`): {key: (old value, new value)}. A key missing on one side counts as a change (None)."""
    old, new = _flatten(old), _flatten(new)
    keys = sorted((set(old) | set(new)) - set(NOT_COMPARED_ON_RESUME))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def check_resume(old: dict, new: dict, overrides: tuple[str, ...], at_step: int) -> list[dict]:
    """Refuses a resume into a different experiment: ConfigError naming every changed setting with both
    values, unless each is listed in `overrides` (--resume_override). Returns the overrides applied,
    as config.json records them ({"step", "setting", "from", "to"})."""
    if new.get("lr_schedule") == "cosine" and old.get("epochs") not in (None, new.get("epochs")):
        raise ConfigError(
            f"--epochs={new.get('epochs')}: the run in {new.get('run_dir')} was started with --epochs="
            f"{old.get('epochs')} and a cosine schedule, whose every step depends on the run's length; "
            "resume with the same --epochs or choose a new --run_dir"
        )
    changes = resume_changes(old, new)
    refused = {k: v for k, v in changes.items() if k not in overrides}
    if refused:
        detail = "; ".join(f"{_setting_name(k)}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        hint = [k for k in refused if k in RESUME_OVERRIDABLE]
        advice = (
            f", or pass --resume_override={','.join(hint)} to continue with the new value"
            + ("s" if len(hint) > 1 else "")
            if hint and len(hint) == len(refused)
            else ""
        )
        raise ConfigError(
            f"the run in {new.get('run_dir')} was started with other settings ({detail}); resume with the "
            f"same flags or choose a new --run_dir{advice}"
        )
    return [
        {"step": at_step, "setting": k, "from": a, "to": b} for k, (a, b) in changes.items() if k in overrides
    ]
