"""TrainConfig and EvalSettings: every invalid value is refused with a message naming its flag, before
any work; and flags are turned into settings without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mgn_tf.config import TrainConfig
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
