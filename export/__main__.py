"""python -m export: the export command (mgn_tf.export.cli), run from the repository root."""

from mgn_tf.export.cli import run

run()
