"""Built-in synthetic dataset: procedurally drawn pedestrians written in the Market-1501 layout.

Needs no download. An identity is a deterministic function of ``(seed, pid)``: clothing colours and
patterns, body proportions, hair, bags. A camera is a deterministic function of ``(seed, camera)``:
colour cast, gamma, background, blur, noise, typical viewpoint and zoom. Every image adds its own jitter
(position, scale, walking pose, viewpoint, clutter, occlusion, brightness), so re-identification across
cameras has to see past lighting and pose, yet a small CNN trained from scratch learns it in minutes.

`generate_synthetic` writes the dataset (layout and marker files: `mgn_tf.data.synthetic.layout`; the
drawing: `mgn_tf.data.synthetic.render`), `ensure_synthetic` writes it only if no complete one with the
same settings is there. From the shell: ``python -m mgn_tf.data.synthetic ROOT [--seed N] ...``.
"""

from __future__ import annotations

from mgn_tf.data.synthetic.layout import MARKER_NAME, SPLITS, ensure_synthetic, generate_synthetic

__all__ = ["generate_synthetic", "ensure_synthetic", "SPLITS", "MARKER_NAME"]
