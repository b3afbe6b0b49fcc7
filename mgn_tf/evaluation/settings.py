"""How to evaluate: plain values, checked before any work; field names are the flag names.

`python -m mgn_tf.evaluate` and the end of training (`--eval_at_end`) build the same `EvalSettings` from
the same flags and run the same `mgn_tf.evaluation.pipeline.evaluate`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mgn_tf.errors import ConfigError

DISTANCES: tuple[str, ...] = ("euclidean", "cosine")
POOLING: tuple[str, ...] = ("none", "avg", "max")


@dataclass(frozen=True)
class RerankParams:
    """k-reciprocal re-ranking parameters (Zhong et al. 2017; their Market-1501 defaults)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass(frozen=True)
class EvalSettings:
    """Feature extraction, ranking and report settings.

    eval_batch_size: images per inference batch. eval_flip: average each image's features with its mirror
    image's (paper §4.1). distance / normalize: the query-gallery distance, on L2-normalised features if
    `normalize`. rerank: also rank with k-reciprocal re-ranking (None: not). multi_query: Market-1501
    multi-query pooling ("none", "avg", "max"). max_rank: CMC length. num_ranked_queries: queries in the
    ranked-list figures (0: none). ranked_response_maps: overlay each image's Global-branch response map
    (`mgn_tf.evaluation.response`) on the ranked-list thumbnails (Keras models only). chunk_size: query
    rows per distance / re-ranking chunk.
    """

    eval_batch_size: int = 64
    eval_flip: bool = True
    distance: str = "euclidean"
    normalize: bool = True
    rerank: RerankParams | None = RerankParams()
    multi_query: str = "none"
    max_rank: int = 50
    num_ranked_queries: int = 8
    ranked_response_maps: bool = False
    chunk_size: int = 256
    progress: bool = True

    def validate(self) -> EvalSettings:
        """Raises ConfigError naming the first invalid flag; returns self."""

        def need(ok: bool, flag: str, value: object, message: str) -> None:
            if not ok:
                raise ConfigError(f"--{flag}={value!r}: {message}")

        need(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        need(
            self.distance in DISTANCES, "distance", self.distance, f"accepted values: {', '.join(DISTANCES)}"
        )
        need(
            self.multi_query in POOLING,
            "multi_query",
            self.multi_query,
            f"accepted values: {', '.join(POOLING)}",
        )
        need(self.max_rank >= 1, "max_rank", self.max_rank, "must be >= 1")
        need(self.num_ranked_queries >= 0, "num_ranked_queries", self.num_ranked_queries, "must be >= 0")
        need(self.chunk_size >= 1, "chunk_size", self.chunk_size, "must be >= 1")
        if self.rerank is not None:
            need(self.rerank.k1 >= 1, "k1", self.rerank.k1, "must be >= 1")
            need(self.rerank.k2 >= 1, "k2", self.rerank.k2, "must be >= 1")
            lam = self.rerank.lambda_value
            need(0.0 <= lam <= 1.0, "lambda_value", lam, "must be in [0, 1]")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
