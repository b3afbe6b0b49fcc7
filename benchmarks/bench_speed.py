"""Same-run speed benchmark: mgn_tf and its exported artefacts against a PyTorch MGN and the fp32 ceiling.

    .venv/bin/python benchmarks/bench_speed.py [--export_dir DIR] [--threads 2] [--batch 8] [--seconds 10]
        [--sizes 96x32 384x128] [--skip_training] [--noxla] [--calibration_images DIR] [--isa native,avx2]

Needs the `bench` extra (torch). In one invocation, on this machine:
  * the ceiling: numpy float32 matmul GFLOP/s at --threads, divided by the MGN forward GFLOP per image
    (conv / linear multiply-adds x 2, counted on benchmarks/torch_mgn.py) = fp32 images/s;
  * inference images/s at --batch for PyTorch eager (NCHW and channels_last), the mgn_tf Keras model, every
    artefact in --export_dir (*.tflite, *.onnx, SavedModels, through mgn_tf.inference) and OpenVINO on
    the fp32 ONNX file; without --export_dir the script exports a model itself (at the largest size);
  * training seconds per step, PyTorch eager against mgn_tf's own path (engine.train's MGNTrainer,
    optimizer, compile and fit; with and without XLA), random P x K batches.
Every measurement runs in a fresh child process with the same thread count, so thread pools and memory
of one runtime never meet another's. With --isa native,avx2 the whole set runs twice: as this CPU allows,
then with every library capped at AVX2 (XLA, oneDNN in TensorFlow, OpenVINO and PyTorch, PyTorch's own
kernels, MKL, numpy's OpenBLAS: mgn_tf.runtime.isa_environment), so an AVX-512 machine also measures
what an AVX2-only CPU runs; the ratios compare runtimes within one ISA. Writes docs/results/bench_speed.json
and .md; progress on stderr.
Run it on an otherwise idle machine: PyTorch's OpenMP pool slows down several-fold whenever another process
takes a core (TensorFlow's work-stealing pool far less), which the per-call times in the JSON show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]

RESULT_MARK = "BENCH_SPEED_RESULT "
# Every thread pool a child may start reads one of these; ORT, TFLite and OpenVINO are also told in code.
THREAD_ENV = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS",
)  # fmt: skip
DEFAULT_PK = {"96x32": "8x4", "384x128": "4x4"}
REFERENCE = "pytorch eager channels_last"
# Artefacts that are not float32 (their names say so).
LOWER_PRECISION = ("fp16", "int8")
FP32_ONNX = "mgn.onnx"  # the export's float32 ONNX file, the onnxruntime figure int8 is compared with
# Backward costs about twice the forward: a training step is ~3 forward passes of arithmetic.
TRAIN_FLOP_FACTOR = 3
START = time.perf_counter()


def progress(message: str) -> None:
    print(f"[bench_speed {time.perf_counter() - START:6.0f} s] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def size_name(size) -> str:
    return f"{size[0]}x{size[1]}"


# ------------------------------------------------------------------------------------ child processes


def child_env(threads: int, inter_op: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_ENV})
    env.update(TF_NUM_INTEROP_THREADS=str(inter_op), TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


def run_child(task: dict, args) -> dict:
    """Runs `task` in a fresh interpreter under `args.current_isa`; its result dict, or {"error": ...}
    (the run goes on)."""
    from mgn_tf.runtime import isa_environment  # no TensorFlow: the parent stays light

    task = {**task, "threads": args.threads, "inter_op": args.inter_op}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)]
    env = {**isa_environment(args.current_isa, child_env(args.threads, args.inter_op)), **task.get("env", {})}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.child_timeout
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.child_timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        progress(f"  {task['kind']} failed (exit {done.returncode}): " + " | ".join(tail))
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    result["child_seconds"] = round(time.perf_counter() - started, 1)
    return result


def timed_calls(run, seconds: float, warmup: int = 1, min_calls: int = 3) -> list[float]:
    """Seconds of each `run()` after `warmup` calls: at least `min_calls`, until `seconds` passed."""
    for _ in range(warmup):
        run()
    durations, start = [], time.perf_counter()
    while len(durations) < min_calls or time.perf_counter() - start < seconds:
        began = time.perf_counter()
        run()
        durations.append(time.perf_counter() - began)
    return durations


def throughput(durations: list[float], batch: int) -> dict:
    """Images/s over all timed calls, and over the median call (robust to another process's bursts)."""
    return {
        "images_per_second": batch * len(durations) / sum(durations),
        "median_images_per_second": batch / statistics.median(durations),
        "calls": len(durations),
        "call_seconds": [round(d, 4) for d in durations[:200]],
    }


def step_times(durations: list[float]) -> dict:
    return {
        "seconds_per_step": sum(durations) / len(durations),
        "median_seconds_per_step": statistics.median(durations),
        "steps": len(durations),
        "step_seconds": [round(d, 4) for d in durations],
    }


def random_pixels(batch: int, size, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).uniform(0, 255, (batch, *size, 3)).astype(np.float32)


def pk_labels(p: int, k: int):
    import numpy as np

    return np.repeat(np.arange(p, dtype=np.int32), k)


def _tf_threads(task: dict):
    """Imports TensorFlow with the run's thread pools, before any op creates them."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(task["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(task["inter_op"])
    return tf


def _torch_threads(task: dict):
    import torch

    torch.set_num_threads(task["threads"])
    torch.set_num_interop_threads(task["inter_op"])
    return torch


def task_sgemm(task: dict) -> dict:
    import numpy as np

    n = task["n"]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up: BLAS thread start and page faults
    best = min(_seconds(lambda: a @ b) for _ in range(task["repeats"]))
    return {"gflops": 2 * n**3 / best / 1e9, "n": n, "best_seconds": best}


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def task_flops(task: dict) -> dict:
    _torch_threads(task)
    from torch_mgn import TorchMGN, forward_flops

    model = TorchMGN(task["num_classes"])
    return {
        name: {
            "embed_gflop": forward_flops(model, parse_size(name)) / 1e9,
            "train_forward_gflop": forward_flops(model, parse_size(name), embed_only=False) / 1e9,
        }
        for name in task["sizes"]
    }


def task_torch_infer(task: dict) -> dict:
    torch = _torch_threads(task)
    from torch_mgn import TorchMGN

    size = parse_size(task["size"])
    model = TorchMGN(task["num_classes"]).eval()
    channels_last = task["channels_last"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pixels = random_pixels(task["batch"], size)

    def run():
        # From the NHWC array the embedders take: its NCHW view is channels_last already; plain NCHW
        # needs the copy a PyTorch pipeline would make.
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with torch.inference_mode():
            return model.embed(x).numpy()

    return {**throughput(timed_calls(run, task["seconds"]), task["batch"]), "size": task["size"]}


def task_keras_infer(task: dict) -> dict:
    """What evaluate and search run for a run directory (KerasEmbedder), on distinct branch weights: a
    fresh model's three equal branches would let the frozen graph's optimizer compute one of them."""
    _tf_threads(task)
    from helpers.perturb import distinct_fresh_model

    from mgn_tf.inference import KerasEmbedder

    size = parse_size(task["size"])
    model = distinct_fresh_model(task["num_classes"], size, seed=0)
    run_dir = task.get("run_dir", False)  # inference.load's embedder of a run: LiteRT is a candidate
    embedder = KerasEmbedder(
        model, Path("<keras>"), frozen=task["frozen"], runtime=task.get("runtime", "auto"), litert=run_dir
    )
    result = {**_time_embedder(embedder, task), "engine": embedder.engine}
    if embedder.runtime_choice:
        choice = embedder.runtime_choice
        result["runtime_choice"] = {k: choice[k] for k in ("candidates", "excluded", "cached")}
    return result


def _time_embedder(embedder, task: dict) -> dict:
    pixels = random_pixels(task["batch"], embedder.input_size)
    durations = timed_calls(lambda: embedder.embed(pixels, batch_size=task["batch"]), task["seconds"])
    return {
        **throughput(durations, task["batch"]),
        "size": size_name(embedder.input_size),
        "format": embedder.format,
    }


def _artefact_embedder(path: Path, threads: int):
    """mgn_tf.inference's embedder of `path`, held to `threads` (a SavedModel: TensorFlow's pools)."""
    from mgn_tf.inference import OnnxEmbedder, OpenVinoEmbedder, TFLiteEmbedder, load

    if path.suffix == ".tflite":
        return TFLiteEmbedder(path, num_threads=threads), {"tflite_num_threads": threads}
    if path.suffix == ".xml":
        return OpenVinoEmbedder(path, num_threads=threads), {"openvino_inference_num_threads": threads}
    if path.suffix == ".onnx":
        return OnnxEmbedder(path, num_threads=threads), {"ort_intra_op_num_threads": threads}
    return load(path), {}


def task_artefact_infer(task: dict) -> dict:
    path = Path(task["path"])
    if path.is_dir():  # a SavedModel: TensorFlow's thread pools (the others never import TensorFlow)
        _tf_threads(task)
    embedder, settings = _artefact_embedder(path, task["threads"])
    return {**_time_embedder(embedder, task), "settings": settings}


def task_openvino_infer(task: dict) -> dict:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(task["path"])
    shape = model.inputs[0].get_partial_shape()
    size = (shape[1].get_length(), shape[2].get_length())
    model.reshape([task["batch"], *size, 3])
    # f32 explicitly: on CPUs with AMX / AVX512-BF16 OpenVINO otherwise infers in bfloat16.
    config = {
        "INFERENCE_NUM_THREADS": task["threads"], "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
    }  # fmt: skip
    request = core.compile_model(model, "CPU", config).create_infer_request()
    pixels = random_pixels(task["batch"], size)
    durations = timed_calls(lambda: request.infer({0: pixels}), task["seconds"])
    return {
        **throughput(durations, task["batch"]), "size": size_name(size),
        "settings": {**config, "openvino": ov.__version__},
    }  # fmt: skip


def task_torch_train(task: dict) -> dict:
    torch = _torch_threads(task)
    from torch_mgn import TorchMGN, make_optimizer, train_step

    size = parse_size(task["size"])
    model = TorchMGN(task["num_classes"]).train()
    optimizer = make_optimizer(model)
    images = torch.from_numpy(random_pixels(task["p"] * task["k"], size)).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(pk_labels(task["p"], task["k"]).astype("int64"))
    durations = timed_calls(
        lambda: train_step(model, optimizer, images, labels), task["seconds"], task["warmup"], task["steps"]
    )
    return {**step_times(durations), "size": task["size"]}


def task_tf_train(task: dict) -> dict:
    """engine.train's construction of the trainer (default flags, no pretrained download), then fit."""
    tf = _tf_threads(task)
    import keras

    from mgn_tf import engine
    from mgn_tf.config import TrainConfig
    from mgn_tf.model import build_mgn

    height, width = parse_size(task["size"])
    config = TrainConfig(
        input_height=height, input_width=width, p=task["p"], k=task["k"], backbone_weights="none",
        xla=task["xla"],
    )  # fmt: skip
    engine.configure_runtime(config)
    strategy = engine.make_strategy(config)
    steps_per_epoch = 1000
    with strategy.scope():
        mgn = build_mgn(
            task["num_classes"], config.input_size, backbone_weights=config.backbone,
            sync_bn=config.sync_bn, zero_init_residual=config.zero_init_residual,
        )  # fmt: skip
        trainer = engine.compile_trainer(mgn, config, steps_per_epoch)

    images = random_pixels(task["p"] * task["k"], (height, width))
    labels = pk_labels(task["p"], task["k"])
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    timer = StepTimer(task["warmup"], task["steps"], task["seconds"], keras.callbacks.Callback)
    trainer.fit(dataset, epochs=1, steps_per_epoch=10**6, verbose=0, callbacks=[timer.callback])
    from mgn_tf.runtime import onednn_active

    return {
        **step_times(timer.durations), "size": task["size"],
        "xla": config.xla, "mixed_precision": config.mixed_precision, "onednn": onednn_active(),
    }  # fmt: skip


