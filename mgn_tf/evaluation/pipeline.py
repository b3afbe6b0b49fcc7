"""The evaluation pipeline, the one both `python -m mgn_tf.evaluate` and the end of training run:

embedder + split -> features (flip-averaged, batched)  [or features read from a file]
  -> [multi-query pooling] -> ranking without / with k-reciprocal re-ranking (streamed by query chunks)
  -> CMC / mAP / mINP / official mAP next to the exact chance level
  -> verification: same-person distance thresholds and TPR at FPR 1e-2 / 1e-3 / 1e-4
  -> table on stdout, cmc.png, roc.png, ranked_list[_rerank].png, results.json in `out_dir`
     (--ranked_response_maps: the ranked lists show each image's Global response map, Keras models only)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mgn_tf import locks
from mgn_tf.artifacts import RESULTS_JSON
from mgn_tf.data.datasets import Split
from mgn_tf.errors import ConfigError
from mgn_tf.evaluation.features import FeatureSet, extract_split_features, save_features
from mgn_tf.evaluation.multi_query import pooled_queries
from mgn_tf.evaluation.plots import plot_roc
from mgn_tf.evaluation.ranking import chance_level, item_arrays, metrics_summary, rank_gallery, sample_queries
from mgn_tf.evaluation.report import TOP, figures, results_table, verification_lines
from mgn_tf.evaluation.settings import EvalSettings
from mgn_tf.evaluation.verification import verification
from mgn_tf.files import atomic_write_json

if TYPE_CHECKING:
    import numpy as np

    from mgn_tf.inference import Embedder

ResponseMapsOf = Callable[[Sequence[str]], "dict[str, np.ndarray]"]


def check_split(split: Split, settings: EvalSettings) -> None:
    """Raises ConfigError (naming the flag) for a split this evaluation cannot run on."""
    if not split.query or not split.gallery:
        raise ConfigError(f"--dataset={split.name}: {split.root} has no query or no gallery images")
    if settings.multi_query != "none" and split.multi_query is None:
        where = "no gt_bbox/ folder" if split.name == "market1501" else "no multi-query images"
        raise ConfigError(
            f"--multi_query={settings.multi_query}: {split.name} at {split.root} has {where}; multi-query "
            f"evaluation needs Market-1501's gt_bbox/ images (use --multi_query=none)"
        )


def evaluate(
    embedder: Embedder,
    split: Split,
    settings: EvalSettings,
    out_dir: str | Path,
    save_features_to: str | Path | None = None,
) -> dict:
    """Extracts the features of `split` with `embedder` and evaluates them (see `evaluate_features`).

    `save_features_to`: also write the features there (`load_features` reads them back).
    """
    started = time.perf_counter()
    check_split(split, settings)
    features = extract_split_features(embedder, split, settings)
    if save_features_to:
        save_features(save_features_to, features)
        print(f"Saved features to {save_features_to}", flush=True)
    return evaluate_features(
        features, settings, out_dir, started=started, save_features_to=save_features_to,
        response_maps_of=ranked_response_maps(embedder, settings),
    )  # fmt: skip


def ranked_response_maps(embedder: Embedder, settings: EvalSettings) -> ResponseMapsOf | None:
    """For --ranked_response_maps: image paths -> {path: Global response map [h, w]} with the embedder's
    Keras model (None when not asked, or, with a line saying so, when the model is an exported one)."""
    if not settings.ranked_response_maps or settings.num_ranked_queries == 0:
        return None
    model = getattr(embedder, "model", None) if embedder.format == "keras" else None
    if model is None:
        print(
            f"--ranked_response_maps: skipped, a {embedder.format} model holds no feature maps (it needs the "
            "Keras weights: a run directory, checkpoint or *.weights.h5)",
            flush=True,
        )
        return None
    from mgn_tf.evaluation.response import response_maps, response_model
    from mgn_tf.images import load_images

    responses = response_model(model, branches=("global",))

    def global_maps(paths: Sequence[str]) -> dict[str, np.ndarray]:
        pixels = load_images(paths, embedder.input_size)
        maps = response_maps(responses, pixels, settings.eval_batch_size)["global"]
        return dict(zip(paths, maps, strict=True))

    return global_maps


def rankings(features: FeatureSet, settings: EvalSettings) -> tuple[dict, list | None, list[int]]:
    """{"without_rerank" / "with_rerank": (label, metrics, top lists)}, multi-query groups, shown queries."""
    _, q_pids, q_cams = item_arrays(features.query_items)
    _, g_pids, g_cams = item_arrays(features.gallery_items)
    qf, groups = features.query, None
    if settings.multi_query != "none":
        normalized = settings.normalize or settings.distance == "cosine"
        qf, groups = pooled_queries(
            qf, features.query_items, features.multi_query, features.multi_query_items,
            settings.multi_query, normalized,
        )  # fmt: skip
    show = sample_queries(len(qf), settings.num_ranked_queries)
    common = dict(
        distance=settings.distance, normalize=settings.normalize, max_rank=settings.max_rank,
        chunk_size=settings.chunk_size, show_queries=show, top=TOP,
    )  # fmt: skip
    arrays = (q_pids, g_pids, q_cams, g_cams)
    runs = {"without_rerank": ("without re-ranking", *rank_gallery(qf, features.gallery, *arrays, **common))}
    if settings.rerank is not None:
        p = settings.rerank
        label = f"with re-ranking (k1={p.k1}, k2={p.k2}, λ={p.lambda_value:g})"
        runs["with_rerank"] = (label, *rank_gallery(qf, features.gallery, *arrays, rerank=p, **common))
    return runs, groups, show


def evaluate_features(
    features: FeatureSet,
    settings: EvalSettings,
    out_dir: str | Path,
    started: float | None = None,
    loaded_from: str | Path | None = None,
    save_features_to: str | Path | None = None,
    response_maps_of: ResponseMapsOf | None = None,
) -> dict:
    """Rankings, table, figures and results.json of a FeatureSet; returns the results.json content.

    `loaded_from` / `save_features_to` are recorded in the settings (the feature file read or written).
    `response_maps_of` (`ranked_response_maps`): overlays the images' response maps on the ranked lists.
    """
    if settings.ranked_response_maps and loaded_from is not None:
        print("--ranked_response_maps: skipped, features read from a file have no model to run", flush=True)
    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    # Another evaluation writing there finishes first: two never interleave their files.
    with locks.hold(out_dir, f"the evaluation folder {out_dir}", timeout=None):
        return _write_evaluation(features, settings, out_dir, started, loaded_from, save_features_to,
                                 response_maps_of)  # fmt: skip


def _write_evaluation(features, settings, out_dir, started, loaded_from, save_features_to, response_maps_of):
    runs, groups, show = rankings(features, settings)
    _, q_pids, q_cams = item_arrays(features.query_items)
    _, g_pids, g_cams = item_arrays(features.gallery_items)
    chance = metrics_summary(chance_level(q_pids, g_pids, q_cams, g_cams, settings.max_rank))
    print(results_table({label: r for label, r, _ in runs.values()}, chance), flush=True)
    verify_started = time.perf_counter()
    try:
        pairs = verification(
            features.query, features.gallery, q_pids, g_pids, q_cams, g_cams,
            distance=settings.distance, normalize=settings.normalize, chunk_size=settings.chunk_size,
        )  # fmt: skip
        print(verification_lines(pairs), flush=True)
    except ValueError as exc:  # e.g. a gallery of one identity: no negative pair
        pairs = None
        print(f"No same-person thresholds: {exc}", flush=True)
    verify_seconds = round(time.perf_counter() - verify_started, 3)

    info = features.settings
    plots_started = time.perf_counter()
    files = {"results": str(out_dir / RESULTS_JSON)}
    dataset_name = info.get("dataset", "")
    files.update(
        figures(out_dir, features, runs, chance, groups, settings.multi_query, dataset_name, response_maps_of)
    )
    if pairs is not None:
        roc_title = f"Same person? {info.get('dataset', '')}"
        files["roc"] = str(plot_roc(pairs, out_dir / "roc.png", title=roc_title))
    plots_seconds = round(time.perf_counter() - plots_started, 3)

    q_items, g_items, mq_items = features.query_items, features.gallery_items, features.multi_query_items
    dataset = {
        "name": info.get("dataset"),
        "root": info.get("data_root"),
        "num_query": len(q_items),
        "num_gallery": len(g_items),
        "num_query_ids": len({p for _, p, _ in q_items}),
        "num_gallery_ids": len({p for _, p, _ in g_items}),
        "num_valid_queries": chance["num_valid_queries"],
        "num_multi_query_images": None if mq_items is None else len(mq_items),
    }
    rerank = settings.rerank
    record = {
        "weights": info.get("weights"),
        "model_format": info.get("model_format"),
        "engine": info.get("engine"),
        "input_size": info.get("input_size"),
        "load_features": None if loaded_from is None else str(loaded_from),
        "save_features": None if save_features_to is None else str(save_features_to),
        "batch_size": settings.eval_batch_size,
        "flip": info.get("flip"),
        "flip_baked_into_model": info.get("flip_baked_into_model"),
        "distance": settings.distance,
        "normalize": settings.normalize,
        "multi_query": settings.multi_query,
        "rerank": None
        if rerank is None
        else {"k1": rerank.k1, "k2": rerank.k2, "lambda_value": rerank.lambda_value},
        "max_rank": settings.max_rank,
        "chunk_size": settings.chunk_size,
        "ranked_queries": show,
        "ranked_response_maps": response_maps_of is not None,
    }
    from_file = loaded_from is not None
    timings = {
        "load_model_seconds": None if from_file else info.get("load_model_seconds"),
        "extract_seconds": None if from_file else info.get("extract_seconds"),
        **{f"{key}_seconds": r.pop("seconds") for key, (_, r, _) in runs.items()},
        "verification_seconds": verify_seconds,
        "plots_seconds": plots_seconds,
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    output = {
        "settings": record,
        "dataset": dataset,
        "results": {key: r for key, (_, r, _) in runs.items()},
        "chance": chance,
        "verification": pairs,
        "timings": timings,
        "files": files,
    }
    atomic_write_json(out_dir / RESULTS_JSON, output)
    print(f"Wrote {', '.join(files.values())}", flush=True)
    return output
