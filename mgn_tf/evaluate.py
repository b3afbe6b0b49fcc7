"""Evaluate a trained MGN:  python -m mgn_tf.evaluate --flagfile configs/market1501.flags [--flag=value ...]

Flags -> dataset -> features (model via `mgn_tf.inference.load`, or --load_features) -> [multi-query
pooling] -> ranking metrics without / with k-reciprocal re-ranking -> table, results.json, cmc.png,
ranked_list.png. Every training flag is accepted (one flagfile serves both); the training-only ones are
ignored. Exit codes: 0 ok, 2 bad flags / inputs, 4 unreadable images.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from mgn_tf import evaluation  # noqa: E402
from mgn_tf.data.datasets import DatasetLayoutError, Split, load_dataset  # noqa: E402
from mgn_tf.flags import dataset_options_from_flags, define_train_flags  # noqa: E402
from mgn_tf.images import ImageReadError  # noqa: E402
from mgn_tf.plots import RankedQuery, plot_cmc, plot_ranked_lists  # noqa: E402

F = flags.FLAGS


class FlagError(ValueError):
    """A bad flag value or input; the message starts with the flag to fix."""


def define_flags() -> None:
    """The training flags plus the evaluation ones."""
    define_train_flags()
    flags.DEFINE_string(
        "weights",
        None,
        "Model to evaluate: a run directory, a *.weights.h5 file (config.json beside it or in its parent), "
        "a SavedModel directory, a .tflite or an .onnx file. Default: --run_dir.",
    )
    flags.DEFINE_string(
        "out_dir", None, "Output folder for results.json and the figures (default <run_dir>/eval)."
    )
    flags.DEFINE_integer(
        "batch_size", None, "Images per inference batch (default: --eval_batch_size).", lower_bound=1
    )
    flags.DEFINE_bool(
        "eval_flip",
        True,
        "Average each image's features with those of its mirror image (paper §4.1). Named eval_flip because "
        "--flip is the training augmentation flag.",
    )
    flags.DEFINE_enum("distance", "euclidean", ["euclidean", "cosine"], "Query-gallery distance.")
    flags.DEFINE_bool("normalize", True, "L2-normalise features before the distance (false: raw features).")
    flags.DEFINE_bool("rerank", True, "Also report results with k-reciprocal re-ranking (Zhong et al. 2017).")
    flags.DEFINE_integer("k1", 20, "Re-ranking k1 (k-reciprocal neighbourhood size).", lower_bound=1)
    flags.DEFINE_integer("k2", 6, "Re-ranking k2 (local query expansion size).", lower_bound=1)
    flags.DEFINE_float(
        "lambda_value", 0.3, "Re-ranking weight of the original distance.", lower_bound=0.0, upper_bound=1.0
    )
    flags.DEFINE_enum(
        "multi_query",
        "none",
        list(evaluation.POOLING),
        "Market-1501 multi-query: pool (avg / max) each query's feature with those of the gt_bbox images of "
        "the same identity and camera.",
    )
    flags.DEFINE_string("save_features", None, "Write the extracted features to this .npz file.")
    flags.DEFINE_string(
        "load_features", None, "Evaluate features from a --save_features file instead of running a model."
    )
    flags.DEFINE_integer("max_rank", 50, "Longest rank of the CMC curve.", lower_bound=1)
    flags.DEFINE_integer(
        "num_ranked_queries", 8, "Queries shown in ranked_list.png (0: no figure).", lower_bound=0
    )
    flags.DEFINE_integer("chunk_size", 256, "Query rows per distance / re-ranking chunk.", lower_bound=1)
    flags.DEFINE_bool("progress", True, "Show progress bars.")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What the flags ask for, checked; nothing below the entry point reads flags."""

    dataset: str
    data_dir: str
    dataset_options: dict
    weights: str
    out_dir: Path
    batch_size: int
    flip: bool
    distance: str
    normalize: bool
    rerank: bool
    k1: int
    k2: int
    lambda_value: float
    multi_query: str
    save_features: str | None
    load_features: str | None
    max_rank: int
    num_ranked_queries: int
    chunk_size: int
    input_size: tuple[int, int] | None
    progress: bool
    explicit: frozenset[str]  # flags given on the command line or in a flagfile


