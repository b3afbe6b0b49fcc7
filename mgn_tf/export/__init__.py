"""Export of a trained MGN for deployment, each artefact checked against the Keras model.

    python -m export --weights RUN_DIR --out DIR  (or mgn-export)     # the command line: `cli`

Modules (nothing is imported here):
  cli           flags -> load the run -> export_all -> parity table -> exit code
  exporter      export_all(model, out_dir, ...): every format + the parity table (ExportReport)
  saved_model   SavedModel in TF Serving's layout, `serving_default` (image bytes) and `embed` signatures
  tflite_model  TFLite fp32 / fp16 / dynamic-range int8
  onnx_model    tf2onnx in a lean child process, with its peak RSS
  parity        the parity batch, bounds and table
Names shared with the loader (signatures, tensor keys, export info): mgn_tf.artifacts. Loading any
artefact for inference: mgn_tf.inference.load.
"""
