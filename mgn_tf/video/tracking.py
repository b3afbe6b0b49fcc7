"""Linking plain detections into tracklets with an existing tracker fed mgn_tf's embeddings.

No tracker is written here: boxmot's (https://github.com/mikel-brostrom/boxmot, the `tracking` extra,
which pulls PyTorch) BoT-SORT, DeepOCSORT and StrongSORT take precomputed appearance embeddings with
the detections (boxmot 25: `Detections(..., embeddings=...)` passed to `tracker.update`, which answers
with the track id of each detection row it kept). `appearance=False` runs the same tracker on motion
and overlap alone, the baseline bench_tracking compares with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mgn_tf.errors import ConfigError

TRACKERS = ("botsort", "deepocsort", "strongsort")
_CLASSES = {"botsort": "BotSort", "deepocsort": "DeepOcSort", "strongsort": "StrongSort"}


def boxmot_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("boxmot") is not None


class BoxmotTracker:
    """One camera's boxmot tracker; `update` gives each box of a frame its track id (None: not kept)."""

    def __init__(self, name: str, fps: float | None = None, appearance: bool = True):
        if name not in TRACKERS:
            raise ConfigError(f"--tracker={name}: must be one of {', '.join(TRACKERS)}")
        try:
            import boxmot
            import torch
        except ImportError as exc:
            raise ConfigError(
                f"--tracker={name}: needs boxmot (pip install -e '.[tracking]'): {exc}"
            ) from exc
        self.name, self._torch, self._boxmot = name, torch, boxmot
        options = {"reid_weights": None, "use_embeddings": appearance}
        if name == "botsort":
            # ECC camera-motion compensation is for hand-held / vehicle cameras; fixed cameras need none.
            options.update(frame_rate=int(round(fps or 30)), use_cmc=False)
        if name == "strongsort" and not appearance:
            raise ConfigError("--tracker=strongsort: StrongSORT always matches by appearance")
        if name == "strongsort":
            options.pop("use_embeddings")
        self._tracker = getattr(boxmot, _CLASSES[name])(**options)

    def update(
        self, frame_number: int, frame_rgb: np.ndarray, boxes: Sequence[tuple[int, int, int, int]],
        scores: Sequence[float], embeddings: np.ndarray,
    ) -> list[int | None]:  # fmt: skip
        """Track ids of `boxes` (left, top, right, bottom pixels in this frame), in their order."""
        from boxmot.structures.detections import Detections
        from boxmot.structures.geometry import Boxes

        torch = self._torch
        count = len(boxes)
        detections = Detections(
            geometry=Boxes(torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))),
            scores=torch.as_tensor(np.clip(np.asarray(scores, np.float32), 0, 1)),  # boxmot wants [0, 1]
            class_ids=torch.zeros(count, dtype=torch.int64),
            sample_id=f"frame-{frame_number}",
            embeddings=torch.as_tensor(np.ascontiguousarray(embeddings, np.float32)),
        )
        bgr = np.ascontiguousarray(frame_rgb[:, :, ::-1])
        tracks = self._tracker.update(detections, bgr)
        ids: list[int | None] = [None] * count
        for row, track_id in zip(tracks.detection_indices.tolist(), tracks.track_ids.tolist(), strict=True):
            if 0 <= row < count:
                ids[row] = int(track_id)
        return ids


def make_tracker(name: str, fps: float | None = None, appearance: bool = True) -> BoxmotTracker:
    return BoxmotTracker(name, fps, appearance)
