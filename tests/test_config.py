"""TrainConfig and EvalSettings: every invalid value is refused with a message naming its flag, before
any work; and flags are turned into settings without TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mgn_tf.config import (
    NOT_COMPARED_ON_RESUME,
    RESUME_OVERRIDABLE,
    TrainConfig,
    check_resume,
    resume_changes,
)
from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.settings import EvalSettings, RerankParams

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"p": 1}, "--p"),
        ({"k": 1}, "--k"),
        ({"input_height": 128}, "--input_height"),
        ({"input_width": 40}, "--input_width"),
        ({"strategy": "tpu"}, "--strategy"),
        ({"lr": 0.0}, "--lr"),
        ({"dataset": "market1501", "data_dir": "/nonexistent/market"}, "--data_dir"),
        ({"dataset": "no_such_dataset"}, "--dataset"),
        ({"backbone_weights": "/nonexistent/resnet.h5"}, "--backbone_weights"),
        ({"zero_init_residual": True}, "--zero_init_residual"),  # with the default imagenet weights
        ({"evaluation": EvalSettings(eval_batch_size=0)}, "--eval_batch_size"),
    ],
)
def test_invalid_config_names_the_flag(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**changes).validate()


def test_k1_is_fine_without_triplet():
    TrainConfig(k=1, triplet_weight=0.0).validate()


def test_a_linear_probe_freezes_every_epoch_and_more_is_refused():
    """--freeze_backbone_epochs=--epochs trains only the heads, in one frozen fit; more is refused."""
    from mgn_tf.engine import _fit_segments

    synthetic = {"dataset": "synthetic", "backbone_weights": "none"}
    TrainConfig(**synthetic, epochs=3, freeze_backbone_epochs=3).validate()
    assert _fit_segments(0, 10, 3, 3) == [(0, 3, 0, True)]
    assert _fit_segments(14, 10, 3, 3) == [(1, 2, 4, True), (2, 3, 0, True)]  # resumed mid-epoch
    with pytest.raises(ConfigError, match="--freeze_backbone_epochs.*at most --epochs=3"):
        TrainConfig(**synthetic, epochs=3, freeze_backbone_epochs=4).validate()


@pytest.mark.parametrize(
    "settings, flag",
    [
        (EvalSettings(distance="manhattan"), "--distance"),
        (EvalSettings(multi_query="median"), "--multi_query"),
        (EvalSettings(max_rank=0), "--max_rank"),
        (EvalSettings(num_ranked_queries=-1), "--num_ranked_queries"),
        (EvalSettings(chunk_size=0), "--chunk_size"),
        (EvalSettings(rerank=RerankParams(k1=0)), "--k1"),
        (EvalSettings(rerank=RerankParams(k2=0)), "--k2"),
        (EvalSettings(rerank=RerankParams(lambda_value=1.5)), "--lambda_value"),
    ],
)
def test_invalid_eval_settings_name_the_flag(settings, flag):
    with pytest.raises(ConfigError, match=flag):
        settings.validate()


def test_config_json_holds_the_evaluation_settings():
    record = TrainConfig(evaluation=EvalSettings(rerank=None, distance="cosine")).to_json()
    assert record["evaluation"]["distance"] == "cosine" and record["evaluation"]["rerank"] is None
    assert json.loads(json.dumps(record)) == record


PARSE_EVERY_CONFIG = """
import sys
from pathlib import Path
from absl import flags
from mgn_tf import train
from mgn_tf.flags import config_from_flags, eval_settings_from_flags
train.define_flags()
parsed = []
for path in sorted(Path("configs").glob("*.flags")):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", f"--flagfile={path}"])
    parsed.append((config_from_flags().dataset, eval_settings_from_flags().eval_batch_size))
heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "jax", "torch") if m in sys.modules)
print(len(parsed), heavy)
"""


def test_parsing_every_flagfile_imports_no_tensorflow():
    """The command line parses and checks everything before TensorFlow loads (so --deterministic can
    set its environment first): a fresh interpreter parses every config without importing it."""
    done = subprocess.run(
        [sys.executable, "-c", PARSE_EVERY_CONFIG], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    count, heavy = done.stdout.split(" ", 1)
    assert int(count) == len(list((REPO / "configs").glob("*.flags"))) >= 7
    assert heavy.strip() == "[]", f"parsing the flags imported {heavy.strip()}"


# --- resume: every setting that changes the experiment is compared -------------------------------------


def _record(**changes) -> dict:
    """A config.json record as the engine writes it: the TrainConfig fields plus what it derives."""
    derived = {"num_classes": 767, "num_train_images": 7365, "steps_per_epoch": 115, "num_replicas": 1}
    for key in list(changes):
        if key in derived:
            derived[key] = changes.pop(key)
    base = TrainConfig(dataset="cuhk03", dataset_options={"variant": "labeled"})
    return {**dataclasses.replace(base, **changes).to_json(), **derived, "versions": {"keras": "3"}}


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"dataset_options": {"variant": "detected"}}, "--cuhk03_variant: 'labeled' -> 'detected'"),
        ({"num_train_images": 7364}, "training images (num_train_images): 7365 -> 7364"),
        ({"data_dir": "/data/other"}, "--data_dir: 'data/synthetic' -> '/data/other'"),
        ({"margin": 0.3}, "--margin: 1.2 -> 0.3"),
        ({"weight_decay": 0.0}, "--weight_decay: 0.0005 -> 0.0"),
        ({"momentum": 0.5}, "--momentum: 0.9 -> 0.5"),
        ({"flip": False}, "--flip: True -> False"),
        ({"softmax_weight": 2.0}, "--softmax_weight: 1.0 -> 2.0"),
        ({"backbone_weights": "none"}, "--backbone_weights: 'imagenet' -> 'none'"),
        ({"sync_bn": True}, "--sync_bn: False -> True"),
        ({"lr_decay_factor": 0.5}, "--lr_decay_factor: 0.1 -> 0.5"),
        ({"seed": 1}, "--seed: 0 -> 1"),
        ({"lr": 0.001}, "--lr: 0.01 -> 0.001"),
    ],
)
def test_resume_with_a_changed_setting_is_refused_naming_it_with_both_values(changes, named):
    with pytest.raises(ConfigError) as raised:
        check_resume(_record(), _record(**changes), overrides=(), at_step=230)
    assert named in str(raised.value)


def test_resume_names_every_changed_setting_and_suggests_the_override_only_where_allowed():
    with pytest.raises(ConfigError) as raised:
        check_resume(_record(), _record(lr=0.001, p=8, margin=0.3), overrides=(), at_step=1)
    message = str(raised.value)
    assert "--lr: 0.01 -> 0.001" in message and "--p: 16 -> 8" in message and "--margin" in message
    assert "--resume_override" not in message  # --p can never be overridden
    with pytest.raises(ConfigError, match="--resume_override=lr"):
        check_resume(_record(), _record(lr=0.001), overrides=(), at_step=1)


def test_settings_that_change_only_how_the_run_executes_may_differ_on_resume():
    same = _record(
        epochs=120, verbose=2, xla=True, deterministic=True, strategy="mirrored", cpu_replicas=2,
        num_replicas=2, checkpoint_every_steps=50, eval_at_end=False, strict_data=True, run_dir="/moved",
        on_bad_file="stop",
    )  # fmt: skip
    assert check_resume(_record(), same, overrides=(), at_step=9) == []


def test_every_new_field_is_compared_unless_declared_otherwise():
    """A field nobody listed is compared: the safe default for a flag added later."""
    compared = set(TrainConfig.__dataclass_fields__) - set(NOT_COMPARED_ON_RESUME)
    assert {"dataset", "dataset_options", "data_dir", "lr", "margin", "sync_bn", "flip"} <= compared
    old, new = _record(), _record()
    new["a_future_setting"] = 1
    assert resume_changes(old, new) == {"a_future_setting": (None, 1)}
    assert set(RESUME_OVERRIDABLE) <= compared


def test_resume_override_applies_and_is_recorded_but_not_for_fixed_settings():
    applied = check_resume(_record(), _record(lr=0.001, weight_decay=0.0), ("lr", "weight_decay"), 230)
    assert applied == [
        {"step": 230, "setting": "lr", "from": 0.01, "to": 0.001},
        {"step": 230, "setting": "weight_decay", "from": 0.0005, "to": 0.0},
    ]
    with pytest.raises(ConfigError, match="'p' cannot be overridden"):
        TrainConfig(resume_override=("p",)).validate()