class StepTimer:
    """Times fit's steps from batch end to batch end after `warmup` steps; stops fit when done."""

    def __init__(self, warmup: int, min_steps: int, seconds: float, base):
        self.warmup, self.min_steps, self.seconds = warmup, min_steps, seconds
        self.done, self.last, self.durations = 0, None, []
        timer = self

        class Callback(base):
            def on_train_batch_end(self, batch, logs=None):
                timer.step_end(self.model)

        self.callback = Callback()

    def step_end(self, model) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.done > self.warmup:
            self.durations.append(now - self.last)
            if len(self.durations) >= self.min_steps and sum(self.durations) >= self.seconds:
                model.stop_training = True
        self.last = now


def task_export(task: dict) -> dict:
    _tf_threads(task)
    from helpers.perturb import distinct_fresh_model

    from mgn_tf.export import exporter
    from mgn_tf.model import embedding_model

    size = parse_size(task["size"])
    model = embedding_model(distinct_fresh_model(task["num_classes"], size, seed=0))
    calibration = export_calibration(size, task.get("calibration_images"), task["calibration_count"])
    report = exporter.export_all(
        model, task["out_dir"], calibration=calibration, parity_count=8, speed_seconds=1.0,
        info={"benchmark": "bench_speed: distinct_fresh_model(seed=0)"},
    )  # fmt: skip
    return {
        "ok": report.ok,
        "artefacts": {k: str(v) for k, v in report.artefacts.items()},
        "calibration": calibration.describe(),
    }