def settings_from_flags() -> EvalSettings:
    """EvalSettings from the parsed flags; raises FlagError naming the flag for bad paths."""
    weights = F.weights or F.run_dir
    if F.save_features and F.load_features:
        raise FlagError("--save_features and --load_features: pass at most one of them")
    if F.load_features:
        if not Path(F.load_features).is_file():
            raise FlagError(f"--load_features={F.load_features}: no such file")
    elif not Path(weights).exists():
        which = f"--weights={weights}" if F.weights else f"--weights (default --run_dir={weights})"
        raise FlagError(
            f"{which}: does not exist (a run directory, *.weights.h5, SavedModel, .tflite or .onnx)"
        )
    sized = F["input_height"].present or F["input_width"].present
    explicit = frozenset(name for name in F if F[name].present)
    return EvalSettings(
        dataset=F.dataset,
        data_dir=F.data_dir,
        dataset_options=dataset_options_from_flags(),
        weights=weights,
        out_dir=Path(F.out_dir or Path(F.run_dir) / "eval"),
        batch_size=F.batch_size or F.eval_batch_size,
        flip=F.eval_flip,
        distance=F.distance,
        normalize=F.normalize,
        rerank=F.rerank,
        k1=F.k1,
        k2=F.k2,
        lambda_value=F.lambda_value,
        multi_query=F.multi_query,
        save_features=F.save_features,
        load_features=F.load_features,
        max_rank=F.max_rank,
        num_ranked_queries=F.num_ranked_queries,
        chunk_size=F.chunk_size,
        input_size=(F.input_height, F.input_width) if sized else None,
        progress=F.progress,
        explicit=explicit,
    )


# -------------------------------------------------------------------------------------------- features


def features_from_file(s: EvalSettings) -> evaluation.FeatureSet:
    """The stored FeatureSet; its lists are used as stored (the dataset is not read again)."""
    try:
        stored = evaluation.load_features(s.load_features)
    except ValueError as exc:
        raise FlagError(f"--load_features={s.load_features}: {exc}") from exc
    info = stored.settings
    if "dataset" in s.explicit and info.get("dataset") != s.dataset:
        raise FlagError(
            f"--load_features={s.load_features}: features of dataset {info.get('dataset')!r}, but "
            f"--dataset={s.dataset}"
        )
    if "eval_flip" in s.explicit and bool(info.get("flip")) != s.flip:
        raise FlagError(
            f"--eval_flip={s.flip}: the features in {s.load_features} were extracted with "
            f"flip={info.get('flip')}; extract them again to change it"
        )
    if s.multi_query != "none" and stored.multi_query is None:
        raise FlagError(
            f"--multi_query={s.multi_query}: {s.load_features} holds no multi-query features; save them "
            f"with --multi_query=avg (or max) and --save_features"
        )
    return stored


def features_from_model(s: EvalSettings, split: Split) -> evaluation.FeatureSet:
    """Loads the model and extracts the split's features (and the gt_bbox ones for multi-query)."""
    from mgn_tf import inference

    started = time.perf_counter()
    try:
        embedder = inference.load(s.weights, input_size=s.input_size, flip_norm=False)
    except (FileNotFoundError, ValueError, OSError) as exc:
        if s.input_size and "exported for" in str(exc):  # an exported model has a fixed input size
            height, width = s.input_size
            raise FlagError(
                f"--input_height={height} --input_width={width}: {exc} (set them to the exported size)"
            ) from exc
        raise FlagError(f"--weights={s.weights}: {exc}") from exc
    load_seconds = round(time.perf_counter() - started, 3)
    print(f"Loaded {embedder}", flush=True)
    if embedder.baked_flip_norm and (not s.flip or not s.normalize):
        print(
            "warning: the model flip-averages and L2-normalises inside (exported with --bake_flip_norm); "
            "--noeval_flip / --nonormalize cannot undo that",
            file=sys.stderr,
        )
    features = evaluation.extract_split_features(
        embedder, split, s.flip, s.batch_size, s.multi_query != "none", s.progress
    )
    features.settings["load_model_seconds"] = load_seconds
    if s.save_features:
        evaluation.save_features(s.save_features, features)
        print(f"Saved features to {s.save_features}", flush=True)
    return features


# --------------------------------------------------------------------------------------------- outputs


TABLE_COLUMNS = (
    ("rank-1", "rank1"),
    ("rank-5", "rank5"),
    ("rank-10", "rank10"),
    ("mAP", "mAP"),
    ("mINP", "mINP"),
    ("mAP(MATLAB)", "mAP_official"),
)


