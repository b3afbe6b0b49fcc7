"""Evaluate a trained MGN:  python -m mgn_tf.evaluate --flagfile configs/market1501.flags [--flag=value ...]
(or mgn-evaluate)

Flags -> EvalSettings + what to evaluate (a model loaded by `mgn_tf.inference.load`, or a feature file)
-> `mgn_tf.evaluation.pipeline` (the same pipeline training ends with) -> exit code. Every training flag
is accepted, so one flagfile serves both; the training-only ones are ignored. The input size is the
model's unless --input_height/--input_width are given.
Exit codes: 0 ok, 2 bad flag or input (the message names the flag), 4 unreadable image (names the file).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from absl import flags

from mgn_tf import cli, locks
from mgn_tf.artifacts import EVAL_DIR
from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.settings import EvalSettings
from mgn_tf.flags import (
    dataset_options_from_flags,
    define_data_flags,
    define_eval_flags,
    define_runtime_flag,
    define_train_flags,
    eval_settings_from_flags,
    input_size_from_flags,
)

F = flags.FLAGS


def define_flags() -> list[str]:
    """The data and evaluation flags (listed by --help), the training ones (accepted), and this tool's."""
    names = define_data_flags(input_size=None)
    define_train_flags()
    names += define_eval_flags() + define_runtime_flag()
    before = set(F)
    flags.DEFINE_string(
        "weights",
        None,
        "Model to evaluate: a run directory, a checkpoint folder (<run>/checkpoints/step_N), a *.weights.h5 "
        "file of a run, a SavedModel directory, a .tflite or an .onnx file. Default: --run_dir.",
    )
    flags.DEFINE_string(
        "out_dir", None, f"Output folder for results.json and the figures (default <run_dir>/{EVAL_DIR})."
    )
    flags.DEFINE_string("save_features", None, "Write the extracted features to this .npz file.")
    flags.DEFINE_string(
        "load_features", None, "Evaluate features from a --save_features file instead of running a model."
    )
    return names + [name for name in F if name not in before]


@dataclass(frozen=True)
class EvalJob:
    """What to evaluate and where the outputs go (the flags that are not EvalSettings)."""

    weights: str
    dataset: str
    data_dir: str
    dataset_options: dict
    input_size: tuple[int, int] | None
    out_dir: Path
    save_features: str | None
    load_features: str | None
    runtime: str  # mgn_tf.inference.RUNTIMES
    explicit: frozenset[str]  # flags given on the command line or in a flagfile


def job_from_flags() -> EvalJob:
    """EvalJob from the parsed flags; raises ConfigError naming the flag for bad paths."""
    weights = F.weights or F.run_dir
    if F.save_features and F.load_features:
        raise ConfigError("--save_features and --load_features: pass at most one of them")
    if F.load_features:
        if not Path(F.load_features).is_file():
            raise ConfigError(f"--load_features={F.load_features}: no such file")
    elif not Path(weights).exists():
        which = f"--weights={weights}" if F.weights else f"--weights (default --run_dir={weights})"
        raise ConfigError(
            f"{which}: does not exist (a run directory, checkpoint folder, *.weights.h5, SavedModel, .tflite "
            "or .onnx)"
        )
    if "," in F.dataset:
        raise ConfigError(
            f"--dataset={F.dataset}: evaluate one dataset at a time (with its --data_dir); a run trained on "
            "several evaluated each test split in <run_dir>/eval/<dataset>/"
        )
    input_size = input_size_from_flags()
    return EvalJob(
        weights=weights,
        dataset=F.dataset.strip().lower(),
        data_dir=F.data_dir,
        dataset_options=dataset_options_from_flags(),
        input_size=input_size,
        out_dir=Path(F.out_dir or Path(F.run_dir) / EVAL_DIR),
        save_features=F.save_features,
        load_features=F.load_features,
        runtime=F.runtime,
        explicit=frozenset(name for name in F if F[name].present),
    )


def evaluate_feature_file(job: EvalJob, settings: EvalSettings) -> dict:
    """Evaluates a --save_features file as stored: neither the dataset nor a model is read."""
    from mgn_tf.evaluation.features import load_features
    from mgn_tf.evaluation.pipeline import evaluate_features

    try:
        stored = load_features(job.load_features)
    except ValueError as exc:
        raise ConfigError(f"--load_features={job.load_features}: {exc}") from exc
    info = stored.settings
    if "dataset" in job.explicit and info.get("dataset") not in (None, job.dataset):
        raise ConfigError(
            f"--load_features={job.load_features}: features of dataset {info.get('dataset')!r}, but "
            f"--dataset={job.dataset}"
        )
    if "eval_flip" in job.explicit and bool(info.get("flip")) != settings.eval_flip:
        raise ConfigError(
            f"--eval_flip={settings.eval_flip}: the features in {job.load_features} were extracted with "
            f"flip={info.get('flip')}; extract them again to change it"
        )
    if settings.multi_query != "none" and stored.multi_query is None:
        raise ConfigError(
            f"--multi_query={settings.multi_query}: {job.load_features} holds no multi-query features; save "
            f"them with --multi_query=avg (or max) and --save_features"
        )
    info.setdefault("dataset", job.dataset)
    return evaluate_features(stored, settings, job.out_dir, loaded_from=job.load_features)


def evaluate_model(job: EvalJob, settings: EvalSettings) -> dict:
    """Reads the split, loads the model and runs the evaluation pipeline."""
    from mgn_tf import inference
    from mgn_tf.data.datasets import DatasetLayoutError, load_dataset
    from mgn_tf.evaluation.pipeline import check_split, evaluate

    try:
        split = load_dataset(job.dataset, job.data_dir, **job.dataset_options)
    except (DatasetLayoutError, ValueError) as exc:
        raise ConfigError(f"--data_dir={job.data_dir} (--dataset={job.dataset}): {exc}") from exc
    check_split(split, settings)
    print(split.summary(), flush=True)
    try:
        embedder = inference.load(
            job.weights, input_size=job.input_size, flip_norm=False, runtime=job.runtime
        )
    except inference.InputSizeError as exc:
        height, width = exc.requested
        raise ConfigError(
            f"--input_height={height} --input_width={width}: {exc} (leave them out to use the model's size)"
        ) from exc
    except inference.RuntimeChoiceError as exc:
        raise ConfigError(f"--runtime={job.runtime}: {exc}") from exc
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ConfigError(f"--weights={job.weights}: {exc}") from exc
    print(f"Loaded {embedder}", flush=True)
    if embedder.baked_flip_norm and (not settings.eval_flip or not settings.normalize):
        print(
            "warning: the model flip-averages and L2-normalises inside (exported with --bake_flip_norm); "
            "--noeval_flip / --nonormalize cannot undo that",
            file=sys.stderr,
        )
    return evaluate(embedder, split, settings, job.out_dir, save_features_to=job.save_features)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.import_tensorflow()
    from mgn_tf.images import ImageReadError

    try:
        settings = eval_settings_from_flags()
        job = job_from_flags()
        with locks.hold(job.out_dir, f"--out_dir={job.out_dir}"):  # one evaluation writes a folder
            if job.load_features:
                evaluate_feature_file(job, settings)
            else:
                evaluate_model(job, settings)
    except ImageReadError as exc:
        print(f"error: cannot read an image: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 4
    except ConfigError as exc:
        return cli.error(exc)
    return 0


def run() -> None:
    cli.run(main, define_flags, __doc__)


if __name__ == "__main__":
    run()
