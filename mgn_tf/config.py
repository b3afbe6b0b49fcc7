"""The training configuration: plain values, checked before any work starts.

Field names are the command-line flag names of `python -m mgn_tf.train`, so every validation message
names the flag to fix.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from mgn_tf.data.datasets import dataset_names
from mgn_tf.model import check_input_shape

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
OPTIMIZERS = ("sgd", "adam")


class ConfigError(ValueError):
    """An invalid flag value; the message names the flag and the accepted values."""


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
    eval_at_end: bool = True
    eval_batch_size: int = 64
    verbose: int = 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_height, self.input_width, 3)

    @property
    def backbone(self) -> str | None:
        """`build_mgn`'s backbone_weights: None for --backbone_weights=none (training from scratch)."""
        return None if self.backbone_weights in ("none", "") else self.backbone_weights

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid flag."""

        def need(ok: bool, flag: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"--{flag}={getattr(self, flag)!r}: {message}")

        need(self.dataset in dataset_names(), "dataset", f"accepted values: {', '.join(dataset_names())}")
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
        need(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        try:
            check_input_shape(self.input_shape)
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
