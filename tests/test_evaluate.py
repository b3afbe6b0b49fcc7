"""`python -m mgn_tf.evaluate` end to end (subprocesses), and multi-query pooling on a generated layout.

The model is a freshly initialised MGN at the smallest valid input (96x32); numbers in results.json are
checked against a brute-force ranking of the features the tool saved, and re-ranking against the dense
`re_ranking` on numpy distance matrices.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.protocol import brute_force_metrics
from PIL import Image

from mgn_tf.data.datasets import load_dataset
from mgn_tf.evaluation.metrics import evaluate_ranking
from mgn_tf.evaluation.multi_query import multi_query_groups, multi_query_subset, pool_multi_query
from mgn_tf.evaluation.ranking import item_arrays, metrics_summary
from mgn_tf.evaluation.rerank import re_ranking

REPO = Path(__file__).resolve().parents[1]
RESULT_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP", "mAP_official")


def run_evaluate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mgn_tf.evaluate", "--noprogress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def distances(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64, by broadcasting (no |a|^2 + |b|^2 - 2ab)."""
    return np.sqrt(((qf[:, None, :].astype(np.float64) - gf[None, :, :]) ** 2).sum(-1))


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(dist, q_pids, g_pids, q_cams, g_cams) -> dict:
    """rank-1/5/10 and mAP of the brute-force protocol (tests/helpers/protocol.py)."""
    result = brute_force_metrics(dist, q_pids, g_pids, q_cams, g_cams)
    ranks = {f"rank{k}": float(result["cmc"][k - 1]) for k in (1, 5, 10) if k <= len(g_pids)}
    return {**ranks, "mAP": result["mAP"]}


def dense_rerank_metrics(qf, gf, q_pids, g_pids, q_cams, g_cams) -> dict:
    qg, qq, gg = distances(qf, gf), distances(qf, qf), distances(gf, gf)
    result = evaluate_ranking(
        re_ranking(qg, qq, gg, k1=20, k2=6, lambda_value=0.3), q_pids, g_pids, q_cams, g_cams
    )
    return metrics_summary(result)


# ----------------------------------------------------------------------------------- mini Market-1501


