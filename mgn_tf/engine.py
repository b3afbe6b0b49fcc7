"""One training run, from a `TrainConfig` to a run directory (its layout: `mgn_tf.artifacts`):

datasets (combined, all splits, identities held out for validation) -> data scan -> PK pipeline with
augmentations -> MGN model [initialised from a trained run] -> MGNTrainer.fit [heads only first]
  -> per epoch: history, evaluation during training + best weights, checkpoint
  -> final weights -> the evaluation pipeline of `python -m mgn_tf.evaluate` on each test split
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mgn_tf import artifacts, locks
from mgn_tf.checkpoint import (
    BatchCounter,
    CheckpointCallback,
    NonFiniteGuard,
    StopAtStep,
    latest_checkpoint,
    restore_checkpoint,
)
from mgn_tf.config import TrainConfig, check_resume
from mgn_tf.data.augment import Augmentation
from mgn_tf.data.datasets import Split, dataset_options, load_dataset
from mgn_tf.data.pipeline import BadFileLog, batches_per_epoch, train_dataset
from mgn_tf.data.splits import combine, combine_all, default_validation_ids, hold_out
from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.pipeline import check_split, evaluate
from mgn_tf.files import atomic_path, atomic_write_json, unique_names
from mgn_tf.finetune import initialise_from, new_variable_paths, set_backbone_trainable
from mgn_tf.model import build_mgn
from mgn_tf.optimizer import learning_rate_schedule, make_optimizer
from mgn_tf.runtime import ONEDNN_ENV, X86, onednn_active, onednn_off
from mgn_tf.trainer import MGNTrainer
from mgn_tf.validation import EpochHistory, PeriodicEvaluation


def configure_runtime(config: TrainConfig) -> None:
    """Process-wide settings; call before TensorFlow creates its devices (i.e. first). Runs no TF op, so
    that MultiWorkerMirroredStrategy can still configure collective ops afterwards."""
    if config.cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.cpu_replicas
        )
    if not config.deterministic and X86 and onednn_active() is False:
        print(
            f"note: TensorFlow's oneDNN kernels are off ({ONEDNN_ENV}={os.environ.get(ONEDNN_ENV, 'unset')} "
            "when it was imported): on CPUs without AVX-512 VNNI / AMX a training step takes 2-3x longer; "
            f"set {ONEDNN_ENV}=1 before TensorFlow is imported (import mgn_tf first does so)",
            flush=True,
        )
    if config.deterministic:
        if not onednn_off():
            warnings.warn(
                f"--deterministic with oneDNN kernels on: set {ONEDNN_ENV}=0 before TensorFlow is imported "
                "for bit-exact resume (mgn_tf.runtime.set_environment; python -m mgn_tf.train does so)",
                stacklevel=2,
            )
        # Op determinism alone is not enough on CPU: multi-threaded reductions in the oneDNN / Eigen
        # kernels still change the summation order between runs.
        tf.config.experimental.enable_op_determinism()
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        # No grappler rewrites: TF's determinism RFC (tensorflow/community rfcs/20210119-determinism.md,
        # "Grappler changes") names grappler as nondeterministic outside the ops (optimizer time-outs,
        # set iteration order), and resumed processes did compute their first step differently with it.
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """auto: MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored over GPUs (or over
    --cpu_replicas logical CPUs), else one device."""
    name = config.strategy
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = len(tf_config.get("cluster", {}).get("worker", []))
    # Listing logical devices initialises TensorFlow, after which collective ops can no longer be
    # configured: decide on MultiWorkerMirroredStrategy before looking at devices.
    if name == "multi_worker" or (name == "auto" and workers > 1):
        if workers < 1:
            raise ConfigError("--strategy=multi_worker needs TF_CONFIG with a cluster of workers")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        name = "mirrored" if gpus or config.cpu_replicas > 1 else "one_device"
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.OneDeviceStrategy("/gpu:0")  # its input iterator prefetches to the GPU
    # On the CPU there is no device to prefetch to, and OneDeviceStrategy's distributed input iterator
    # costs a sixth of a training step at small input sizes: the default strategy runs the same step.
    return tf.distribute.get_strategy()


def worker_run_dir(run_dir: Path, strategy: tf.distribute.Strategy) -> tuple[Path, bool]:
    """(folder this process writes to, is chief). Under MultiWorkerMirroredStrategy every worker keeps its
    own resume state, but only the chief (worker 0) writes `run_dir` itself; worker i writes
    `run_dir/workers/worker_i`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return run_dir, True
    chief = resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)
    folder = run_dir / artifacts.WORKERS_DIR / f"{resolver.task_type}_{resolver.task_id}"
    return (run_dir if chief else folder), chief


