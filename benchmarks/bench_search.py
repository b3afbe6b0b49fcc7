"""Benchmark of gallery search (mgn_tf.gallery): index build, query throughput and peak memory for 10k,
100k and 1M-image galleries of 2048-d features, exact and approximate, with the recall@10 of each
approximate index against exact search.

    python benchmarks/bench_search.py [--sizes 10000,100000,1000000] [--queries 1000]
    # writes docs/results/bench_search.{json,md}

Features are random but shaped like re-ID embeddings (uniformly random data has no neighbours worth
finding): one random unit centre per identity (20 images per identity), each image its centre plus
Gaussian noise of norm 0.6, L2-normalised; queries are new images of the gallery's identities. The
gallery is stored as float16 shards of 100k rows (memory-mapped when searched). Each measurement runs
in a fresh spawned process whose peak RSS (VmHWM after /proc/self/clear_refs, memory-mapped pages
included) is its own.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

DIM = 2048
SHARD = 100_000
K = 10
HNSW_MAX = 10_000  # HNSW builds slowly on 2 cores (minutes at 100k)
IVF_FLAT_MAX = 100_000  # IVF-Flat scans 8 KB float32 rows: no faster than exact at 1M here
IMAGES_PER_ID = 20  # about Market-1501's gallery images per identity


def features(rng, centres, ids):
    x = centres[ids] + 0.6 / np.sqrt(DIM) * rng.standard_normal((len(ids), DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(directory: Path, size: int, queries: int, seed: int = 0) -> tuple[float, np.ndarray]:
    from mgn_tf.gallery import Gallery
    from mgn_tf.gallery.index import ModelInfo

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((size // IMAGES_PER_ID, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    probe = np.full((4, DIM), 1 / np.sqrt(DIM), np.float32)
    gallery = Gallery(ModelInfo("synthetic", "none", (384, 128), True, True, probe), "float16")
    started = time.perf_counter()
    for a in range(0, size, SHARD):
        n = min(SHARD, size - a)
        ids = rng.integers(0, len(centres), n)
        gallery.add_features(features(rng, centres, ids), [f"{i:07d}.jpg" for i in range(a, a + n)])
        gallery.save(directory)
    seconds = time.perf_counter() - started
    del gallery  # the shards held in memory: leave the page cache to the measured processes
    return seconds, features(rng, centres, rng.integers(0, len(centres), queries))


def measure(directory: str, queries_file: str, backend: str, options: dict, out) -> None:
    from mgn_tf.gallery import Gallery

    Path("/proc/self/clear_refs").write_text(
        "5"
    )  # peak RSS from here (a spawned child inherits the parent's)
    queries = np.load(queries_file)
    gallery = Gallery.load(directory)
    ready = 0.0
    if backend != "exact":
        started = time.perf_counter()
        gallery.faiss_index(backend.removeprefix("faiss_"), options.get("nlist"))
        ready = time.perf_counter() - started
    started = time.perf_counter()
    result = gallery.search(queries, K, backend=backend, **options)
    seconds = time.perf_counter() - started
    indices = np.array([[m.index for m in row] for row in result.matches])
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    out.put((ready, seconds, indices, peak_kib / 2**20, result.seconds))


def run_child(*args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=measure, args=(*args, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


def main() -> None:
    from mgn_tf.gallery import knn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", default=f"16,{knn.DEFAULT_NPROBE},128", help="IVF-PQ cells visited")
    parser.add_argument("--ef_search", type=int, default=knn.DEFAULT_EF_SEARCH)
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix=f"bench_search_{size}_"))
        try:
            build_seconds, queries = build(work / "index", size, args.queries)
            np.save(work / "queries.npy", queries)
            print(f"{size}: stored in {build_seconds:.1f} s", flush=True)
            backends = [("exact", {})] + [("faiss_ivfpq", {"nprobe": int(n)}) for n in args.nprobe.split(",")]
            if size <= IVF_FLAT_MAX:
                backends.append(("faiss_ivf", {"nprobe": 8}))
            if size <= HNSW_MAX:
                backends.append(("faiss_hnsw", {"ef_search": args.ef_search}))
            exact = None
            for backend, options in backends:
                ready, seconds, indices, rss, parts = run_child(
                    str(work / "index"), str(work / "queries.npy"), backend, options
                )
                if backend == "exact":
                    exact, exact_qps = indices, args.queries / seconds
                row = {
                    "gallery": size, "backend": backend, "options": options,
                    "store_seconds": round(build_seconds, 1),
                    "index_build_seconds": round(ready, 1), "queries": args.queries,
                    "queries_per_second": round(args.queries / seconds, 1),
                    "speedup_vs_exact": round(args.queries / seconds / exact_qps, 2),
                    "recall_at_10": round(knn.recall_at_k(indices, exact), 4), "peak_rss_gib": round(rss, 2),
                    "search_parts_seconds": parts,
                }  # fmt: skip
                rows.append(row)
                print(row, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    table = [
        "| gallery | backend | build s | queries/s | x exact | recall@10 | peak RSS GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        opts = ", ".join(f"{k} {v}" for k, v in r["options"].items())
        name = r["backend"] + (f" ({opts})" if opts else "")
        table.append(
            f"| {r['gallery']:,} | {name} | {r['index_build_seconds']} | {r['queries_per_second']} | "
            f"{r['speedup_vs_exact']} | {r['recall_at_10']} | {r['peak_rss_gib']} |"
        )
    notes = (
        f"{args.queries} queries per run, searched as one batch, top-{K}; 2048-d float16 gallery shards "
        "memory-mapped. "
        "build s: faiss index training and adding (exact search needs none; the first IVF-PQ row builds "
        f"the index, the others reuse it). IVF-PQ: spherical k-means cells, {knn.PQ_BYTES}-byte "
        f"fast-scan codes, its best {knn.REFINE_FACTOR} x 10 candidates ranked by exact distance. "
        "recall@10: overlap with exact "
        "search's top 10. Features: 20 images per identity around random unit centres (see the script)."
    )
    print(
        results.write(
            "bench_search", "Gallery search: exact vs faiss", {"rows": rows}, "\n".join(table), notes
        )
    )


if __name__ == "__main__":
    main()
