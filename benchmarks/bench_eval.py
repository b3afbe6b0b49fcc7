"""Benchmark of the evaluation core: CMC/mAP and k-reciprocal re-ranking vs plain loop baselines.

    python benchmarks/bench_eval.py [--sizes market,msmt] [--dim 2048]   # writes docs/results/bench_eval.*

Random clustered features of Market-1501 size (3,368 queries, 15,913 gallery, 751 ids, 6 cameras) and
MSMT17 size (11,659 / 82,161, 3,060 ids, 15 cameras). Every measurement runs in a fresh child process
(spawn) that loads its inputs from .npy files, resets its peak-RSS counter (/proc/self/clear_refs) and
reports wall time and peak RSS of the measured call. Baselines (written below, the way users run them
today): the torchreid-style per-query Python loop for CMC/mAP, and the original dense re-ranking with
its per-row Python loops and dense N x N float32 arrays. At MSMT17 size the baselines are not run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results  # noqa: E402

from mgn_tf.evaluation.metrics import FeatureDistance, RankingAccumulator, evaluate_ranking  # noqa: E402
from mgn_tf.evaluation.rerank import re_ranking, re_ranking_features  # noqa: E402

SIZES = {
    "small": {"nq": 300, "ng": 1500, "ids": 100, "cams": 6},  # smoke test
    "market": {"nq": 3368, "ng": 15913, "ids": 751, "cams": 6},
    "msmt": {"nq": 11659, "ng": 82161, "ids": 3060, "cams": 15},
}
K1, K2, LAMBDA = 20, 6, 0.3
GIB = 1024**3


# ------------------------------------------------------------------------------------------------ data


def make_features(nq: int, ng: int, ids: int, cams: int, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Identity centres + small camera offsets + unit noise; ~17 % pid-0 distractors in the gallery."""
    rng = np.random.default_rng(seed)
    spread = 1.6 * (2.0 / dim) ** 0.25  # identity signal scaled so that mAP stays moderate at any dim
    centres = rng.standard_normal((ids + 1, dim), dtype=np.float32) * np.float32(spread)
    cam_off = rng.standard_normal((cams, dim), dtype=np.float32) * np.float32(0.05)
    n_distr = int(0.17 * ng)
    gp = np.concatenate([rng.integers(1, ids + 1, ng - n_distr), np.zeros(n_distr, np.int64)])
    gp = gp[rng.permutation(ng)]
    qp = rng.integers(1, ids + 1, nq)
    qc, gc = rng.integers(0, cams, nq), rng.integers(0, cams, ng)

    def feats(p: np.ndarray, c: np.ndarray) -> np.ndarray:
        f = rng.standard_normal((p.size, dim), dtype=np.float32)
        f += centres[p]
        f += cam_off[c]
        distr = p == 0
        f[distr] = rng.standard_normal((int(distr.sum()), dim), dtype=np.float32) * np.float32(1.1)
        return f

    return {"qf": feats(qp, qc), "gf": feats(gp, gc), "qp": qp, "gp": gp, "qc": qc, "gc": gc}


# ------------------------------------------------------------------------------------------- baselines


def baseline_distances(qf: np.ndarray, gf: np.ndarray) -> np.ndarray:
    """Plain dense Euclidean distance matrix (float32), as usually computed before evaluation."""
    d = (qf * qf).sum(1)[:, None] + (gf * gf).sum(1)[None, :] - 2 * qf @ gf.T
    return np.sqrt(np.maximum(d, 0))


