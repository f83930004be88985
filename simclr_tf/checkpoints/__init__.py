"""Checkpoints: ours, the authors', Keras weights, and what `--checkpoint` names.

Modules, bottom to top:
  ours: a run's `tf.train.Checkpoint`s: save, verify, resume, and restoring
    a model's parts by name.
  authors: the authors' TF2 SavedModels and `ckpt-N` files, read into our
    models (built on `ours`).
  pretrained: the `--checkpoint` router: a run's checkpoint or model_dir, an
    export, or the authors' formats, each to its reader.
  keras_weights: the checkpoints of the non-TensorFlow trainer; TF-free.

Nothing is imported here, so that `keras_weights` serves the JAX backend
without TensorFlow.
"""