class ReplacementRecord(keras.callbacks.Callback):
    """Writes `replaced_images.json` (the training images unreadable mid-run and what was trained instead)
    at every epoch end and when training stops, for the batches trained so far; a resumed run keeps the
    entries of the steps before it."""

    def __init__(self, path: Path, log: BadFileLog, counter: BatchCounter):
        super().__init__()
        self.path = path
        self.log = log
        self.counter = counter
        self.start = counter.position
        earlier = json.loads(path.read_text())["replacements"] if path.is_file() else []
        self.earlier = [r for r in earlier if r["step"] <= self.start]
        self.written = len(self.earlier)

    def entries(self) -> list[dict]:
        return self.earlier + [r.to_dict() for r in self.log.replacements(up_to_step=self.counter.position)]

    def write(self) -> None:
        entries = self.entries()
        if len(entries) == self.written and (self.path.is_file() or not entries):
            return
        per_file: dict[str, int] = {}
        for entry in entries:
            per_file[entry["original"]] = per_file.get(entry["original"], 0) + 1
        atomic_write_json(self.path, {"count": len(entries), "per_file": per_file, "replacements": entries})
        self.written = len(entries)

    def on_epoch_end(self, epoch, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        self.write()


def _check_resume(run_dir: Path, record: dict, config: TrainConfig, done: int) -> None:
    """Refuses to resume the run in `run_dir` with settings that change the experiment (ConfigError
    naming each, exit 2), applies --resume_override, and records the overrides in `record`."""
    path = run_dir / artifacts.CONFIG_NAME
    if not path.is_file():
        if config.resume_override:
            print(f"--resume_override: no run to resume in {run_dir}; starting a new one", flush=True)
        return
    old = json.loads(path.read_text())
    applied = check_resume(old, record, config.resume_override, done)
    for change in applied:
        print(
            f"--resume_override: {change['setting']} {change['from']!r} -> {change['to']!r} from step "
            f"{done} (recorded in {path})",
            flush=True,
        )
    record["resume_overrides"] = list(old.get("resume_overrides", [])) + applied
    trained_epochs = -(-done // record["steps_per_epoch"])
    if config.epochs * record["steps_per_epoch"] < done:
        raise ConfigError(
            f"--epochs={config.epochs}: the run in {run_dir} has already trained {done} steps "
            f"({trained_epochs} epochs); --epochs may grow on resume, not shrink below that"
        )


def _training_items(config: TrainConfig, split: Split, run_dir: Path) -> tuple[list[str], np.ndarray]:
    """Training paths and labels 0..C-1 after the data scan (bad files skipped, convertible converted)."""
    items = split.train
    if config.scan_data:
        from mgn_tf.data.scan import scan_items

        report = scan_items(items, run_dir / artifacts.CONVERTED_DIR, strict=config.strict_data)
        report.write(run_dir)
        print(report.summary(), flush=True)
        items = report.items
    pids = np.array([pid for _, pid, _ in items])
    _, labels = np.unique(pids, return_inverse=True)
    return [path for path, _, _ in items], labels.astype(np.int32)


def _load_splits(config: TrainConfig) -> list[Split]:
    """Every dataset of the run, each read with the options its reader takes."""
    splits = []
    for name, root in config.datasets:
        accepted = dataset_options(name)
        options = {k: v for k, v in config.dataset_options.items() if k in accepted}
        splits.append(load_dataset(name, root, **options))
        print(splits[-1].summary(), flush=True)
    return splits


def _training_split(config: TrainConfig, splits: list[Split]) -> tuple[Split, Split | None, str]:
    """(what to train on, what --eval_every_epochs evaluates or None, its log prefix "val" / "test")."""
    train_split = combine([combine_all(s) if config.combine_all else s for s in splits])
    if config.combine_all:
        print(f"--combine_all: training on every split: {train_split.num_train_pids} identities", flush=True)
    if not config.eval_every_epochs:
        return train_split, None, ""
    if config.eval_split == "test":
        check_split(splits[0], config.evaluation)
        print(
            f"--eval_split=test: evaluating on the test split of {splits[0].name} during training; "
            "best.weights.h5 is then chosen on the test set (report test figures of another model)",
            flush=True,
        )
        return train_split, splits[0], "test"
    count = config.val_identities or default_validation_ids(train_split.num_train_pids)
    try:
        train_split, validation = hold_out(train_split, count, config.seed)
    except ValueError as exc:
        raise ConfigError(f"--val_identities={config.val_identities}: {exc}") from exc
    print(
        f"Validation: {count} training identities held out (seed {config.seed}): {len(validation.query)} "
        f"queries, {len(validation.gallery)} gallery images; {train_split.num_train_pids} identities train",
        flush=True,
    )
    return train_split, validation, "val"


def _augmentation(config: TrainConfig) -> Augmentation:
    return Augmentation(
        flip=config.flip, pad=config.pad_crop, brightness=config.jitter_brightness,
        contrast=config.jitter_contrast, saturation=config.jitter_saturation, hue=config.jitter_hue,
        erasing_probability=config.random_erasing, erasing_fill=config.erasing_fill,
    )  # fmt: skip


def _fit_segments(start: int, steps_per_epoch: int, epochs: int, frozen_epochs: int) -> list[tuple]:
    """(first epoch, end epoch, first step in it, backbone frozen) of each `fit` call: the rest of an
    interrupted epoch first, then the frozen epochs, then the others."""
    epoch, step = divmod(start, steps_per_epoch)
    segments = []
    if step:
        segments.append((epoch, epoch + 1, step, epoch < frozen_epochs))
        epoch += 1
    for first, end in ((epoch, min(frozen_epochs, epochs)), (max(epoch, frozen_epochs), epochs)):
        if first < end:
            segments.append((first, end, 0, first < frozen_epochs))
    return segments


def compile_trainer(mgn: keras.Model, config: TrainConfig, steps_per_epoch: int) -> MGNTrainer:
    """The training wrapper of `mgn` with the config's losses, schedule and optimizer, compiled and with
    the optimizer's state built (call inside the strategy's scope)."""
    trainer = MGNTrainer(
        mgn, config.margin, config.softmax_weight, config.triplet_weight, config.label_smoothing
    )
    schedule = learning_rate_schedule(
        config.lr, steps_per_epoch, config.epochs, config.lr_schedule, config.lr_decay_epochs,
        config.lr_decay_factor, config.warmup_epochs, config.warmup_factor,
    )  # fmt: skip
    factors = {path: config.new_layer_lr_factor for path in new_variable_paths(mgn)}
    optimizer = make_optimizer(
        config.optimizer, schedule, config.momentum, config.weight_decay,
        lr_factors=factors if config.new_layer_lr_factor != 1 else None,
    )  # fmt: skip
    trainer.compile(optimizer=optimizer, jit_compile=config.xla)
    # Every variable, frozen ones included: the optimizer keeps their state across the unfreezing.
    trainer.optimizer.build(trainer.trainable_variables)
    return trainer


def train(config: TrainConfig, callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Trains (or resumes) the run in `config.run_dir`; returns the final evaluation's results.json
    content ({} without evaluation; {dataset name: results} when several datasets are evaluated).

    `callbacks`: Keras callbacks added after the run's own, so they see the epoch's evaluation in the
    logs (e.g. `keras.callbacks.EarlyStopping(monitor="val_mAP", mode="max", patience=5)` with
    --eval_every_epochs=1); a callback that stops training ends the run as a finished one.
    """
    config.validate()
    strategy = make_strategy(config)  # first: MultiWorkerMirroredStrategy must precede any TF op
    keras.utils.set_random_seed(config.seed)
    run_dir, chief = worker_run_dir(Path(config.run_dir), strategy)
    # One process per run directory (each worker has its own): a second one is refused at once, naming
    # the first, instead of writing the same checkpoints and history.
    with locks.hold(run_dir, f"--run_dir={run_dir}"):
        return _train_in(run_dir, chief, config, strategy, callbacks)


def _train_in(run_dir: Path, chief: bool, config: TrainConfig, strategy, callbacks) -> dict:
    """`train` in its run directory, whose lock this process holds."""
    splits = _load_splits(config)
    tests = [] if config.combine_all else [s for s in splits if s.query and s.gallery]
    if config.eval_at_end and config.combine_all:
        print("--combine_all: no evaluation after training (the test split was trained on)", flush=True)
    evaluate_at_end = config.eval_at_end and chief and bool(tests)
    if evaluate_at_end:  # before hours of training, not after them
        for test in tests:
            check_split(test, config.evaluation)
    split, validation, prefix = _training_split(config, splits)
    augmentation = _augmentation(config)
    paths, labels = _training_items(config, split, run_dir)
    num_classes = int(labels.max()) + 1
    if num_classes < config.p:
        raise ConfigError(f"--p={config.p}: the training set has only {num_classes} usable identities")
    steps_per_epoch = config.steps_per_epoch or batches_per_epoch(labels, config.p, config.k)
    replicas = strategy.num_replicas_in_sync
    if config.p % replicas:
        raise ConfigError(
            f"--p={config.p} must be a multiple of the {replicas} replicas (whole K-groups each)"
        )

    checkpoint_dir = run_dir / artifacts.CHECKPOINTS_DIR
    latest = latest_checkpoint(checkpoint_dir)
    done = artifacts.checkpoint_step(latest) if latest is not None else 0
    record = {
        **config.to_json(),
        "num_classes": num_classes,
        "steps_per_epoch": steps_per_epoch,
        "num_replicas": replicas,
        "num_train_images": len(paths),
        "dataset_summary": split.summary(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    _check_resume(run_dir, record, config, done)
    atomic_write_json(run_dir / artifacts.CONFIG_NAME, record)

    with strategy.scope():
        mgn = build_mgn(
            num_classes,
            config.input_size,
            backbone_weights=config.backbone,
            sync_bn=config.sync_bn,
            zero_init_residual=config.zero_init_residual,
        )
        if config.init_from and latest is None:  # a resumed run has its own weights
            try:
                new = initialise_from(mgn, config.init_from)
            except (ValueError, FileNotFoundError) as exc:
                raise ConfigError(f"--init_from={config.init_from}: {exc}") from exc
            print(
                f"Initialised from {config.init_from}: every layer but {', '.join(new)} "
                f"(new, {num_classes} identities)",
                flush=True,
            )
        trainer = compile_trainer(mgn, config, steps_per_epoch)

    start = 0
    if latest is not None:
        start = int(restore_checkpoint(trainer, latest)["step"])
        print(f"Resuming from {latest} (step {start})", flush=True)
    completed = start // steps_per_epoch

    counter = BatchCounter(start)  # first: the other callbacks read the position it keeps
    bad_files = BadFileLog()
    replaced = ReplacementRecord(run_dir / artifacts.REPLACED_JSON, bad_files, counter)
    # Epoch end, in this order: the evaluation adds its figures to the logs, the history row and then
    # the checkpoint are written (so a checkpoint implies both), then TensorBoard and the user's.
    run_callbacks = [counter, NonFiniteGuard(checkpoint_dir, counter, steps_per_epoch)]
    if config.max_steps:
        run_callbacks.insert(1, StopAtStep(counter, config.max_steps))
    if validation is not None and chief:
        run_callbacks.append(
            PeriodicEvaluation(
                mgn,
                validation,
                config.evaluation,
                config.eval_every_epochs,
                config.epochs,
                run_dir,
                prefix,
                steps_per_epoch,
                completed,
            )  # fmt: skip
        )
    run_callbacks += [
        EpochHistory(run_dir / artifacts.HISTORY_CSV, completed),
        CheckpointCallback(checkpoint_dir, steps_per_epoch, counter, config.checkpoint_every_steps),
        replaced,
        keras.callbacks.TensorBoard(str(run_dir / artifacts.LOGS_DIR), update_freq="epoch"),
        *(callbacks or []),
    ]

    def data(epoch: int, step: int) -> tf.data.Dataset:
        dataset = train_dataset(
            paths,
            labels,
            config.input_size,
            p=config.p,
            k=config.k,
            seed=config.seed,
            epochs=config.epochs,
            start_epoch=epoch,
            start_step=step,
            augmentation=augmentation,  # holds --flip
            steps_per_epoch=steps_per_epoch,
            on_bad_file=config.on_bad_file,
            bad_files=bad_files,
        )
        shard = tf.data.Options()
        shard.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(shard)

    # shuffle=False: the PK pipeline orders the data itself.
    fit_options = dict(callbacks=run_callbacks, verbose=config.verbose, shuffle=False)
    started = time.time()
    frozen = False
    segments = _fit_segments(start, steps_per_epoch, config.epochs, config.freeze_backbone_epochs)
    if config.max_steps and start >= config.max_steps:
        print(f"--max_steps={config.max_steps}: the run is at step {start} already", flush=True)
        segments = []
    try:
        for first, end, step, freeze in segments:
            if freeze != frozen:
                set_backbone_trainable(mgn, not freeze)
                trainer.train_function = None  # traced again over the variables now trainable
                frozen = freeze
                state = "frozen: only the reductions and classifiers train" if freeze else "trained again"
                print(f"Epoch {first + 1}: trunk and branches {state}", flush=True)
            trainer.fit(
                data(first, step),
                initial_epoch=first,
                epochs=end,
                steps_per_epoch=steps_per_epoch - step,
                **fit_options,
            )
            if trainer.stop_training:  # --max_steps, or a callback (e.g. EarlyStopping), ended the run
                reached = config.max_steps and counter.position >= config.max_steps
                by = f"--max_steps={config.max_steps}" if reached else "a callback"
                print(f"Training stopped by {by} after step {counter.position}", flush=True)
                break
    except tf.errors.OpError as exc:
        if bad_files.fatal is not None:  # raised by the pipeline, reached by fit at that batch
            replaced.write()
            raise bad_files.fatal from exc
        raise
    train_seconds = time.time() - started
    if count := len(replaced.entries()):
        print(f"{count} training samples were replaced (unreadable files): {replaced.path}", flush=True)

    trainer.sync_moving_statistics()
    final = run_dir / artifacts.FINAL_WEIGHTS
    with atomic_path(final) as tmp:
        mgn.save_weights(tmp)
    print(f"Saved {final}", flush=True)
    print(f"Training took {train_seconds:.1f} s in this process", flush=True)

    if frozen:
        set_backbone_trainable(mgn, True)
    if not evaluate_at_end:
        return {}
    from mgn_tf.inference import KerasEmbedder

    # The run directory as the path, as `python -m mgn_tf.evaluate --run_dir` records it.
    embedder = KerasEmbedder(mgn, Path(config.run_dir))
    if len(tests) == 1:
        return evaluate(embedder, tests[0], config.evaluation, run_dir / artifacts.EVAL_DIR)
    return {
        name: evaluate(embedder, test, config.evaluation, run_dir / artifacts.EVAL_DIR / name)
        for name, test in zip(unique_names([t.name for t in tests]), tests, strict=True)
    }