def baseline_cmc_map(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """torchreid-style evaluation: full argsort, then a Python loop over queries."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    order_all = np.argsort(distmat, axis=1)
    hit_all = (g_pids[order_all] == q_pids[:, None]).astype(np.int32)
    cmcs, aps, inps = [], [], []
    for qi in range(num_q):
        order = order_all[qi]
        junk = (g_pids[order] == q_pids[qi]) & (g_camids[order] == q_camids[qi])
        hits = hit_all[qi][~junk]
        if not hits.any():
            continue
        cum = hits.cumsum()
        last = np.where(hits == 1)[0].max()
        inps.append(cum[last] / (last + 1.0))
        cmc = cum.copy()
        cmc[cmc > 1] = 1
        cmcs.append(cmc[:max_rank])
        prec = np.asarray([x / (i + 1.0) for i, x in enumerate(cum)]) * hits
        aps.append(prec.sum() / hits.sum())
    cmc = np.asarray(cmcs, dtype=np.float32).sum(0) / len(cmcs)
    return cmc, float(np.mean(aps)), float(np.mean(inps))


def baseline_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lam=0.3):
    """The original dense re-ranking: N x N float32 arrays and per-row Python loops."""
    nq = q_g.shape[0]
    full = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    full = np.power(full, 2).astype(np.float32)
    full = np.transpose(1.0 * full / np.max(full, axis=0))
    n = full.shape[0]
    v = np.zeros_like(full, dtype=np.float32)
    rank = np.argsort(full).astype(np.int32)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        fwd = rank[i, : k1 + 1]
        kset = fwd[np.where(rank[fwd, : k1 + 1] == i)[0]]
        expanded = kset
        for c in kset:
            cf = rank[c, : half + 1]
            hset = cf[np.where(rank[cf, : half + 1] == c)[0]]
            if len(np.intersect1d(hset, kset)) > 2.0 / 3 * len(hset):
                expanded = np.append(expanded, hset)
        expanded = np.unique(expanded)
        w = np.exp(-full[i, expanded])
        v[i, expanded] = w / np.sum(w)
    orig = full[:nq]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i, :] = np.mean(v[rank[i, :k2], :], axis=0)
        v = v_qe
        del v_qe
    del rank
    inv = [np.where(v[:, j] != 0)[0] for j in range(n)]
    jac = np.zeros_like(orig, dtype=np.float32)
    for i in range(nq):
        tmin = np.zeros((1, n), dtype=np.float32)
        nz = np.where(v[i, :] != 0)[0]
        for k in nz:
            tmin[0, inv[k]] += np.minimum(v[i, k], v[inv[k], k])
        jac[i] = 1 - tmin / (2.0 - tmin)
    return (jac * (1 - lam) + orig * lam)[:, nq:]


# ------------------------------------------------------------------------------- measured child tasks


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _ids(w):
    return w["qp"], w["gp"], w["qc"], w["gc"]


def _task(name: str, w: dict[str, np.ndarray], out: Path):
    if name == "dist_baseline":
        for key, (a, b) in {"qg": ("qf", "gf"), "qq": ("qf", "qf"), "gg": ("gf", "gf")}.items():
            np.save(out / f"{key}.npy", baseline_distances(w[a], w[b]))
        return {}
    if name == "metrics_loop":
        cmc, m_ap, m_inp = baseline_cmc_map(w["dist"], *_ids(w))
        return {"cmc": cmc, "mAP": m_ap, "mINP": m_inp}
    if name == "metrics_ours":
        return evaluate_ranking(w["dist"], *_ids(w))
    if name == "metrics_ours_features":
        return evaluate_ranking(FeatureDistance(w["qf"], w["gf"], "euclidean", normalize=False), *_ids(w))
    if name == "rerank_loop":
        np.save(out / "rr_loop.npy", baseline_re_ranking(w["qg"], w["qq"], w["gg"], K1, K2, LAMBDA))
        return {}
    if name == "rerank_ours_dense":
        np.save(out / "rr_dense.npy", re_ranking(w["qg"], w["qq"], w["gg"], K1, K2, LAMBDA))
        return {}
    if name == "rerank_ours_features":
        dense = np.empty((len(w["qf"]), len(w["gf"])), np.float32)
        for rows, chunk in re_ranking_features(w["qf"], w["gf"], K1, K2, LAMBDA):
            dense[rows] = chunk
        np.save(out / "rr_features.npy", dense)
        return {}
    if name == "rerank_eval_ours_features":
        acc = RankingAccumulator(*_ids(w))
        for rows, chunk in re_ranking_features(w["qf"], w["gf"], K1, K2, LAMBDA):
            acc.update(rows, chunk)
        return acc.result()
    raise ValueError(name)


def _child(name: str, inputs: dict[str, str], out: str):
    w = {key: np.load(path) for key, path in inputs.items()}
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM: peak of the measured call only
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    base = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    result = _task(name, w, Path(out))
    seconds = time.perf_counter() - t0
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "inputs_mb": base, "result": result}


def measure(name: str, inputs: dict[str, Path], out: Path) -> dict:
    print(f"  running {name} ...", flush=True)
    with mp.get_context("spawn").Pool(1) as pool:
        res = pool.apply(_child, (name, {k: str(v) for k, v in inputs.items()}, str(out)))
    print(f"    {res['seconds']:.1f} s, peak RSS {res['peak_mb']:.0f} MB", flush=True)
    return res


# -------------------------------------------------------------------------------------------- driver


def _metric_diff(a: dict, b: dict) -> float:
    n = min(len(a["cmc"]), len(b["cmc"]))
    return float(
        max(
            np.abs(np.asarray(a["cmc"][:n]) - np.asarray(b["cmc"][:n])).max(),
            abs(a["mAP"] - b["mAP"]),
            abs(a["mINP"] - b["mINP"]),
        )
    )


def _row(size, task, impl, res=None, base=None, diff=None, note=""):
    row = {"size": size, "task": task, "impl": impl, "note": note}
    if res is not None:
        row |= {"seconds": res["seconds"], "peak_mb": res["peak_mb"], "inputs_mb": res["inputs_mb"]}
        if "mAP" in res.get("result", {}):
            row["mAP"] = res["result"]["mAP"]
    if res is not None and base is not None:
        row["speedup"] = base["seconds"] / res["seconds"]
        row["mem_fraction"] = res["peak_mb"] / base["peak_mb"]
    if diff is not None:
        row["max_abs_diff"] = diff
    return row


def _combine(*parts: dict) -> dict:
    """A pipeline of sequential steps: times add up, the peak is the largest step's peak."""
    return {
        "seconds": sum(p["seconds"] for p in parts),
        "peak_mb": max(p["peak_mb"] for p in parts),
        "inputs_mb": parts[0]["inputs_mb"],
        "result": parts[-1].get("result", {}),
    }


def run_size(size: str, dim: int, work: Path, run_baseline: bool) -> list[dict]:
    spec = SIZES[size]
    print(f"[{size}] Q={spec['nq']} G={spec['ng']} dim={dim}: generating features", flush=True)
    data = make_features(spec["nq"], spec["ng"], spec["ids"], spec["cams"], dim)
    files = {}
    for key, arr in data.items():
        files[key] = work / f"{size}_{key}.npy"
        np.save(files[key], arr)
    del data
    ids = {k: files[k] for k in ("qp", "gp", "qc", "gc")}
    feats = {"qf": files["qf"], "gf": files["gf"]} | ids
    rows = []
    if size == "msmt" or not run_baseline:
        n = spec["nq"] + spec["ng"]
        why = (
            f"not run: one dense N x N float32 array is {n * n * 4 / GIB:.1f} GiB (N={n}); "
            "the reference holds several at once"
        )
        qg_gib = spec["nq"] * spec["ng"] * 4 / GIB
        why_m = f"not run: needs the Q x G distmat ({qg_gib:.1f} GiB) + int64 argsort + match matrix"
        if size != "msmt":
            why = why_m = "not run (--no-baseline)"
        m = measure("metrics_ours_features", feats, work)
        rows.append(_row(size, "metrics", "baseline: per-query loop", note=why_m))
        rows.append(_row(size, "metrics", "ours: evaluate_ranking (FeatureDistance)", m))
        e = measure("rerank_eval_ours_features", feats, work)
        rows.append(_row(size, "rerank+eval", "baseline: dense loop re_ranking", note=why))
        rows.append(_row(size, "rerank+eval", "ours: re_ranking_features -> RankingAccumulator", e))
        return rows

    d = measure("dist_baseline", feats, work)
    dist = {"qg": work / "qg.npy", "qq": work / "qq.npy", "gg": work / "gg.npy"}
    ml = measure("metrics_loop", {"dist": dist["qg"]} | ids, work)
    mo = measure("metrics_ours", {"dist": dist["qg"]} | ids, work)
    mf = measure("metrics_ours_features", feats, work)
    rows.append(_row(size, "metrics", "baseline: per-query loop (distmat)", ml))
    rows.append(
        _row(
            size,
            "metrics",
            "ours: evaluate_ranking (distmat)",
            mo,
            ml,
            _metric_diff(mo["result"], ml["result"]),
        )
    )
    rows.append(
        _row(
            size,
            "metrics",
            "ours: evaluate_ranking (FeatureDistance)",
            mf,
            ml,
            _metric_diff(mf["result"], ml["result"]),
            note="includes computing the distances; baseline excludes it",
        )
    )
    rl = measure("rerank_loop", dist | ids, work)
    rd = measure("rerank_ours_dense", dist | ids, work)
    rf = measure("rerank_ours_features", feats, work)
    rr_loop = np.load(work / "rr_loop.npy")
    err_d = np.abs(np.load(work / "rr_dense.npy") - rr_loop)
    err_f = np.abs(np.load(work / "rr_features.npy") - rr_loop)
    diff_d, diff_f = float(err_d.max()), float(err_f.max())
    far_d, far_f = (f"{(e > 1e-5).mean():.1e} of entries differ > 1e-5" for e in (err_d, err_f))
    del err_d, err_f
    pipe = _combine(d, rl)
    rows.append(_row(size, "rerank", "baseline: dense loop re_ranking (distmats)", rl))
    rows.append(_row(size, "rerank", "ours: re_ranking (distmats)", rd, rl, diff_d, note=far_d))
    rows.append(
        _row(size, "rerank", "baseline: distmats + dense loop re_ranking", pipe, note="from features")
    )
    rows.append(
        _row(size, "rerank", "ours: re_ranking_features", rf, pipe, diff_f, note=f"from features; {far_f}")
    )
    np.save(work / "rr_loop_dist.npy", rr_loop)
    del rr_loop
    el = measure("metrics_loop", {"dist": work / "rr_loop_dist.npy"} | ids, work)
    eo = measure("rerank_eval_ours_features", feats, work)
    base_e = _combine(d, rl, el)
    rows.append(_row(size, "rerank+eval", "baseline: distmats + loop re_ranking + loop eval", base_e))
    rows.append(
        _row(
            size,
            "rerank+eval",
            "ours: re_ranking_features -> RankingAccumulator",
            eo,
            base_e,
            _metric_diff(eo["result"], base_e["result"]),
        )
    )
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'size':<7}{'task':<12}{'implementation':<50}{'time s':>9}{'peak MB':>9}{'>inputs':>9}"
    head += f"{'speed-up':>9}{'mem frac':>9}{'max|diff|':>11}  mAP / note"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "seconds" not in r:
            lines.append(
                f"{r['size']:<7}{r['task']:<12}{r['impl']:<50}{'-':>9}{'-':>9}{'-':>10}  {r['note']}"
            )
            continue
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else ""
        mf = f"{r['mem_fraction']:.2f}" if "mem_fraction" in r else ""
        df = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
        tail = f"{r['mAP']:.4f}" if "mAP" in r else ""
        if r["note"]:
            tail = f"{tail}  ({r['note']})" if tail else f"({r['note']})"
        lines.append(
            f"{r['size']:<7}{r['task']:<12}{r['impl']:<50}{r['seconds']:>9.1f}{r['peak_mb']:>9.0f}"
            f"{r['peak_mb'] - r['inputs_mb']:>9.0f}{sp:>9}{mf:>9}{df:>11}  {tail}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="market,msmt", help="comma list of: " + ",".join(SIZES))
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--no-baseline", action="store_true", help="skip the (slow) loop baselines")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        ap.error(f"unknown sizes {sorted(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    rows: list[dict] = []
    try:
        for size in sizes:
            rows += run_size(size, args.dim, work, not args.no_baseline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = (
        f"dim={args.dim}, k1={K1} k2={K2} lambda={LAMBDA}; random clustered features (not a model's). "
        "peak MB = peak RSS of the measured call's process (inputs included), >inputs = peak minus RSS "
        "after loading the inputs; speed-up = baseline time / time, mem frac = peak / baseline peak "
        "(the baseline rows above it in the same task), both measured in this run."
    )
    table = format_table(rows)
    print(f"\n{notes}\n{table}")
    path = results.write(
        "bench_eval",
        "Evaluation core: CMC/mAP and re-ranking against loop baselines",
        {"dim": args.dim, "k1": K1, "k2": K2, "lambda": LAMBDA, "rows": rows},
        f"```\n{table}\n```",
        notes,
    )
    print(f"Wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
