"""The run-directory and artefact contract: which files a path into a run resolves to (no TensorFlow:
folders laid out by hand, the weights files are never opened here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mgn_tf import artifacts


def make_run(root: Path, final: bool = True, steps: tuple[int, ...] = (4, 8)) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"num_classes": 5, "input_height": 192, "input_width": 64}))
    if final:
        (run / "final.weights.h5").write_bytes(b"h5")
    for step in steps:
        folder = run / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "trainer.weights.h5").write_bytes(b"h5")
        (folder / "state.json").write_text(json.dumps({"step": step}))
    (run / "checkpoints" / ".tmp_step_00000009_7").mkdir()  # half-written: never a checkpoint
    return run


def test_every_path_into_a_run_resolves_to_its_weights_and_config(tmp_path):
    run = make_run(tmp_path)
    checkpoint = run / "checkpoints" / "step_00000008"
    cases = {
        run: (run / "final.weights.h5", False),
        run / "final.weights.h5": (run / "final.weights.h5", False),
        checkpoint: (checkpoint / "trainer.weights.h5", True),
        checkpoint / "trainer.weights.h5": (checkpoint / "trainer.weights.h5", True),
    }
    for path, (weights, trainer_checkpoint) in cases.items():
        found = artifacts.find_run_files(path)
        assert (found.weights, found.trainer_checkpoint) == (weights, trainer_checkpoint), path
        assert found.config_path == run / "config.json" and found.run_dir == run
        assert (found.input_size, found.num_classes) == ((192, 64), 5)
        assert artifacts.detect_format(path) == "keras"
    assert [p.name for p in artifacts.published_checkpoints(run / "checkpoints")] == [
        "step_00000004",
        "step_00000008",
    ]


def test_a_run_without_final_weights_points_to_its_latest_checkpoint(tmp_path):
    run = make_run(tmp_path, final=False)
    with pytest.raises(FileNotFoundError, match="no final.weights.h5.*checkpoints/step_00000008"):
        artifacts.find_run_files(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        artifacts.find_run_files(empty)


def test_config_is_looked_up_at_most_two_folders_above_the_weights(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "best.weights.h5").write_bytes(b"h5")
    (tmp_path / "config.json").write_text(
        json.dumps({"num_classes": 2, "input_height": 96, "input_width": 32})
    )
    with pytest.raises(FileNotFoundError, match="no config.json"):
        artifacts.find_run_files(deep / "best.weights.h5")
    (tmp_path / "a" / "config.json").write_text((tmp_path / "config.json").read_text())
    assert artifacts.find_run_files(deep / "best.weights.h5").run_dir == tmp_path / "a"
    (tmp_path / "a" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        artifacts.find_run_files(deep / "best.weights.h5")


def test_export_info_lives_beside_or_inside_the_artefact(tmp_path):
    tflite = tmp_path / "mgn_fp16.tflite"
    assert artifacts.export_info_path(tflite) == tmp_path / "mgn_fp16.tflite.json"
    saved = tmp_path / "mgn" / "1"
    saved.mkdir(parents=True)
    assert artifacts.export_info_path(saved) == saved / "assets.extra" / "mgn_export.json"
    assert artifacts.read_export_info(saved) == {}
    artifacts.export_info_path(tflite).write_text(json.dumps({"flip_norm": True}))
    assert artifacts.read_export_info(tflite) == {"flip_norm": True}