def results_table(results: dict, chance: dict) -> str:
    """The printed summary: rank-1/5/10, mAP, mINP, official MATLAB mAP per ranking, and chance."""
    rows = {**results, "chance (random order, expected)": {k: v for k, v in chance.items() if k != "mINP"}}
    width = max(len(label) for label in rows)
    header = f"{'':{width}s}" + "".join(f" {name:>11s}" for name, _ in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for label, r in rows.items():
        cells = (f"{100 * r[key]:.2f}%" if r.get(key) is not None else "-" for _, key in TABLE_COLUMNS)
        lines.append(f"{label:{width}s}" + "".join(f" {c:>11s}" for c in cells))
    lines += [
        "mAP: mean non-interpolated AP over the queries that have a true match (torchreid / fast-reid).",
        "mAP(MATLAB): official Market-1501 code: trapezoidal AP, averaged over all queries (no match = 0).",
    ]
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def ranked_rows(
    features: evaluation.FeatureSet, tops: dict, groups: list | None, top: int
) -> list[RankedQuery]:
    """RankedQuery rows of the figure from `rank_gallery` top lists."""
    rows = []
    for q, (indices, _) in sorted(tops.items()):
        path, pid, cam = features.query_items[q]
        pooled = f" +{len(groups[q])}" if groups is not None else ""
        gallery = [features.gallery_items[int(j)] for j in indices[:top]]
        rows.append(
            RankedQuery(
                query_path=path,
                query_label=f"query {pid} c{cam + 1}{pooled}",
                gallery_paths=[g[0] for g in gallery],
                gallery_labels=[f"{k + 1}: {g[1]} c{g[2] + 1}" for k, g in enumerate(gallery)],
                matches=[g[1] == pid for g in gallery],
            )
        )
    return rows


def evaluate(s: EvalSettings) -> dict:
    """The whole evaluation of `s`; returns the results.json content."""
    started = time.perf_counter()
    if s.load_features:
        features = features_from_file(s)
    else:
        try:
            split = load_dataset(s.dataset, s.data_dir, **s.dataset_options)
        except (DatasetLayoutError, ValueError) as exc:
            raise FlagError(f"--data_dir={s.data_dir} (--dataset={s.dataset}): {exc}") from exc
        if not split.query or not split.gallery:
            raise FlagError(f"--dataset={s.dataset}: {s.data_dir} has no query or no gallery images")
        if s.multi_query != "none" and split.multi_query is None:
            where = "no gt_bbox/ folder" if s.dataset == "market1501" else "no multi-query images"
            raise FlagError(
                f"--multi_query={s.multi_query}: {s.dataset} at {split.root} has {where}; multi-query "
                f"evaluation needs Market-1501's gt_bbox/ images (use --multi_query=none)"
            )
        print(split.summary(), flush=True)
    s.out_dir.mkdir(parents=True, exist_ok=True)
    if not s.load_features:
        features = features_from_model(s, split)
    return report(s, features, started)


def rankings(s: EvalSettings, features: evaluation.FeatureSet) -> tuple[dict, list | None, list[int]]:
    """{"without_rerank" / "with_rerank": (label, metrics, top lists)}, multi-query groups, shown queries."""
    _, q_pids, q_cams = evaluation.item_arrays(features.query_items)
    _, g_pids, g_cams = evaluation.item_arrays(features.gallery_items)
    qf, groups = features.query, None
    if s.multi_query != "none":  # pool the per-image features the distance would see
        groups = evaluation.multi_query_groups(features.query_items, features.multi_query_items)
        mqf = features.multi_query
        if s.normalize or s.distance == "cosine":
            qf, mqf = evaluation.l2_normalize(qf), evaluation.l2_normalize(mqf)
        qf = evaluation.pool_multi_query(qf, mqf, groups, s.multi_query)
    show = evaluation.sample_queries(len(qf), s.num_ranked_queries)
    common = dict(
        distance=s.distance, normalize=s.normalize, max_rank=s.max_rank, chunk_size=s.chunk_size,
        show_queries=show, top=10,
    )  # fmt: skip
    arrays = (q_pids, g_pids, q_cams, g_cams)
    runs = {
        "without_rerank": (
            "without re-ranking",
            *evaluation.rank_gallery(qf, features.gallery, *arrays, **common),
        )
    }
    if s.rerank:
        params = evaluation.RerankParams(s.k1, s.k2, s.lambda_value)
        label = f"with re-ranking (k1={s.k1}, k2={s.k2}, λ={s.lambda_value:g})"
        runs["with_rerank"] = (
            label,
            *evaluation.rank_gallery(qf, features.gallery, *arrays, rerank=params, **common),
        )
    return runs, groups, show


def figures(
    s: EvalSettings, features: evaluation.FeatureSet, runs: dict, chance: dict, groups: list | None
) -> dict[str, str]:
    """cmc.png and ranked_list.png (+ ranked_list_rerank.png with re-ranking); returns their paths."""
    files = {}
    curves = {
        f"{label} (rank-1 {100 * r['rank1']:.1f}%, mAP {100 * r['mAP']:.1f}%)": r["cmc"]
        for label, r, _ in runs.values()
    }
    title = f"CMC, {features.settings.get('dataset', s.dataset)}" + (
        f", multi-query ({s.multi_query})" if groups is not None else ""
    )
    files["cmc"] = str(plot_cmc(curves, s.out_dir / "cmc.png", chance=chance["cmc"], title=title))
    names = {"without_rerank": "ranked_list", "with_rerank": "ranked_list_rerank"}
    for key, (label, _, tops) in runs.items():
        if not tops:
            continue
        pooled = f" Query label '+N': pooled with N gt_bbox images ({s.multi_query})." if groups else ""
        figure_title = (
            f"Top-10 gallery images per query, {label}; labels 'rank: identity camera'. Green frame = same "
            "identity, red = different.\nGallery images of the query's identity from the query's camera are "
            f"skipped (junk under the protocol).{pooled}"
        )
        rows = ranked_rows(features, tops, groups, 10)
        files[names[key]] = str(plot_ranked_lists(rows, s.out_dir / f"{names[key]}.png", figure_title))
    return files


def report(s: EvalSettings, features: evaluation.FeatureSet, started: float) -> dict:
    """Rankings, table, figures and results.json of a FeatureSet; returns the results.json content."""
    runs, groups, show = rankings(s, features)
    _, q_pids, q_cams = evaluation.item_arrays(features.query_items)
    _, g_pids, g_cams = evaluation.item_arrays(features.gallery_items)
    chance = evaluation.metrics_summary(evaluation.chance_level(q_pids, g_pids, q_cams, g_cams, s.max_rank))
    print(results_table({label: r for label, r, _ in runs.values()}, chance), flush=True)
    plots_started = time.perf_counter()
    files = {"results": str(s.out_dir / "results.json"), **figures(s, features, runs, chance, groups)}
    plots_seconds = round(time.perf_counter() - plots_started, 3)

    info = features.settings
    q_items, g_items, mq_items = features.query_items, features.gallery_items, features.multi_query_items
    dataset = {
        "name": info.get("dataset", s.dataset),
        "root": info.get("data_root"),
        "num_query": len(q_items),
        "num_gallery": len(g_items),
        "num_query_ids": len({p for _, p, _ in q_items}),
        "num_gallery_ids": len({p for _, p, _ in g_items}),
        "num_valid_queries": chance["num_valid_queries"],
        "num_multi_query_images": None if mq_items is None else len(mq_items),
    }
    settings = {
        "weights": info.get("weights"),
        "model_format": info.get("model_format"),
        "input_size": info.get("input_size"),
        "load_features": s.load_features,
        "save_features": s.save_features,
        "batch_size": s.batch_size,
        "flip": info.get("flip"),
        "flip_baked_into_model": info.get("flip_baked_into_model"),
        "distance": s.distance,
        "normalize": s.normalize,
        "multi_query": s.multi_query,
        "rerank": {"k1": s.k1, "k2": s.k2, "lambda_value": s.lambda_value} if s.rerank else None,
        "max_rank": s.max_rank,
        "chunk_size": s.chunk_size,
        "ranked_queries": show,
    }
    timings = {
        "load_model_seconds": None if s.load_features else info.get("load_model_seconds"),
        "extract_seconds": None if s.load_features else info.get("extract_seconds"),
        **{f"{key}_seconds": r.pop("seconds") for key, (_, r, _) in runs.items()},
        "plots_seconds": plots_seconds,
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    output = {
        "settings": settings,
        "dataset": dataset,
        "results": {key: r for key, (_, r, _) in runs.items()},
        "chance": chance,
        "timings": timings,
        "files": files,
    }
    _write_json(s.out_dir / "results.json", output)
    print(f"Wrote {', '.join(files.values())}", flush=True)
    return output


# ------------------------------------------------------------------------------------------------ main


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with bad values reported as `error: ...` and exit code 2."""
    try:
        return F(argv)
    except flags.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    try:
        evaluate(settings_from_flags())
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ImageReadError, tf.errors.InvalidArgumentError) as exc:  # a file tf.data cannot decode
        print(f"error: cannot read an image: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
