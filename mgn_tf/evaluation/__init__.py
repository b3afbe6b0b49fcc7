"""Evaluation of a re-ID model on a labelled split: the one pipeline `python -m mgn_tf.evaluate` and the
end of training both run (`pipeline.evaluate`).

Modules, in the order data flows through them:
  settings     EvalSettings, RerankParams: what to compute (field names are the flag names)
  features     FeatureSet: query / gallery features from an `mgn_tf.inference` embedder; feature files
  multi_query  Market-1501 multi-query pooling
  metrics      CMC, mAP, mINP, official Market-1501 mAP; distances and L2 normalisation (numpy)
  rerank       k-reciprocal re-ranking, dense and from features (numpy / scipy)
  ranking      one ranking of the gallery (without or with re-ranking), top lists, exact chance level
  verification same-person distance thresholds: TPR at target FPRs, ROC (numpy)
  plots        CMC curves, ROC and ranked lists (Matplotlib, no display)
  report       the printed table and the figures
  pipeline     evaluate(embedder, split, settings, out_dir) and evaluate_features(...) -> results.json
Nothing here is imported by this file, so `settings` and the numpy modules load without TensorFlow.
"""