CHECKPOINT = Path("checkpoints") / "step_00000007"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as training writes it: config.json, final.weights.h5 and a resume checkpoint of
    the same fresh weights."""
    import keras

    from mgn_tf.model import build_mgn
    from mgn_tf.trainer import MGNTrainer

    keras.utils.set_random_seed(0)
    run = tmp_path_factory.mktemp("run")
    model = build_mgn(num_classes=16, input_size=(96, 32))
    model.save_weights(run / "final.weights.h5")
    (run / CHECKPOINT).mkdir(parents=True)
    MGNTrainer(model).save_weights(run / CHECKPOINT / "trainer.weights.h5")
    (run / CHECKPOINT / "state.json").write_text(json.dumps({"step": 7}))
    (run / "config.json").write_text(json.dumps({"num_classes": 16, "input_height": 96, "input_width": 32}))
    return run


@pytest.fixture(scope="module")
def market_flags(mini_market_dir, run_dir) -> list[str]:
    return ["--dataset=market1501", f"--data_dir={mini_market_dir}", f"--run_dir={run_dir}"]


@pytest.fixture(scope="module")
def evaluated(market_flags, run_dir, tmp_path_factory):
    """One full run: model -> features (saved) -> results without / with re-ranking -> JSON and figures."""
    features = tmp_path_factory.mktemp("features") / "mini.npz"
    done = run_evaluate(*market_flags, f"--save_features={features}")  # the input size comes from the run
    return done, run_dir / "eval", features


def test_cli_writes_results_and_figures(evaluated):
    done, out, _ = evaluated
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"settings", "dataset", "results", "chance", "timings", "files"}
    assert results["dataset"]["num_query"] == 32 and results["dataset"]["num_gallery"] == 32
    assert results["dataset"]["num_valid_queries"] == 30
    assert results["settings"]["flip"] is True and results["settings"]["input_size"] == [96, 32]
    assert set(results["results"]) == {"without_rerank", "with_rerank"}
    for ranking in results["results"].values():
        for key in RESULT_KEYS:
            assert 0.0 <= ranking[key] <= 1.0, key
        assert len(ranking["cmc"]) == 32 and ranking["cmc"][-1] == 1.0
    assert 0.0 < results["chance"]["rank1"] < 1.0
    assert "mAP(MATLAB)" in done.stdout and "with re-ranking (k1=20, k2=6, λ=0.3)" in done.stdout
    for name, min_size in (
        ("cmc.png", (500, 300)),
        ("ranked_list.png", (800, 1000)),
        ("ranked_list_rerank.png", (800, 1000)),
    ):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= min_size[0] and image.height >= min_size[1], name
            assert np.asarray(image.convert("L")).std() > 10, f"{name} looks blank"


def test_cli_numbers_match_brute_force_on_the_saved_features(evaluated):
    done, out, features = evaluated
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["results"]
    with np.load(features) as data:  # read the file directly, not through evaluation.load_features
        qf, gf = data["query_features"], data["gallery_features"]
        q_pids, q_cams = data["query_pids"], data["query_camids"]
        g_pids, g_cams = data["gallery_pids"], data["gallery_camids"]
        assert len(data["query_paths"]) == 32 and str(data["query_paths"][0]).endswith(".jpg")
    assert qf.shape == (32, 2048) and gf.shape == (32, 2048)
    qn, gn = normalized(qf), normalized(gf)
    expected = brute_force(distances(qn, gn), q_pids, g_pids, q_cams, g_cams)
    for key, value in expected.items():
        assert results["without_rerank"][key] == pytest.approx(value, abs=1e-6), key
    reranked = dense_rerank_metrics(qn, gn, q_pids, g_pids, q_cams, g_cams)
    for key in RESULT_KEYS:
        assert results["with_rerank"][key] == pytest.approx(reranked[key], abs=1e-6), key


def test_cli_load_features_reproduces_the_numbers_without_a_model(evaluated, market_flags, tmp_path):
    done, out, features = evaluated
    assert done.returncode == 0, done.stderr[-3000:]
    again = run_evaluate(  # the training flagfile works; its training-only flags are ignored
        f"--flagfile={REPO / 'configs' / 'market1501.flags'}",
        *market_flags,
        "--weights=/nonexistent/model",
        f"--load_features={features}",
        f"--out_dir={tmp_path}",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    first = json.loads((out / "results.json").read_text())
    second = json.loads((tmp_path / "results.json").read_text())
    assert second["results"] == first["results"] and second["chance"] == first["chance"]
    assert second["timings"]["load_model_seconds"] is None and "Loaded" not in again.stdout
    assert second["settings"]["load_features"] == str(features)


def test_cli_refuses_an_out_dir_another_process_writes(evaluated, market_flags, tmp_path):
    """One evaluation writes a folder: a second one exits 2 at once, naming the holder's pid."""
    from helpers.locking import refused_while_held

    _, _, features = evaluated
    pid, error = refused_while_held(
        tmp_path, lambda: run_evaluate(*market_flags, f"--load_features={features}", f"--out_dir={tmp_path}")
    )
    assert f"--out_dir={tmp_path} is in use by pid {pid} on " in error
    assert not (tmp_path / "results.json").exists()


