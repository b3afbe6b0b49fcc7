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
    "scan_data": "the scan itself (what it removes shows in num_train_images, which is compared)",
    "strict_data": "whether a bad file stops the run",
    "on_bad_file": "what happens to a file that goes bad mid-run (every replacement is listed)",
    "eval_at_end": "the evaluation after training",
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

        names = dataset_names()
        need(self.dataset in names, "dataset", f"accepted values: {', '.join(names)}")
        need(self.p >= 2, "p", "P (identities per batch) must be >= 2 for the batch-hard triplet loss")
        need(self.k >= 1, "k", "K (images per identity) must be >= 1")
        need(self.k >= 2 or self.triplet_weight == 0, "k", "K must be >= 2 when --triplet_weight > 0")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(
            self.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0 (0 = one pass over the training set)"
        )
        need(self.optimizer in OPTIMIZERS, "optimizer", f"accepted values: {', '.join(OPTIMIZERS)}")
        need(self.lr > 0, "lr", "must be > 0")
        need(0 < self.lr_decay_factor <= 1, "lr_decay_factor", "must be in (0, 1]")
        need(all(e > 0 for e in self.lr_decay_epochs), "lr_decay_epochs", "epochs must be positive integers")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.margin >= 0, "margin", "must be >= 0")
        need(self.softmax_weight >= 0, "softmax_weight", "must be >= 0")
        need(self.triplet_weight >= 0, "triplet_weight", "must be >= 0")
        need(self.softmax_weight + self.triplet_weight > 0, "softmax_weight", "both loss weights are 0")
        need(self.strategy in STRATEGIES, "strategy", f"accepted values: {', '.join(STRATEGIES)}")
        need(self.cpu_replicas >= 0, "cpu_replicas", "must be >= 0")
        need(
            self.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must be >= 0 (0 = every epoch only)"
        )
        need(self.on_bad_file in ON_BAD_FILE, "on_bad_file", f"accepted values: {', '.join(ON_BAD_FILE)}")
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
        if self.dataset != "synthetic":
            need(Path(self.data_dir).is_dir(), "data_dir", f"no such folder for dataset {self.dataset!r}")

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
