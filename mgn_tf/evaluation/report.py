"""What an evaluation hands to a person: the printed table, the figures and results.json."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mgn_tf.evaluation.features import FeatureSet
from mgn_tf.evaluation.plots import RankedQuery, plot_cmc, plot_ranked_lists

TABLE_COLUMNS = (
    ("rank-1", "rank1"),
    ("rank-5", "rank5"),
    ("rank-10", "rank10"),
    ("mAP", "mAP"),
    ("mINP", "mINP"),
    ("mAP(MATLAB)", "mAP_official"),
)
FIGURE_NAMES = {"without_rerank": "ranked_list", "with_rerank": "ranked_list_rerank"}
TOP = 10  # gallery images per query in the ranked-list figures


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


def verification_lines(pairs: dict) -> str:
    """The printed same-person thresholds: TPR at each target FPR and the distance threshold of each."""
    norm = "L2-normalised " if pairs["normalize"] else ""
    lines = [
        f"Same person? {pairs['distance']} distance on {norm}features, {pairs['num_positive_pairs']} "
        f"positive / {pairs['num_negative_pairs']} negative query-gallery pairs ({pairs['rule']}):"
    ]
    for p in pairs["points"]:
        note = "" if p["resolvable"] else " (too few negative pairs to measure this FPR)"
        lines.append(
            f"  FPR {p['target_fpr']:g}: TPR {100 * p['tpr']:.2f}% at threshold {p['threshold']:.4f} "
            f"(measured FPR {p['fpr']:.2e}){note}"
        )
    return "\n".join(lines)


def ranked_rows(features: FeatureSet, tops: dict, groups: list | None, top: int = TOP) -> list[RankedQuery]:
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


def figures(
    out_dir: Path,
    features: FeatureSet,
    runs: dict,
    chance: dict,
    groups: list | None,
    multi_query: str,
    dataset: str,
    response_maps_of: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None,
) -> dict[str, str]:
    """cmc.png and ranked_list.png (+ ranked_list_rerank.png with re-ranking); returns their paths.

    `runs` maps "without_rerank" / "with_rerank" to (label, metrics, top lists). `response_maps_of`: the
    Global response map of each of a list of image paths, overlaid on the ranked-list thumbnails.
    """
    files = {}
    curves = {
        f"{label} (rank-1 {100 * r['rank1']:.1f}%, mAP {100 * r['mAP']:.1f}%)": r["cmc"]
        for label, r, _ in runs.values()
    }
    title = f"CMC, {dataset}" + (f", multi-query ({multi_query})" if groups is not None else "")
    files["cmc"] = str(plot_cmc(curves, out_dir / "cmc.png", chance=chance["cmc"], title=title))
    shown = {key: ranked_rows(features, tops, groups) for key, (_, _, tops) in runs.items() if tops}
    responses, heat = None, ""
    if response_maps_of is not None and shown:
        paths = {p for rows in shown.values() for r in rows for p in (r.query_path, *r.gallery_paths)}
        responses = response_maps_of(sorted(paths))  # once for the images of every figure
        heat = " Heat: the Global branch's feature response (L2 norm over channels), scaled per image."
    for key, (label, _, tops) in runs.items():
        if not tops:
            continue
        pooled = f" Query label '+N': pooled with N gt_bbox images ({multi_query})." if groups else ""
        figure_title = (
            f"Top-{TOP} gallery images per query, {label}; labels 'rank: identity camera'. Green frame = "
            "same identity, red = different.\nGallery images of the query's identity from the query's camera "
            f"are skipped (junk under the protocol).{pooled}{heat}"
        )
        name = FIGURE_NAMES[key]
        files[name] = str(
            plot_ranked_lists(shown[key], out_dir / f"{name}.png", figure_title, responses=responses)
        )
    return files