def test_cli_evaluates_a_checkpoint_of_the_run(evaluated, market_flags, run_dir, tmp_path):
    """--weights=<run>/checkpoints/step_N: config.json two folders up; the same weights, the same numbers."""
    done, out, _ = evaluated
    assert done.returncode == 0, done.stderr[-3000:]
    again = run_evaluate(
        *market_flags, f"--weights={run_dir / CHECKPOINT}", f"--out_dir={tmp_path}", "--norerank",
        "--num_ranked_queries=0",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    first = json.loads((out / "results.json").read_text())
    second = json.loads((tmp_path / "results.json").read_text())
    assert second["settings"]["weights"] == str(run_dir / CHECKPOINT)
    assert second["results"]["without_rerank"] == first["results"]["without_rerank"]


def test_cli_ranked_response_maps_overlay_the_ranked_lists(market_flags, tmp_path):
    """--ranked_response_maps: the same ranked list, its thumbnails tinted by the Global response maps."""
    common = [*market_flags, "--norerank", "--num_ranked_queries=2"]
    plain = run_evaluate(*common, f"--out_dir={tmp_path / 'plain'}")
    heat = run_evaluate(*common, "--ranked_response_maps", f"--out_dir={tmp_path / 'heat'}")
    assert plain.returncode == 0 and heat.returncode == 0, heat.stderr[-3000:]
    first = json.loads((tmp_path / "plain" / "results.json").read_text())
    second = json.loads((tmp_path / "heat" / "results.json").read_text())
    assert first["settings"]["ranked_response_maps"] is False and second["settings"]["ranked_response_maps"]
    assert second["results"] == first["results"]
    with (
        Image.open(tmp_path / "plain" / "ranked_list.png") as a,
        Image.open(tmp_path / "heat" / "ranked_list.png") as b,
    ):
        plain_pixels, heat_pixels = np.asarray(a.convert("RGB"), float), np.asarray(b.convert("RGB"), float)
    # the title gains a line about the heat maps; the rows below it are laid out from the bottom up
    rows = min(len(plain_pixels), len(heat_pixels)) - 60
    assert plain_pixels.shape[1] == heat_pixels.shape[1]
    changed = np.abs(plain_pixels[-rows:] - heat_pixels[-rows:]).max(axis=-1) > 8
    assert 0.05 < changed.mean() < 0.9  # the thumbnails, not the labels and margins


@pytest.mark.parametrize(
    "args, flag, words",
    [
        (["--weights=/nonexistent/run"], "--weights", "does not exist"),
        (["--input_height=100", "--input_width=32"], "--input_height", "multiple of 96"),
        (["--eval_batch_size=0"], "--eval_batch_size", ">= 1"),
        (["--flagfile=/nonexistent/x.flags"], "x.flags", ""),
        (["--multi_query=median"], "--multi_query", "avg"),
        (["--multi_query=avg"], "--multi_query", "gt_bbox"),
        (["--k1=0"], "--k1", ""),
        (["--dataset=market1501,dukemtmc"], "--dataset", "one dataset at a time"),
        (["--runtime=fastest"], "--runtime", "openvino"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_flag(market_flags, tmp_path, args, flag, words):
    done = run_evaluate(*market_flags, f"--out_dir={tmp_path / 'out'}", *args, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert flag in done.stderr and words in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_cli_openvino_runtime_extracts_the_same_features_and_says_so(evaluated, market_flags, tmp_path):
    """--runtime=openvino converts the run's model and runs it in float32: the features of the default
    (TensorFlow on this small split) within float32 rounding, the same ranking, the engine recorded."""
    done, out, features = evaluated
    assert done.returncode == 0, done.stderr[-3000:]
    again = run_evaluate(
        *market_flags, "--runtime=openvino", f"--out_dir={tmp_path}", f"--save_features={tmp_path / 'f.npz'}",
        "--norerank", "--num_ranked_queries=0",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    first = json.loads((out / "results.json").read_text())
    second = json.loads((tmp_path / "results.json").read_text())
    assert (first["settings"]["engine"], second["settings"]["engine"]) == ("tensorflow", "openvino")
    with np.load(features) as a, np.load(tmp_path / "f.npz") as b:
        for key in ("query_features", "gallery_features"):
            scale = np.abs(a[key]).max()
            assert np.abs(a[key] - b[key]).max() <= 1e-4 * scale, key
    for key in ("rank1", "rank5", "mAP"):
        assert second["results"]["without_rerank"][key] == pytest.approx(
            first["results"]["without_rerank"][key], abs=1e-6
        ), key


def test_cli_openvino_runtime_refuses_a_format_it_cannot_run(market_flags, tmp_path):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not read: the runtime is checked first")
    done = run_evaluate(*market_flags, f"--weights={model}", "--runtime=openvino", timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "--runtime=openvino: OpenVINO runs run directories" in done.stderr and "tflite" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_unreadable_gallery_image_exits_4_naming_it(mini_market_dir, run_dir, tmp_path):
    data = tmp_path / "market"
    shutil.copytree(mini_market_dir, data)
    broken = sorted((data / "bounding_box_test").glob("*.jpg"))[3]
    broken.write_bytes(broken.read_bytes()[:100])  # truncated after the evaluation listed it
    done = run_evaluate("--dataset=market1501", f"--data_dir={data}", f"--run_dir={run_dir}",
                        f"--out_dir={tmp_path / 'out'}", timeout=300)  # fmt: skip
    assert done.returncode == 4, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and broken.name in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "results.json").exists()
    assert not (tmp_path / "out" / "results.json").exists()


# ------------------------------------------------------------------- multi-query on a generated layout


def _jpeg(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


QUERY = ["0002_c1s1_000100_01", "0002_c2s1_000200_01", "0003_c1s1_000300_01", "0004_c3s1_000400_01"]
GALLERY = [
    "0002_c1s1_001000_01",  # junk for query 0 (same pid and camera)
    "0002_c3s1_001100_01",
    "0003_c2s1_001200_01",
    "0003_c1s1_001300_01",  # junk for query 2
    "0004_c1s1_001400_01",
    "0000_c2s1_001500_01",  # distractor
    "-1_c1s1_001600_01",  # junk (pid -1)
    "0005_c4s1_001700_01",
] + [f"0000_c{1 + i % 6}s1_002{i:03d}_01" for i in range(24)]  # distractors: mAP reacts to every pooled image
GT_BBOX = [
    "0002_c1s1_000100_01",  # the file of query 0 itself: pooled once, from the query
    "0002_c1s1_000110_01",
    "0002_c1s1_000120_01",
    "0002_c2s1_000210_01",
    "0002_c3s1_000310_01",  # pid 2 but camera 3: pooled with no query
    "0004_c3s1_000410_01",
    "0004_c3s1_000420_01",
    "0005_c1s1_000510_01",
    "0001_c1s1_000610_01",
]
# by hand: the gt_bbox images pooled with each query (same pid and camera, not the query's own file)
EXPECTED_GROUPS = [
    ["0002_c1s1_000110_01", "0002_c1s1_000120_01"],
    ["0002_c2s1_000210_01"],
    [],
    ["0004_c3s1_000410_01", "0004_c3s1_000420_01"],
]


@pytest.fixture(scope="module")
def generated_market(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("market_mq") / "Market-1501-v15.09.15"
    names = {"bounding_box_train": ["0001_c1s1_000001_01", "0001_c2s1_000002_01"], "query": QUERY}
    names.update({"bounding_box_test": GALLERY, "gt_bbox": GT_BBOX})
    for seed, (folder, files) in enumerate((f, n) for f, ns in names.items() for n in ns):
        _jpeg(root / folder / f"{files}.jpg", seed)
    return root.parent  # the reader finds the single dataset folder inside


def test_multi_query_groups_on_a_generated_market_layout(generated_market):
    split = load_dataset("market1501", generated_market)
    assert split.multi_query is not None and len(split.multi_query) == len(GT_BBOX)
    groups = multi_query_groups(split.query, split.multi_query)
    names = [[Path(split.multi_query[j][0]).stem for j in g] for g in groups]
    assert names == EXPECTED_GROUPS
    subset = multi_query_subset(split.query, split.multi_query)
    assert sorted(Path(p).stem for p, _, _ in subset) == sorted(sum(EXPECTED_GROUPS, []))


def test_pool_multi_query_by_hand():
    qf = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 3.0, 3.0]], np.float32)
    mqf = np.array([[3.0, 2.0, 0.0], [-1.0, 4.0, 1.0], [5.0, 0.0, 0.0]], np.float32)
    groups = [np.array([0, 1]), np.array([2]), np.array([], np.int64)]
    avg = pool_multi_query(qf, mqf, groups, "avg")
    np.testing.assert_allclose(avg, [[1.0, 2.0, 1.0], [2.5, 0.5, 0.0], [3.0, 3.0, 3.0]])
    biggest = pool_multi_query(qf, mqf, groups, "max")
    np.testing.assert_array_equal(biggest, [[3.0, 4.0, 2.0], [5.0, 1.0, 0.0], [3.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match="avg"):
        pool_multi_query(qf, mqf, groups, "median")


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_cli_multi_query_from_a_feature_file(generated_market, tmp_path, mode):
    """The CLI pools L2-normalised per-image features; compare with pooling and ranking by hand."""
    split = load_dataset("market1501", generated_market)
    rng = np.random.default_rng(3)
    dim = 6
    subsets = {"query": split.query, "gallery": split.gallery, "multi_query": split.multi_query}
    feats = {name: rng.normal(size=(len(items), dim)).astype(np.float32) for name, items in subsets.items()}
    arrays = {"settings": np.array(json.dumps({"dataset": "market1501", "flip": True}))}
    for name, items in subsets.items():
        arrays[f"{name}_features"] = feats[name]
        arrays[f"{name}_paths"] = np.array([p for p, _, _ in items])
        arrays[f"{name}_pids"] = np.array([pid for _, pid, _ in items])
        arrays[f"{name}_camids"] = np.array([cam for _, _, cam in items])
    np.savez(tmp_path / "features.npz", **arrays)

    done = run_evaluate(
        "--dataset=market1501",
        f"--data_dir={generated_market}",
        f"--load_features={tmp_path / 'features.npz'}",
        f"--out_dir={tmp_path / 'out'}",
        f"--multi_query={mode}",
        "--norerank",
        "--num_ranked_queries=4",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())

    stems = [Path(p).stem for p, _, _ in split.multi_query]
    qn, mqn = normalized(feats["query"]), normalized(feats["multi_query"])
    pool = np.mean if mode == "avg" else np.max
    pooled = np.stack(
        [
            pool(np.stack([qn[i]] + [mqn[stems.index(s)] for s in group]), axis=0)
            for i, group in enumerate(EXPECTED_GROUPS)
        ]
    )
    _, qp, qc = item_arrays(split.query)
    _, gp, gc = item_arrays(split.gallery)
    expected = brute_force(distances(normalized(pooled), normalized(feats["gallery"])), qp, gp, qc, gc)
    for key, value in expected.items():
        assert results["results"]["without_rerank"][key] == pytest.approx(value, abs=1e-6), key
    assert results["settings"]["multi_query"] == mode and results["dataset"]["num_multi_query_images"] == 9
    assert "with_rerank" not in results["results"]
    assert (tmp_path / "out" / "ranked_list.png").is_file()
