"""One training run, from a `TrainConfig` to a run directory (its layout: `mgn_tf.artifacts`):

dataset -> data scan -> PK pipeline -> MGN model -> MGNTrainer.fit -> checkpoints -> final weights
  -> the evaluation pipeline of `python -m mgn_tf.evaluate` (`mgn_tf.evaluation.pipeline.evaluate`)
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

from mgn_tf import artifacts
from mgn_tf.checkpoint import CheckpointCallback, NonFiniteGuard, latest_checkpoint, restore_checkpoint
from mgn_tf.config import TrainConfig
from mgn_tf.data.datasets import Split, load_dataset
from mgn_tf.data.pipeline import batches_per_epoch, train_dataset
from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.pipeline import check_split, evaluate
from mgn_tf.files import atomic_path, atomic_write_json
from mgn_tf.model import build_mgn
from mgn_tf.optimizer import make_optimizer, step_decay_schedule
from mgn_tf.runtime import ONEDNN_ENV, onednn_off
from mgn_tf.trainer import MGNTrainer

# Settings that must match between a run directory's config.json and a resumed run.
RESUME_KEYS = (
    "dataset",
    "input_height",
    "input_width",
    "p",
    "k",
    "seed",
    "optimizer",
    "lr",
    "lr_decay_epochs",
    "num_classes",
)
# (--epochs may grow on resume: the order of every epoch depends only on --seed and its index.)


def configure_runtime(config: TrainConfig) -> None:
    """Process-wide settings; call before TensorFlow creates its devices (i.e. first). Runs no TF op, so
    that MultiWorkerMirroredStrategy can still configure collective ops afterwards."""
    if config.cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.cpu_replicas
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
    device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


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


def _check_resume_config(run_dir: Path, record: dict) -> None:
    path = run_dir / artifacts.CONFIG_NAME
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    changed = [k for k in RESUME_KEYS if k in old and old[k] != record.get(k)]
    if changed:
        detail = ", ".join(f"--{k}: {old[k]!r} -> {record.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{run_dir} holds a run with different settings ({detail}); resume with the same flags "
            "or choose a new --run_dir"
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


def train(config: TrainConfig) -> dict:
    """Trains (or resumes) the run in `config.run_dir`; returns the final evaluation's results.json
    content ({} without evaluation)."""
    config.validate()
    strategy = make_strategy(config)  # first: MultiWorkerMirroredStrategy must precede any TF op
    keras.utils.set_random_seed(config.seed)
    run_dir, chief = worker_run_dir(Path(config.run_dir), strategy)
    run_dir.mkdir(parents=True, exist_ok=True)
    options = dict(config.dataset_options)
    split = load_dataset(config.dataset, config.data_dir, **options)
    print(split.summary(), flush=True)
    evaluate_at_end = config.eval_at_end and chief and bool(split.query and split.gallery)
    if evaluate_at_end:  # before hours of training, not after them
        check_split(split, config.evaluation)
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

    record = {
        **config.to_json(),
        "num_classes": num_classes,
        "steps_per_epoch": steps_per_epoch,
        "num_replicas": replicas,
        "num_train_images": len(paths),
        "dataset_summary": split.summary(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    _check_resume_config(run_dir, record)
    atomic_write_json(run_dir / artifacts.CONFIG_NAME, record)

    with strategy.scope():
        mgn = build_mgn(
            num_classes,
            config.input_size,
            backbone_weights=config.backbone,
            sync_bn=config.sync_bn,
            zero_init_residual=config.zero_init_residual,
        )
        trainer = MGNTrainer(mgn, config.margin, config.softmax_weight, config.triplet_weight)
        schedule = step_decay_schedule(
            config.lr, steps_per_epoch, config.lr_decay_epochs, config.lr_decay_factor
        )
        trainer.compile(
            optimizer=make_optimizer(config.optimizer, schedule, config.momentum, config.weight_decay),
            jit_compile=config.xla,
        )
        trainer.optimizer.build(trainer.trainable_variables)

    checkpoint_dir = run_dir / artifacts.CHECKPOINTS_DIR
    start = 0
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None:
        start = int(restore_checkpoint(trainer, latest)["step"])
        print(f"Resuming from {latest} (step {start})", flush=True)
    start_epoch, start_step = divmod(start, steps_per_epoch)

    callbacks = [
        NonFiniteGuard(),
        CheckpointCallback(checkpoint_dir, steps_per_epoch, config.checkpoint_every_steps),
        keras.callbacks.CSVLogger(str(run_dir / artifacts.HISTORY_CSV), append=True),
        keras.callbacks.TensorBoard(str(run_dir / artifacts.LOGS_DIR), update_freq="epoch"),
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
            flip=config.flip,
            steps_per_epoch=steps_per_epoch,
        )
        shard = tf.data.Options()
        shard.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(shard)

    # shuffle=False: the PK pipeline orders the data itself.
    fit_options = dict(callbacks=callbacks, verbose=config.verbose, shuffle=False)
    started = time.time()
    if start_step:  # finish the interrupted epoch first
        trainer.fit(
            data(start_epoch, start_step),
            initial_epoch=start_epoch,
            epochs=start_epoch + 1,
            steps_per_epoch=steps_per_epoch - start_step,
            **fit_options,
        )
        start_epoch += 1
    if start_epoch < config.epochs:
        trainer.fit(
            data(start_epoch, 0),
            initial_epoch=start_epoch,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            **fit_options,
        )
    train_seconds = time.time() - started

    trainer.sync_moving_statistics()
    final = run_dir / artifacts.FINAL_WEIGHTS
    with atomic_path(final) as tmp:
        mgn.save_weights(tmp)
    print(f"Saved {final}", flush=True)
    print(f"Training took {train_seconds:.1f} s in this process", flush=True)

    if not evaluate_at_end:
        return {}
    from mgn_tf.inference import KerasEmbedder

    # The run directory as the path, as `python -m mgn_tf.evaluate --run_dir` records it.
    embedder = KerasEmbedder(mgn, Path(config.run_dir))
    return evaluate(embedder, split, config.evaluation, run_dir / artifacts.EVAL_DIR)
