"""Process environment TensorFlow reads when it is imported; set here before that happens.

oneDNN's CPU kernels are not bit-reproducible in the first training step of a process, even single-
threaded, so `--deterministic` needs them off, and TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` only on
import. The command line parses and checks every flag without importing TensorFlow, then calls
`set_environment` and only then imports the engine. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Lines TensorFlow writes to stderr while it loads and looks for GPUs, before its log level applies
# (TF_CPP_MIN_LOG_LEVEL does not hide them): none is a problem on a machine without a GPU.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation_placer.cc",
    "TF-TRT Warning",
)


# Instruction-set caps: "native" runs as the CPU allows; "avx2" makes XLA's code generator and oneDNN (the
# kernels of TensorFlow and OpenVINO) stop at AVX2, so an AVX-512 / AMX machine computes what an AVX2-only
# CPU does (tests/test_numerics.py checks that the cap reaches all three). Read when the libraries load:
# apply it to a new process's environment.
ISA_CAPS = ("native", "avx2")


def isa_environment(isa: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) for a child process running with `isa`."""
    env = dict(os.environ if environ is None else environ)
    if isa == "native":
        return env
    if isa != "avx2":
        raise ValueError(f"isa must be one of {', '.join(ISA_CAPS)}, got {isa!r}")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa=AVX2".strip()
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # oneDNN: TensorFlow's, OpenVINO's and PyTorch's
    # What the benchmarks compare against runs capped the same way: PyTorch's own kernels, MKL, and the
    # OpenBLAS of numpy's wheels (the sgemm ceiling).
    env.update(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", OPENBLAS_CORETYPE="Haswell")
    return env


def cpu_flags() -> set[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is none, e.g. macOS)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_class(flags: set[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """The class of this CPU that decides which runtime and precision are fastest: the best of AMX,
    AVX-512 VNNI, AVX-VNNI, AVX-512, AVX2 it has, or the machine name where /proc/cpuinfo says nothing
    (macOS, Windows). Under the AVX2 cap (`isa_environment`) it is the class the cap makes of it."""
    flags = cpu_flags() if flags is None else flags
    environ = os.environ if environ is None else environ
    if not flags:
        return platform.machine() or "unknown"
    if environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2" and "avx2" in flags:
        return "x86-64 AVX2 (capped)"
    for flag, name in (("amx_int8", "AMX"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                       ("avx512f", "AVX-512"), ("avx2", "AVX2")):  # fmt: skip
        if flag in flags:
            return f"x86-64 {name}"
    return platform.machine() or "unknown"


def onednn_off() -> bool:
    """Whether TensorFlow (imported or still to be imported) runs with oneDNN kernels off."""
    return os.environ.get(ONEDNN_ENV) == "0"


X86 = platform.machine().lower() in ("x86_64", "amd64")


def default_onednn_on() -> None:
    """Turns TensorFlow's oneDNN kernels on for x86-64 CPUs unless the user chose (`TF_ENABLE_ONEDNN_OPTS`).

    TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI / BF16, AVX-VNNI or AMX; on the rest
    (AVX2-only servers and laptops) it runs Eigen's kernels, which take 2-3x oneDNN's time for MGN's
    training step (docs/results/bench_speed.md, AVX2 table). `import mgn_tf` calls this: it takes effect
    when TensorFlow is imported after mgn_tf. `--deterministic` still turns them off (`set_environment`).
    """
    if X86 and "tensorflow" not in sys.modules:
        os.environ.setdefault(ONEDNN_ENV, "1")


def onednn_active() -> bool | None:
    """Whether the imported TensorFlow runs oneDNN kernels (None: TensorFlow not imported or cannot say)."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own answer, private API
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def set_environment(deterministic: bool) -> None:
    """With `deterministic`, turns oneDNN kernels off for the TensorFlow this process will import.

    Says so on stdout. If TensorFlow is already imported it is too late: the engine warns then.
    """
    if deterministic and not onednn_off() and "tensorflow" not in sys.modules:
        os.environ[ONEDNN_ENV] = "0"
        print(f"--deterministic: {ONEDNN_ENV}=0 (oneDNN kernels off)", flush=True)


@contextlib.contextmanager
def _stderr_without(noise: tuple[str, ...]):
    """Captures file descriptor 2 (C++ logging writes there directly) and passes on every line that
    contains none of `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not any(n in line for n in noise)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow(show_startup_log: bool = False):
    """Imports TensorFlow and Keras and lists the GPUs (where CUDA's probe prints), with the start-up lines
    of `STARTUP_NOISE` filtered from stderr unless `show_startup_log` (the tools' --tf_startup_log).
    Every other line, warnings and errors included, is passed on. Returns the tensorflow module."""
    if show_startup_log or "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    with _stderr_without(STARTUP_NOISE):
        import keras  # noqa: F401  (its import loads TensorFlow's backend a second time)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    return tf
