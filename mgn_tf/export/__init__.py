"""Export of a trained MGN for deployment, each artefact checked against the Keras model.

    python -m export --weights RUN_DIR --out DIR  (or mgn-export)     # the command line: `cli`

Modules (nothing is imported here):
  cli           flags -> load the run, calibration images, accuracy split -> export_all -> tables -> exit
  exporter      export_all(model, out_dir, ...): every format + parity and accuracy tables (ExportReport)
  saved_model   SavedModel in TF Serving's layout, `serving_default` (image bytes) and `embed` signatures
  tflite_model  TFLite fp32 / fp16 / dynamic-range int8 / full-integer int8
  quantize      calibration images; static int8 ONNX (QDQ, per-channel)
  accuracy      rank-1 / mAP of every artefact on a labelled split, and the mAP gate
  onnx_model    tf2onnx in a lean child process, with its peak RSS
  boxmot        --profile boxmot: the ONNX with boxmot's NCHW ImageNet-normalised input, its OpenVINO IR
  parity        the parity batch, bounds and table
Names shared with the loader (signatures, tensor keys, export info): mgn_tf.artifacts. Loading any
artefact for inference: mgn_tf.inference.load.
"""
