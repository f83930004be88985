"""simclr_tf: SimCLR (v1 and v2) on TensorFlow 2 and Keras 3.

Public API (docs/library.md):
  simclr_tf.models: resnet, ProjectionHead, SupervisedHead, SimCLRModel.
  simclr_tf.losses: contrastive_loss, pretraining_loss.
  simclr_tf.optimizers: LARS, WarmUpAndCosineDecay.
  simclr_tf.augment.host: the SimCLR augmentations.
  simclr_tf.data: pretraining_views, build_input_fn, get_dataset_info.
  simclr_tf.config: every setting; simclr_tf.training.tf_trainer.run_experiment.

Nothing is imported here, so `import simclr_tf.run` reports flag errors
before TensorFlow starts.
"""

__version__ = "0.2.0"