def export_calibration(size: tuple[int, int], folder: str | None, count: int):
    """A seeded sample of `folder`, else generated images: only the speed of the result matters here."""
    from mgn_tf.export import quantize

    if folder:
        return quantize.calibration_from_folder(folder, size, count, seed=0)
    return quantize.generated_calibration(size, count)


TASKS = {
    "sgemm": task_sgemm, "flops": task_flops, "torch_infer": task_torch_infer,
    "keras_infer": task_keras_infer, "artefact_infer": task_artefact_infer,
    "openvino_infer": task_openvino_infer, "torch_train": task_torch_train, "tf_train": task_tf_train,
    "export": task_export,
}  # fmt: skip


def child_main(spec: str) -> None:
    task = json.loads(spec)
    result = TASKS[task["kind"]](task)
    print(RESULT_MARK + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------- the parent


def find_artefacts(export_dir: Path) -> list[Path]:
    """Every *.tflite, *.onnx, OpenVINO *.xml and SavedModel directory under `export_dir`."""
    kinds = (".tflite", ".onnx", ".xml")
    files = sorted(p for p in export_dir.rglob("*") if p.suffix in kinds and p.is_file())
    saved_models = sorted(p.parent for p in export_dir.rglob("saved_model.pb"))
    return saved_models + files


def fp32_onnx(paths: list[Path]) -> list[Path]:
    return [
        p for p in paths if p.suffix == ".onnx" and not any(t in p.stem for t in ("int8", "fp16", "quant"))
    ]


def artefact_name(path: Path, export_dir: Path) -> str:
    return f"mgn_tf {path.relative_to(export_dir).as_posix()}"


def measure_ceiling(args, record: dict) -> None:
    progress(f"sgemm ceiling: numpy float32 {args.sgemm_n}^2 matmul, {args.threads} threads")
    record["sgemm"] = run_child({"kind": "sgemm", "n": args.sgemm_n, "repeats": 5}, args)
    progress(f"  {record['sgemm'].get('gflops', float('nan')):.1f} GFLOP/s")
    record["flops"] = run_child({"kind": "flops", "sizes": args.sizes, "num_classes": args.num_classes}, args)
    for name in args.sizes:
        gflop = record["flops"].get(name, {}).get("embed_gflop", float("nan"))
        progress(f"  MGN forward at {name}: {gflop:.2f} GFLOP per image")


def measure_inference(args, record: dict, export_dir: Path | None) -> None:
    from mgn_tf import inference  # no TensorFlow at import: the parent stays light

    rows = record["inference"]
    common = {"batch": args.batch, "seconds": args.seconds, "num_classes": args.num_classes}
    for name in args.sizes:
        for runtime, task in (
            ("pytorch eager NCHW", {"kind": "torch_infer", "channels_last": False}),
            (REFERENCE, {"kind": "torch_infer", "channels_last": True}),
            # What evaluate and search run for a run directory; its engine goes into the name.
            ("mgn_tf keras (run dir)", {"kind": "keras_infer", "frozen": True, "run_dir": True}),
            (
                "mgn_tf keras, runtime native (TensorFlow frozen)",
                {"kind": "keras_infer", "frozen": True, "runtime": "native"},
            ),
            ("mgn_tf keras on variables", {"kind": "keras_infer", "frozen": False}),
        ):
            progress(f"inference {runtime} {name} batch {args.batch}")
            spec = {**task, **common, "size": name}
            row = {"runtime": runtime, "task": spec, **run_child(spec, args)}
            if task.get("run_dir"):
                engine = row.get("engine", "?")
                row.update(runtime=f"mgn_tf keras (run dir: evaluate, search: {engine})", run_dir=True)
            rows.append(row)
    if export_dir is None:
        return
    artefacts = find_artefacts(export_dir)
    for path in artefacts:
        progress(f"inference {path} batch {args.batch}")
        spec = {"kind": "artefact_infer", "path": str(path), **common}
        rows.append({"runtime": artefact_name(path, export_dir), "task": spec, **run_child(spec, args)})
    for path in fp32_onnx(artefacts):
        name = f"openvino {path.relative_to(export_dir).as_posix()}"
        if not inference.openvino_available():
            record["notes"].append(f"{name}: skipped, openvino is not installed (a dependency of mgn_tf)")
            continue
        progress(f"inference {name} batch {args.batch}")
        spec = {"kind": "openvino_infer", "path": str(path), **common}
        rows.append({"runtime": name, "task": spec, **run_child(spec, args)})


def repeat_in_turn(args, rows: list[dict], key: str) -> None:
    """Measures `rows` again, in turn, `args.repeats` times: on a shared machine the speed drifts by
    10-20 % within minutes (another VM's load), and rows measured once, minutes apart, compare that
    drift. Each row's `repeats` keeps its `key` (images/s or s/step) of each round; the ratios compare
    the fastest round of each row (`_fastest_round`)."""
    for round_ in range(args.repeats):
        for row in rows:
            progress(f"{row['runtime']} {row['size']}, again ({round_ + 1} of {args.repeats})")
            row.setdefault("repeats", []).append(run_child(row["task"], args).get(key))


def repeat_run_dir_and_best(args, record: dict) -> None:
    """The run directory's row and the best float32 row of each size, again in turn."""
    for size, pair in run_dir_vs_best_fp32(record).items():
        if pair["run_dir"] == pair["best_fp32"]:  # nothing to compare
            continue
        rows = [
            row for row in record["inference"]
            if row["runtime"] in (pair["run_dir"], pair["best_fp32"]) and row.get("size") == size
        ]  # fmt: skip
        repeat_in_turn(args, rows, "images_per_second")


def repeat_training(args, record: dict) -> None:
    """PyTorch's and mgn_tf's default training rows of each size, again in turn: the ratio the README
    quotes. A 384x128 step takes ~14 s on 2 AVX2 cores, so one row's timed steps span a minute or two."""
    rows = [r for r in record["training"] if r["runtime"] in ("pytorch eager", "mgn_tf")]
    repeat_in_turn(args, rows, "seconds_per_step")


def measure_training(args, record: dict) -> None:
    rows = record["training"]
    for name in args.sizes:
        p, k = parse_size(args.pk.get(name, "4x4"))
        common = {
            "size": name, "p": p, "k": k, "warmup": args.train_warmup, "steps": args.train_steps,
            "seconds": args.seconds, "num_classes": args.num_classes,
        }  # fmt: skip
        variants = [
            ("pytorch eager", {"kind": "torch_train"}),
            ("mgn_tf", {"kind": "tf_train", "xla": False}),
        ]
        if args.xla:
            variants.append(("mgn_tf --xla", {"kind": "tf_train", "xla": True}))
        if args.onednn_off_row:  # TensorFlow's own default on CPUs without AVX-512 VNNI / AMX
            off = {"kind": "tf_train", "xla": False, "env": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
            variants.append(("mgn_tf, oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)", off))
        for runtime, task in variants:
            progress(f"training {runtime} {name} P x K = {p}x{k}")
            task = {**task, **common}
            result = run_child(task, args)
            rows.append({"runtime": runtime, "batch": p * k, "pk": f"{p}x{k}", "task": task, **result})
            progress(f"  {result.get('seconds_per_step', float('nan')):.3f} s/step")


def add_ratios(record: dict) -> None:
    """Inference: images/s over PyTorch channels_last's and over the ceiling's; training: PyTorch s/step
    over this s/step (>1: faster than PyTorch) and the ceiling's s/step over this one."""
    gflops = record["sgemm"].get("gflops")
    flops = record["flops"]
    reference = {r["size"]: r["images_per_second"] for r in record["inference"]
                 if r["runtime"] == REFERENCE and "images_per_second" in r}  # fmt: skip
    for row in record["inference"]:
        if "images_per_second" not in row:
            continue
        ips, size = row["images_per_second"], row["size"]
        row["vs_reference"] = ips / reference[size] if size in reference else None
        per_image = flops.get(size, {}).get("embed_gflop")
        row["ceiling_images_per_second"] = gflops / per_image if gflops and per_image else None
        row["vs_ceiling"] = (
            ips / row["ceiling_images_per_second"] if row["ceiling_images_per_second"] else None
        )
    torch_steps = {r["size"]: _fastest_round(r) for r in record["training"]
                   if r["runtime"] == "pytorch eager" and "seconds_per_step" in r}  # fmt: skip
    for row in record["training"]:
        if "seconds_per_step" not in row:
            continue
        size = row["size"]
        # The fastest round of each side: PyTorch's and mgn_tf's rows are re-measured in turn.
        row["vs_reference"] = torch_steps[size] / _fastest_round(row) if size in torch_steps else None
        per_image = flops.get(size, {}).get("train_forward_gflop")
        ceiling = TRAIN_FLOP_FACTOR * per_image * row["batch"] / gflops if gflops and per_image else None
        row["ceiling_seconds_per_step"] = ceiling
        row["vs_ceiling"] = ceiling / row["seconds_per_step"] if ceiling else None


def run_dir_vs_best_fp32(record: dict) -> dict:
    """Per size: the run directory's images/s (what evaluate and search run) over the best float32
    runtime's in this run (every runtime but the fp16 / int8 artefacts)."""
    out = {}
    rows = [r for r in record["inference"] if "images_per_second" in r]
    for size in sorted({r["size"] for r in rows}):
        fp32 = [r for r in rows if r["size"] == size and not any(p in r["runtime"] for p in LOWER_PRECISION)]
        run_dir = [r for r in fp32 if r.get("run_dir")]
        if run_dir and fp32:
            best = max(fp32, key=_fastest_round)
            out[size] = {
                "run_dir": run_dir[0]["runtime"], "best_fp32": best["runtime"],
                "ratio": _fastest_round(run_dir[0]) / _fastest_round(best),
                "rounds": 1 + len(run_dir[0].get("repeats", [])),
                "measured_choice": run_dir[0].get("runtime_choice", {}).get("candidates"),
            }  # fmt: skip
    return out


def _measure(row: dict) -> tuple[str, str, Callable]:
    """(key, unit, fastest of several) of a row: s/step for training, images/s for inference."""
    if "seconds_per_step" in row:
        return "seconds_per_step", "s/step", min
    return "images_per_second", "img/s", max


def _fastest_round(row: dict) -> float:
    """A row's value in its fastest round: the first measurement or one of its `repeats`."""
    key, _, fastest = _measure(row)
    return fastest([row[key], *(v for v in row.get("repeats", []) if v)])


def _ratio(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def _value(row: dict, key: str, unit: str, digits: int) -> tuple[str, str]:
    """(mean, median) cells; the error in place of the mean when the measurement failed."""
    if key not in row:
        return row.get("error", "?").replace("|", "/"), "-"
    return f"{row[key]:.{digits}f} {unit}", f"{row[f'median_{key}']:.{digits}f}"


def table(record: dict) -> str:
    """The table of one ISA's measurements."""
    lines = [
        "| measurement | runtime | size | batch | value | median | vs PyTorch | vs fp32 ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in record["inference"]:
        value, median = _value(row, "images_per_second", "img/s", 1)
        lines.append(
            f"| inference | {row['runtime']} | {row.get('size', '-')} | {record['batch']} | {value} | "
            f"{median} | {_ratio(row.get('vs_reference'))} | {_ratio(row.get('vs_ceiling'))} |"
        )
    for row in record["training"]:
        value, median = _value(row, "seconds_per_step", "s/step", 3)
        lines.append(
            f"| training | {row['runtime']} | {row['size']} | {row['batch']} ({row['pk']}) | {value} | "
            f"{median} | {_ratio(row.get('vs_reference'))} | {_ratio(row.get('vs_ceiling'))} |"
        )
    return "\n".join(lines)


def int8_vs_onnxruntime_fp32(record: dict) -> list[dict]:
    """Every int8 artefact's images/s over PyTorch channels_last's and over the fp32 .onnx file's run by
    onnxruntime (mgn_tf.inference's OnnxEmbedder), at the same size."""
    rows = [r for r in record["inference"] if "images_per_second" in r]
    out = []
    for row in rows:
        if "int8" not in row["runtime"]:
            continue
        fp32 = [r for r in rows if r["size"] == row["size"] and r["runtime"].endswith(f" {FP32_ONNX}")]
        out.append({
            "runtime": row["runtime"], "size": row["size"], "vs_pytorch": row.get("vs_reference"),
            "vs_onnxruntime_fp32": row["images_per_second"] / fp32[0]["images_per_second"] if fp32 else None,
        })  # fmt: skip
    return out


def _rounds(rows: list[dict], size: str) -> str:
    """'<runtime> a, b, c img/s; ...': each round of the rows taken again at `size`."""
    out = []
    for row in rows:
        if row.get("size") != size or not row.get("repeats"):
            continue
        key, unit, _ = _measure(row)
        values = ", ".join("failed" if v is None else f"{v:.2f}" for v in [row[key], *row["repeats"]])
        out.append(f"{row['runtime']} {values} {unit}")
    return "; ".join(out)


def _speeds(candidates: dict) -> str:
    return ", ".join(f"{name} {speed:.1f} img/s" for name, speed in candidates.items() if speed)


def isa_notes(part: dict) -> list[str]:
    int8 = [
        f"{r['runtime']} ({r['size']}): {_ratio(r['vs_pytorch'])} x PyTorch channels_last, "
        f"{_ratio(r['vs_onnxruntime_fp32'])} x onnxruntime float32 ({FP32_ONNX})"
        for r in part.get("int8_vs_onnxruntime_fp32", [])
    ]
    return (
        [
            f"Run directory at {size}: {v['ratio']:.2f} x the best float32 runtime ({v['best_fp32']})"
            + (
                f", fastest of {v['rounds']} rounds each, taken in turn ({_rounds(part['inference'], size)})"
                if v["rounds"] > 1
                else ": the run directory is the fastest float32 row"
            )
            + (
                f"; runtime auto measured {_speeds(v['measured_choice'])} at its first call."
                if v["measured_choice"]
                else "."
            )
            for size, v in part["run_dir_vs_best_fp32"].items()
        ]
        + [
            f"Training at {row['size']}: mgn_tf {_ratio(row['vs_reference'])} x PyTorch, fastest of "
            f"{1 + len(row['repeats'])} rounds each, taken in turn "
            f"({_rounds(part['training'], row['size'])})."
            for row in part["training"]
            if row["runtime"] == "mgn_tf" and row.get("repeats")
        ]
        + (["int8: " + "; ".join(int8) + "."] if int8 else [])
        + part["notes"]
    )


def notes(record: dict, args) -> str:
    sgemm = ", ".join(
        f"{part['sgemm'].get('gflops', 0):.1f} GFLOP/s ({isa})" for isa, part in record["isa"].items()
    )
    flops = ", ".join(
        f"{k} {v['embed_gflop']:.2f}"
        for k, v in next(iter(record["isa"].values()))["flops"].items()
        if isinstance(v, dict)
    )
    parts = [
        f"Ceiling: numpy float32 {args.sgemm_n}x{args.sgemm_n} matmul at {sgemm} ({args.threads} threads); "
        "MGN embedding forward GFLOP per image (2 x conv/linear multiply-adds): "
        f"{flops}. Training ceiling: {TRAIN_FLOP_FACTOR} x the training model's forward FLOPs per image. "
        "The ceiling is fp32's: float16 / int8 artefacts can exceed it.",
        f"Every measurement in a fresh child process: {', '.join(THREAD_ENV)}={args.threads}, "
        f"TF intra-op {args.threads} / inter-op {args.inter_op}, torch.set_num_threads({args.threads}), "
        f"ORT intra-op {args.threads}, TFLite "
        f"num_threads={args.threads}, OpenVINO INFERENCE_NUM_THREADS={args.threads} with f32 precision.",
        "vs PyTorch: inference images/s over PyTorch eager channels_last's at the same size; training "
        "PyTorch s/step over this s/step (>1: faster than PyTorch), each at its fastest round: PyTorch's and "
        "mgn_tf's default rows are measured --repeats more times, in turn. "
        "PyTorch MGN: benchmarks/torch_mgn.py (same layers, parameter count and FLOPs as mgn_tf). "
        "Random weights and inputs; the timed call "
        "includes each runtime's host-side work from an NHWC float32 array. value: over all timed calls; "
        "median: of the median call (per-call times in the JSON: other processes on the machine show there).",
        f"Training: {args.train_warmup} warm-up steps, then at least {args.train_steps} steps and "
        f"{args.seconds} s; mgn_tf through engine.train's trainer construction and Keras fit, with "
        "TensorFlow's oneDNN kernels on (import mgn_tf's default on x86-64); 'oneDNN off' is TensorFlow's "
        "own default on CPUs without AVX-512 VNNI / AMX.",
        *record["notes"],
    ]
    return "\n\n".join(parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export_dir", type=Path, help="Artefacts to time (default: export one first).")
    parser.add_argument("--export_out", type=Path, default=Path("/tmp/mgn_bench_speed_export"),
                        help="Where to export when --export_dir is not given.")  # fmt: skip
    parser.add_argument("--calibration_images", help="Image folder for the exported static int8 variants.")
    parser.add_argument("--calibration_count", type=int, default=32, help="Calibration images.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--inter_op", type=int,
        help="Inter-op threads (TF, torch, ORT); default --threads, what TF and torch start on a machine "
        "of that many cores, so that mgn_tf is timed as evaluate, search and train run it.",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=8, help="Inference batch size.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Minimum timed seconds per measurement.")
    parser.add_argument("--sizes", nargs="+", default=["96x32", "384x128"], help="Input sizes HxW.")
    parser.add_argument("--pk", nargs="*", default=[f"{s}={pk}" for s, pk in DEFAULT_PK.items()],
                        help="Training P x K per size, SIZE=PxK (default 4x4).")  # fmt: skip
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_inference", action="store_true")
    parser.add_argument("--noxla", dest="xla", action="store_false", help="Skip the mgn_tf --xla variant.")
    parser.add_argument(
        "--noonednn_off", dest="onednn_off_row", action="store_false",
        help="Skip the training row with TensorFlow's oneDNN kernels off (its default on CPUs without "
        "AVX-512 VNNI / AMX, which import mgn_tf overrides).",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=2,
        help="Rounds that re-measure, in turn, per size: the run directory and the best float32 runtime; "
        "PyTorch's and mgn_tf's training step.",
    )  # fmt: skip
    parser.add_argument("--train_warmup", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=5, help="Minimum timed training steps.")
    parser.add_argument("--num_classes", type=int, default=751)
    parser.add_argument("--sgemm_n", type=int, default=4096)
    parser.add_argument("--child_timeout", type=float, default=3600)
    parser.add_argument("--name", default="bench_speed", help="Result file name under docs/results.")
    parser.add_argument(
        "--isa", default="native", help="Comma-separated instruction-set caps to measure under: native, avx2."
    )
    args = parser.parse_args(argv)
    import results  # the results folder's writer, beside this script

    args.isas = results.parse_isas(parser, args.isa)
    args.current_isa = "native"
    args.inter_op = args.threads if args.inter_op is None else args.inter_op
    args.sizes = [size_name(parse_size(s)) for s in args.sizes]
    args.pk = dict(item.split("=") for item in args.pk)
    return args


def export_for_benchmark(args, record: dict) -> Path:
    size = max(args.sizes, key=lambda s: parse_size(s)[0] * parse_size(s)[1])
    progress(f"exporting a {size} model to {args.export_out} (no --export_dir)")
    task = {
        "kind": "export", "size": size, "out_dir": str(args.export_out), "num_classes": args.num_classes,
        "calibration_images": args.calibration_images, "calibration_count": args.calibration_count,
    }  # fmt: skip
    result = run_child(task, args)
    record["export"] = result
    if "error" in result:
        record["notes"].append(f"The export at {size} failed, no artefact was timed: {result['error']}")
    else:
        parity = "all within their parity bounds" if result["ok"] else "NOT all within parity bounds"
        record["notes"].append(f"Artefacts exported by this run at {size} into {args.export_out} ({parity}).")
    return args.export_out


def bench_versions() -> dict:
    """Versions results.machine() does not list."""
    from importlib import metadata

    versions = {}
    for name in ("torch", "openvino", "nncf", "ai-edge-litert"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def main(argv: list[str]) -> None:
    import results

    args = parse_args(argv)
    if (
        not (args.skip_inference or args.export_dir)
        and args.export_out.exists()
        and any(args.export_out.iterdir())
    ):
        # Stale artefacts (another size, an older exporter) would be timed as this run's.
        sys.exit(f"{args.export_out} is not empty: time it with --export_dir {args.export_out} or remove it")
    record = {
        "versions": bench_versions(), "threads": args.threads, "inter_op": args.inter_op,
        "batch": args.batch, "sizes": args.sizes, "isa": {}, "notes": [],
        "child_env": {k: v for k, v in child_env(args.threads, args.inter_op).items() if "THREADS" in k},
    }  # fmt: skip
    # runtime auto's choice (the run directory rows) measured in this run, not read from ~/.cache/mgn_tf;
    # the children inherit it, the LiteRT conversion made for the first size serves its later rows.
    cache = tempfile.TemporaryDirectory(prefix="mgn_bench_speed_cache_")
    os.environ["MGN_TF_CACHE_DIR"] = cache.name
    export_dir = None
    if not args.skip_inference:
        export_dir = args.export_dir or export_for_benchmark(args, record)
    for isa in args.isas:
        args.current_isa = isa
        progress(f"--- {isa}")
        part = {"batch": args.batch, "inference": [], "training": [], "notes": []}
        measure_ceiling(args, part)
        if not args.skip_inference:
            measure_inference(args, part, export_dir)
            repeat_run_dir_and_best(args, part)
        if not args.skip_training:
            measure_training(args, part)
            repeat_training(args, part)
        add_ratios(part)
        part["run_dir_vs_best_fp32"] = run_dir_vs_best_fp32(part)
        part["int8_vs_onnxruntime_fp32"] = int8_vs_onnxruntime_fp32(part)
        record["isa"][isa] = part
    record["total_seconds"] = round(time.perf_counter() - START, 1)
    sections = []
    for isa, part in record["isa"].items():
        title = "as this CPU allows" if isa == "native" else "capped at AVX2 (mgn_tf.runtime.isa_environment)"
        notes_text = "\n\n".join(isa_notes(part))
        sections.append(f"### {isa}: {title}\n\n{table(part)}" + (f"\n\n{notes_text}" if notes_text else ""))
    text = "\n\n".join(sections)
    print(text)
    path = results.write(args.name, "Speed: mgn_tf and its artefacts against PyTorch and the fp32 ceiling",
        record, text, notes(record, args))  # fmt: skip
    progress(f"results: {path} ({record['total_seconds']:.0f} s)")
    cache.cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
    else:
        main(sys.argv[1:])
