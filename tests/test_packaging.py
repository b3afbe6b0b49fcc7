"""The package as users get it: what the wheel installs, console scripts, --help of every command, no
import cycle, and which modules load without TensorFlow."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mgn_tf"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
SCRIPTS = (
    "mgn-train", "mgn-evaluate", "mgn-search", "mgn-visualize", "mgn-export", "mgn-rest-client",
    "mgn-grpc-client",
)  # fmt: skip
# Modules that must load without TensorFlow: flag parsing (so --deterministic can set TensorFlow's
# environment first), the artefact contract, the numpy evaluation core and the REST client.
WITHOUT_TENSORFLOW = (
    "mgn_tf.artifacts",
    "mgn_tf.cli",
    "mgn_tf.config",
    "mgn_tf.errors",
    "mgn_tf.evaluate",
    "mgn_tf.evaluation.metrics",
    "mgn_tf.evaluation.pipeline",
    "mgn_tf.evaluation.rerank",
    "mgn_tf.evaluation.settings",
    "mgn_tf.evaluation.verification",
    "mgn_tf.export.cli",
    "mgn_tf.files",
    "mgn_tf.gallery",
    "mgn_tf.gallery.html",
    "mgn_tf.search",
    "mgn_tf.flags",
    "mgn_tf.geometry",
    "mgn_tf.runtime",
    "mgn_tf.serving.rest_client",
    "mgn_tf.train",
    "mgn_tf.visualize",
)


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


class LoadTimeImports(ast.NodeVisitor):
    """The mgn_tf imports that run when a module is loaded: not those inside functions (they run when
    called) nor those under `if TYPE_CHECKING:`."""

    def __init__(self, known: set[str]):
        self.known, self.found = known, set()

    def visit_FunctionDef(self, node):  # noqa: N802 - ast.NodeVisitor's naming
        pass

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_If(self, node):  # noqa: N802
        if "TYPE_CHECKING" not in ast.unparse(node.test):
            self.generic_visit(node)

    def visit_Import(self, node):  # noqa: N802
        self.found |= {a.name for a in node.names if a.name.startswith("mgn_tf.") or a.name == "mgn_tf"}

    def visit_ImportFrom(self, node):  # noqa: N802
        if node.level == 0 and node.module and node.module.split(".")[0] == "mgn_tf":
            self.found.add(node.module)
            self.found |= {f"{node.module}.{a.name}" for a in node.names} & self.known


def top_level_imports(module: str) -> set[str]:
    """The mgn_tf modules loading `module` loads first (importing a.b.c loads the packages a and a.b)."""
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    known = set(module_names())
    visitor = LoadTimeImports(known)
    visitor.visit(ast.parse(path.read_text()))
    # The packages above `module` are initialised before it anyway; an import of a sibling only adds an
    # edge to a package above it when that package is named itself (`from mgn_tf.x import name`).
    own = module.split(".")
    ancestors = {".".join(own[:i]) for i in range(1, len(own))}
    edges = set()
    for name in visitor.found & known:
        parts = name.split(".")
        edges |= {".".join(parts[:i]) for i in range(1, len(parts))} - ancestors
        edges.add(name)
    return (edges & known) - {module}


def test_no_import_cycle_between_modules():
    graph = {m: top_level_imports(m) for m in module_names()}
    assert "mgn_tf.evaluation.ranking" in graph["mgn_tf.evaluation.pipeline"]  # the walk sees imports
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dependency in sorted(graph[module]):
            if state.get(dependency) == 1:
                cycle = path[path.index(dependency) :] + [dependency]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dependency not in state:
                visit(dependency, [*path, dependency])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", WITHOUT_TENSORFLOW)
def test_module_imports_on_its_own_without_tensorflow(module):
    code = f"import sys, {module}; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"


@pytest.mark.parametrize(
    "command, listed, not_listed",
    [
        (["-m", "mgn_tf.train"], ["--p:", "--deterministic", "--dataset", "--eval_flip", "--k1"], []),
        (
            ["-m", "mgn_tf.evaluate"],
            ["--weights", "--load_features", "--multi_query", "--input_height", "--dataset"],
            ["--lr_decay_epochs"],  # accepted (a training flagfile parses) but not this tool's
        ),
        (["-m", "export"], ["--weights", "--formats", "--bake_flip_norm", "--input_height"], ["--dataset"]),
        (["-m", "mgn_tf.serving.rest_client"], ["--server", "--gallery", "--top_k"], []),
        (["-m", "mgn_tf.search"], ["--index", "--images", "--add", "--backend", "--fpr"], ["--dataset"]),
        (["-m", "mgn_tf.visualize"], ["--weights", "--images", "--out", "--input_height"], ["--dataset"]),
    ],
    ids=["train", "evaluate", "export", "rest_client", "search", "visualize"],
)
def test_help_lists_the_commands_own_flags(command, listed, not_listed):
    done = subprocess.run(
        [sys.executable, *command, "--help"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]

    def shown(flag: str) -> bool:  # absl prints booleans as --[no]name
        return re.search(rf"--(\[no\])?{flag.removeprefix('--').rstrip(':')}:", done.stdout) is not None

    for flag in listed:
        assert shown(flag), f"{flag} missing from {' '.join(command)} --help"
    for flag in not_listed:
        assert not shown(flag), f"{flag} listed by {' '.join(command)} --help"


def test_console_scripts_are_installed_beside_python():
    """`pip install .` (or -e) puts the commands next to the interpreter; they run without the repo."""
    bin_dir = Path(sys.executable).parent
    for script in SCRIPTS:
        assert (bin_dir / script).is_file(), f"{script} not installed: pip install -e . again"
    done = subprocess.run(
        [str(bin_dir / "mgn-evaluate"), "--help"],
        cwd="/",
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--load_features" in done.stdout, done.stderr[-2000:]


@pytest.mark.own_worker_unit(minutes=1)
def test_wheel_installs_only_the_mgn_tf_package(tmp_path):
    """The wheel holds mgn_tf alone: no top-level `export` package, the repository's tool folder."""
    source = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    for name in ("mgn_tf", "export", "tests"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("mgn_tf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mgn_tf"}
    assert "mgn_tf/export/cli.py" in names and "mgn_tf/serving/rest_client.py" in names
    assert not any(name.startswith("mgn_tf/tests") or "perturb" in name for name in names)
    for script in SCRIPTS:
        assert f"{script} = " in scripts

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = (
        "import importlib.util as u; print(u.find_spec('export') is None, u.find_spec('mgn_tf') is not None)"
    )
    done = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]
    for script in SCRIPTS:
        assert (target / "bin" / script).is_file(), script
