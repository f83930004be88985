"""SimCLRModel: encoder + projection head + optional supervised head."""

import keras
from keras import ops

from simclr_tf import replicas
from simclr_tf import losses
from simclr_tf import optimizers
from simclr_tf.models import heads as heads_lib
from simclr_tf.models import resnet_encoder as resnet_lib

TRAIN_MODES = ("pretrain", "finetune", "linear_eval", "distill")
SUPPORTED_BACKENDS = ("tensorflow", "jax")

# Keys of the dict SimCLRModel.call returns.
FINAL_AVG_POOL = resnet_lib.FINAL_AVG_POOL
PROJ_HEAD_INPUT = "proj_head_input"
PROJ_HEAD_OUTPUT = "proj_head_output"
SUPERVISED_HEAD_INPUT = "supervised_head_input"
LOGITS_SUP = "logits_sup"

# Metric names, as in the authors' code and our TensorBoard tags.
CONTRAST_LOSS = "contrast_loss"
CONTRAST_ACC = "contrast_acc"
CONTRAST_ENTROPY = "contrast_entropy"
SUPERVISED_LOSS = "supervised_loss"
SUPERVISED_ACC = "supervised_acc"
# train_mode=distill: SimCLRv2's loss against the teacher, and how often the
# student's top class is the teacher's.
DISTILL_LOSS = "distill_loss"
DISTILL_AGREEMENT = "distill_agreement"
WEIGHT_DECAY = "weight_decay"
TOTAL_LOSS = "total_loss"
# Logged by the JAX train step: 1.0 while every weight and moving statistic
# is finite after the update, else 0.0 (see faults.NonFiniteWeightsError).
WEIGHTS_FINITE = "weights_finite"
# Logged by the TensorFlow train step: the global norm of the gradients
# (unscaled; under float16 loss scaling, the mean over the steps that were
# applied). Checked beside the losses (see faults.NonFiniteGradientsError).
GRAD_NORM = "grad_norm"
_GRAD_NORM_WEIGHT = "grad_norm_weight"
EVAL_TOP_1 = "label_top_1_accuracy"
EVAL_TOP_5 = "label_top_5_accuracy"
# Evaluation of a distillation stage: the teacher's top-1 on the same batches.
TEACHER_TOP_1 = "teacher_top_1_accuracy"


@keras.saving.register_keras_serializable(package="simclr_tf")
class SimCLRModel(keras.Model):
  """The SimCLR model, trainable with `fit` on TensorFlow or JAX.

  On TensorFlow it trains under any tf.distribute strategy with its own
  train step; on JAX, Keras' JAX trainer differentiates `compute_loss`, and
  `keras.distribution.DataParallel` spreads the global batch over devices.

  Inputs are images (B, H, W, 3 * V) with V views stacked on the channel axis
  (V = 2 for pretraining); the views are moved to the batch axis, so the
  encoder sees (V * B, H, W, 3) with view 1 first. `fit` data are
  `(images, labels)` with one-hot labels (an all-zero row means unlabeled).

  Train modes:
    pretrain: NT-Xent (or another `losses.LOSS_TYPES` loss) on the
      projections, negatives from the global batch. A supervised head, if given, trains beside it on stop_gradient features
      of both views (linear eval while pretraining).
    finetune: supervised loss through the head; the encoder trains except
      what `fine_tune_after_block` froze (see `resnet.freeze_through_block`).
    linear_eval: encoder and the projection layers feeding the head are
      frozen (BatchNorm in inference mode); only the head trains.
    distill: trains like finetune, on SimCLRv2's distillation loss against
      the predictions of a fixed teacher (`set_teacher`), optionally mixed
      with the supervised loss on the labelled examples.

  The loss for gradients is divided by the replica count once, here, because
  the train step sums gradients over replicas. Metrics report unscaled values.

  `compile(train_augmentation=...)` augments on the device: `fit` data are
  then `(uint8 crops (B, H, W, 3 * views), labels)` and the function makes the
  views inside each train step (see `train_loop`).

  Args:
    encoder: a `resnet()` model.
    projection_head: a `ProjectionHead`.
    supervised_head: a `SupervisedHead`, or None.
    train_mode: "pretrain", "finetune" or "linear_eval".
    temperature: NT-Xent temperature.
    hidden_norm: L2-normalise projections in the loss.
    weight_decay: weight decay rate for the loss term (see
      `optimizers.l2_weight_decay`).
    optimizer_name: "lars", "momentum" or "adam": decides which weights the
      loss term decays (LARS decays the rest itself).
    loss_type: the pretraining loss, one of `losses.LOSS_TYPES`.
    semihard_negatives: semi-hard negative mining (nt_logistic and
      margin_triplet only).
    margin: the margin of margin_triplet.
    distill_temperature: tau of the distillation loss (train_mode=distill).
    distill_label_weight: weight of the labelled cross-entropy beside the
      distillation loss, 1 - alpha of SimCLRv2's eq. 3 (train_mode=distill).
    grad_cache_chunks: K > 1 runs each replica's pretraining batch through
      the network in K chunks with exact cached gradients
      (`simclr_tf.models.grad_cache`; TensorFlow only); each chunk then is
      a BatchNorm batch. 1: one pass over the batch.
  """

  def __init__(self, encoder, projection_head, supervised_head=None,
               train_mode="pretrain", temperature=0.1, hidden_norm=True,
               weight_decay=0.0, optimizer_name="lars",
               loss_type=losses.NT_XENT, semihard_negatives=False,
               margin=0.4, distill_temperature=1.0, distill_label_weight=0.0,
               grad_cache_chunks=1, **kwargs):
    super().__init__(**kwargs)
    if train_mode not in TRAIN_MODES:
      raise ValueError(f"`train_mode` must be one of {TRAIN_MODES}. "
                       f"Received: train_mode={train_mode!r}")
    if train_mode != "pretrain" and supervised_head is None:
      raise ValueError(f"train_mode={train_mode!r} needs a supervised head. "
                       "Received: supervised_head=None")
    if temperature <= 0:
      raise ValueError("`temperature` must be positive. Received: "
                       f"temperature={temperature}")
    if loss_type not in losses.LOSS_TYPES:
      raise ValueError(f"`loss_type` must be one of {losses.LOSS_TYPES}. "
                       f"Received: loss_type={loss_type!r}")
    if semihard_negatives and loss_type == losses.NT_XENT:
      raise ValueError("`semihard_negatives` applies to nt_logistic and "
                       "margin_triplet only. Received: loss_type=nt_xent, "
                       "semihard_negatives=True")
    if not isinstance(grad_cache_chunks, int) or grad_cache_chunks < 1:
      raise ValueError("`grad_cache_chunks` must be an integer >= 1. "
                       f"Received: grad_cache_chunks={grad_cache_chunks!r}")
    if grad_cache_chunks > 1 and train_mode != "pretrain":
      raise ValueError("`grad_cache_chunks` applies to pretraining only. "
                       f"Received: train_mode={train_mode!r}, "
                       f"grad_cache_chunks={grad_cache_chunks}")
    self.grad_cache_chunks = grad_cache_chunks
    self.encoder = encoder
    self.projection_head = projection_head
    self.supervised_head = supervised_head
    self.train_mode = train_mode
    self.temperature = temperature
    self.hidden_norm = hidden_norm
    self.weight_decay = weight_decay
    self.optimizer_name = optimizer_name
    self.loss_type = loss_type
    self.semihard_negatives = semihard_negatives
    if distill_temperature <= 0:
      raise ValueError("`distill_temperature` must be positive. Received: "
                       f"distill_temperature={distill_temperature}")
    if not 0.0 <= distill_label_weight <= 1.0:
      raise ValueError("`distill_label_weight` must be in [0, 1]. Received: "
                       f"distill_label_weight={distill_label_weight}")
    self.margin = margin
    self.distill_temperature = distill_temperature
    self.distill_label_weight = distill_label_weight
    self._teacher = None
    self._metric_trackers = {
        name: keras.metrics.Mean(name=name) for name in self._metric_names()}
    # Top-1 by argmax as the authors do: in_top_k would count ties as hits.
    self._top_1 = keras.metrics.CategoricalAccuracy(name=EVAL_TOP_1)
    self._top_5 = keras.metrics.TopKCategoricalAccuracy(5, name=EVAL_TOP_5)
    self._eval_loss = keras.metrics.Mean(name=SUPERVISED_LOSS)
    self._teacher_top_1 = keras.metrics.CategoricalAccuracy(
        name=TEACHER_TOP_1)
    # Set by `compile`; see there.
    self._stop_at_step = None
    self._xla_train_step = False
    self._train_augmentation = None

  def build(self, input_shape):
    features_shape = self.encoder.output_shape
    # Heads restored by `from_config` arrive built.
    if not self.projection_head.built:
      self.projection_head.build(features_shape)
    if self.supervised_head is not None and not self.supervised_head.built:
      _, head_input_shape = self.projection_head.compute_output_shape(
          features_shape)
      self.supervised_head.build(head_input_shape)
    # Freeze only once every sublayer exists: `trainable = False` reaches
    # the sublayers present when it is set, not ones built later.
    if self.train_mode == "linear_eval":
      self.encoder.trainable = False
      self.projection_head.freeze_through_selector()
    if self.train_mode != "pretrain":
      self.projection_head.freeze_after_selector()

  def _metric_names(self):
    names = []
    if self.train_mode == "pretrain":
      names += [CONTRAST_LOSS, CONTRAST_ACC, CONTRAST_ENTROPY]
    if self.train_mode == "distill":
      names += [DISTILL_LOSS, DISTILL_AGREEMENT]
    if self.supervised_head is not None:
      names += [SUPERVISED_LOSS, SUPERVISED_ACC]
    names += [WEIGHT_DECAY, TOTAL_LOSS]
    if keras.backend.backend() == "tensorflow":
      names.append(GRAD_NORM)
    return names

  @property
  def metrics(self):
    if self._is_evaluating:
      evaluated = [self._eval_loss, self._top_1, self._top_5]
      if self._teacher is not None:
        evaluated.append(self._teacher_top_1)
      return evaluated
    return list(self._metric_trackers.values())

  @property
  def _is_evaluating(self):
    return getattr(self, "_evaluating", False)

  def call(self, images, training=False):
    """Runs the network on every view.

    Args:
      images: (B, H, W, 3 * V) float images in [0, 1].
      training: BatchNorm in training mode (frozen parts stay in inference).

    Returns:
      A dict with FINAL_AVG_POOL (V * B, d) encoder features,
      PROJ_HEAD_INPUT (same), PROJ_HEAD_OUTPUT (V * B, proj_out_dim),
      SUPERVISED_HEAD_INPUT and, with a supervised head, LOGITS_SUP.
    """
    channels = images.shape[-1]
    if channels is None or channels % 3:
      raise ValueError("Images must stack RGB views on the last axis "
                       "(3 * views channels). Received: images.shape="
                       f"{tuple(images.shape)}")
    num_views = channels // 3
    if num_views > 1:
      images = ops.concatenate(ops.split(images, num_views, axis=-1), axis=0)
    features = self.encoder(images, training=training)
    projection, head_input = self.projection_head(features, training=training)
    outputs = {
        FINAL_AVG_POOL: features,
        PROJ_HEAD_INPUT: features,
        PROJ_HEAD_OUTPUT: projection,
        SUPERVISED_HEAD_INPUT: head_input,
    }
    if self.supervised_head is not None:
      if self.train_mode == "pretrain":
        # Linear eval beside pretraining must not shape the representation.
        head_input = ops.stop_gradient(head_input)
      outputs[LOGITS_SUP] = self.supervised_head(head_input,
                                                 training=training)
    return outputs

  def compute_losses(self, images, labels, outputs):
    """All loss terms of one training batch (unscaled by replicas).

    Args:
      images: the batch given to `call`.
      labels: (B, C) one-hot labels, all-zero rows for unlabeled examples.
      outputs: what `call` returned for `images`.

    Returns:
      A dict of scalars: TOTAL_LOSS, WEIGHT_DECAY and the terms of the mode,
      plus per-example tensors under CONTRAST_ACC and SUPERVISED_ACC, and
      "label_mask" for the latter.
    """
    terms = {}
    total = 0.0
    if self.train_mode == "pretrain":
      if images.shape[-1] != 6:
        raise ValueError("Pretraining needs two views of each image: images "
                         "of 6 channels. Received: images.shape="
                         f"{tuple(images.shape)}")
      loss, logits_ab, contrast_labels = losses.pretraining_loss(
          outputs[PROJ_HEAD_OUTPUT], loss_type=self.loss_type,
          temperature=self.temperature, hidden_norm=self.hidden_norm,
          semihard_negatives=self.semihard_negatives, margin=self.margin)
      terms[CONTRAST_LOSS] = loss
      terms[CONTRAST_ACC] = losses.contrastive_accuracy(logits_ab,
                                                        contrast_labels)
      terms[CONTRAST_ENTROPY] = losses.contrastive_entropy(logits_ab)
      total += loss
    if self.supervised_head is not None:
      logits = outputs[LOGITS_SUP]
      repeats = ops.shape(logits)[0] // ops.shape(labels)[0]
      labels = ops.tile(ops.cast(labels, "float32"), (repeats, 1))
      mask = ops.cast(ops.sum(labels, axis=-1) > 0, "float32")
      loss = losses.supervised_loss(labels, logits, mask)
      terms[SUPERVISED_LOSS] = loss
      terms[SUPERVISED_ACC] = ops.cast(
          ops.equal(ops.argmax(labels, -1), ops.argmax(logits, -1)),
          "float32")
      terms["label_mask"] = mask
      if self.train_mode == "distill":
        teacher_logits = self.teacher_logits(images)
        distill = losses.distillation_loss(
            teacher_logits, logits, temperature=self.distill_temperature)
        terms[DISTILL_LOSS] = distill
        terms[DISTILL_AGREEMENT] = ops.cast(
            ops.equal(ops.argmax(teacher_logits, -1), ops.argmax(logits, -1)),
            "float32")
        # SimCLRv2 eq. 3 with alpha = 1 - distill_label_weight.
        weight = self.distill_label_weight
        total += (1.0 - weight) * distill + weight * loss
      else:
        total += loss
    decay = optimizers.l2_weight_decay(self.trainable_variables,
                                       self.weight_decay, self.optimizer_name)
    terms[WEIGHT_DECAY] = decay
    terms[TOTAL_LOSS] = total + decay
    return terms

  def set_teacher(self, teacher):
    """Sets the fixed teacher of train_mode=distill.

    The teacher is kept out of this model's tracking: its weights are not
    this model's variables, so they are neither trained, nor saved in its
    checkpoints, nor exported. It runs in inference mode and is frozen.

    Args:
      teacher: a built `SimCLRModel` with a supervised head of this model's
        classes, made in the same strategy scope; None removes it.

    Raises:
      ValueError: a teacher without a supervised head, or of other classes.
    """
    if teacher is not None:
      if teacher.supervised_head is None:
        raise ValueError("The teacher needs a supervised head. Received: "
                         "a teacher without one")
      ours, theirs = (self.supervised_head.num_classes,
                      teacher.supervised_head.num_classes)
      if ours != theirs:
        raise ValueError("The teacher must predict the student's classes. "
                         f"Received: teacher classes={theirs}, student "
                         f"classes={ours}")
      teacher.trainable = False
    # Set past Keras' and tf.Module's attribute tracking on purpose.
    object.__setattr__(self, "_teacher", teacher)

  @property
  def teacher(self):
    """The teacher given to `set_teacher`, or None."""
    return self._teacher

  def teacher_logits(self, images):
    """The teacher's logits for `images`, in inference mode, no gradient.

    Args:
      images: a batch as `call` takes it.

    Returns:
      (B, classes) float32 logits.

    Raises:
      ValueError: no teacher was set.
    """
    if self._teacher is None:
      raise ValueError("train_mode=distill needs a teacher: call "
                       "`set_teacher` before training.")
    logits = self._teacher(images, training=False)[LOGITS_SUP]
    return ops.stop_gradient(ops.cast(logits, "float32"))

  def _update_train_metrics(self, terms):
    for name, tracker in self._metric_trackers.items():
      if name == SUPERVISED_ACC:
        tracker.update_state(terms[name], sample_weight=terms["label_mask"])
      elif name == GRAD_NORM:
        tracker.update_state(terms[name],
                             sample_weight=terms[_GRAD_NORM_WEIGHT])
      else:
        tracker.update_state(terms[name])
    return self.metric_results()

  def metric_results(self):
    """Current training metric values, averaged since the last reset.

    Returns:
      A dict from metric name to scalar tensor.
    """
    return {name: tracker.result()
            for name, tracker in self._metric_trackers.items()}

  def reset_train_metrics(self):
    """Starts a new averaging window for the training metrics."""
    for tracker in self._metric_trackers.values():
      tracker.reset_state()

  def compile(self, optimizer, *, steps_per_loop=1, jit_compile=False,
              train_augmentation=None, stop_at_step=None, **kwargs):
    """Configures training.

    Args:
      optimizer: a Keras optimizer (create it in the strategy scope).
      steps_per_loop: optimizer steps per host call of the train function.
      jit_compile: compile each replica's train step with XLA, as far as the
        strategy allows (`train_loop.xla_scope`).
      train_augmentation: None, or a function `(images, replica_id, step)`
        from a training batch's images to the model's input views, run on
        the device at the start of every train step (the on-device
        augmentation: uint8 images in, float views out; the replica and
        the optimizer step seed its draws). `fit` data are then
        `(uint8 images (B, H, W, 3), labels)`. On JAX the replica is 0:
        one program holds the global batch.
      stop_at_step: the optimizer step at which `fit` stops, whatever it
        asks for (so the last loop of a run ends exactly there); None runs
        every step `fit` asks for.
      **kwargs: other `keras.Model.compile` arguments.
    """
    if stop_at_step is not None and stop_at_step < 0:
      raise ValueError("`stop_at_step` must be >= 0. Received: "
                       f"stop_at_step={stop_at_step}")
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
      raise ValueError(f"SimCLRModel trains on the {SUPPORTED_BACKENDS} "
                       f"Keras backends. Received: backend={backend!r}")
    if backend == "tensorflow":
      # Keras' own jit and multi-step train function fail under
      # MirroredStrategy; `make_train_function` below replaces them.
      super().compile(optimizer=optimizer, steps_per_execution=steps_per_loop,
                      jit_compile=False, **kwargs)
    else:
      # Keras' JAX trainer differentiates `compute_loss` and compiles the
      # whole step; uncompiled JAX runs op by op, far too slowly to train.
      super().compile(optimizer=optimizer, steps_per_execution=steps_per_loop,
                      jit_compile=True, **kwargs)
      if self.grad_cache_chunks > 1:
        raise ValueError("`grad_cache_chunks` is a TensorFlow-backend "
                         f"feature. Received: backend={backend!r}, "
                         f"grad_cache_chunks={self.grad_cache_chunks}")
      if stop_at_step is not None:
        raise ValueError("`stop_at_step` is a TensorFlow-backend feature; on "
                         f"{backend} ask `fit` for the steps to run. "
                         f"Received: stop_at_step={stop_at_step}")
    self._xla_train_step = jit_compile
    self._train_augmentation = train_augmentation
    self._stop_at_step = stop_at_step

  @property
  def train_augmentation(self):
    """The on-device augmentation given to `compile`, or None."""
    return self._train_augmentation

  @property
  def stop_at_step(self):
    """The step `fit` stops at, given to `compile`, or None."""
    return self._stop_at_step

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    # A private override, for a Keras 3.15 bug: Keras builds the model from
    # a batch it pulls and sums across replicas (AddN), which fails when
    # replicas hold different batch sizes (a short eval split).
    # tests/test_keras_workarounds.py reproduces the bug with plain Keras and
    # fails once it is fixed. Ours is built at construction; the optimizer
    # must be built in the strategy scope by then too
    # (`build_optimizer_slots`).
    if self.built and (self.optimizer is None or self.optimizer.built):
      return
    super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

  def build_optimizer_slots(self):
    """Creates the optimizer's variables now, inside the current scope.

    Call it in `strategy.scope()` before restoring a checkpoint: slot
    variables created later, in a replica context, would not be mirrored,
    and a checkpoint's optimizer state needs them to exist to be restored.
    """
    if not self.optimizer.built:
      self.optimizer.build(self.trainable_variables)

  def make_train_function(self, force=False):
    if keras.backend.backend() != "tensorflow":
      return super().make_train_function(force=force)
    if self.train_function is not None and not force:
      return self.train_function
    from simclr_tf.models import train_loop  # TF-specific distribution plumbing.
    self.train_function = train_loop.make_train_function(
        self, self.steps_per_execution, self._xla_train_step)
    return self.train_function

  def make_test_function(self, force=False):
    if keras.backend.backend() != "tensorflow":
      return super().make_test_function(force=force)
    if self.test_function is not None and not force:
      return self.test_function
    from simclr_tf.models import train_loop  # TF-specific distribution plumbing.
    self.test_function = train_loop.make_test_function(self)
    return self.test_function

  def train_step(self, *args):
    # Keras' trainers call `train_step(data)` on TensorFlow and
    # `train_step(state, data)` on JAX.
    if keras.backend.backend() == "tensorflow":
      return self._tf_train_step(*args)
    return self._jax_train_step(*args)

  def _jax_train_step(self, state, data):
    """Keras' JAX step, after the on-device augmentation if there is one.

    Keras differentiates `compute_loss` and applies the optimizer. The
    augmentation's seed is the optimizer's step count, which is part of the
    step's state, so a resumed run draws the views it would have drawn.
    The logs add `WEIGHTS_FINITE`.
    """
    if self._train_augmentation is not None:
      images, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(
          data)
      optimizer_variables = state[2]
      step = optimizer_variables[self._iterations_index()]
      images = self._train_augmentation(images, 0, step)
      data = (images, labels) if sample_weight is None else (
          images, labels, sample_weight)
    logs, state = super().train_step(state, data)
    # XLA's vectorised CPU max (ReLU) maps NaN to a number, so a fault can
    # poison the weights while the loss stays finite: report them too.
    trainable, non_trainable = state[0], state[1]
    finite = ops.all(ops.stack([ops.all(ops.isfinite(value)) for value in
                                list(trainable) + list(non_trainable)]))
    logs = dict(logs)
    logs[WEIGHTS_FINITE] = ops.cast(finite, "float32")
    return logs, state

  def _iterations_index(self):
    paths = [variable.path for variable in self.optimizer.variables]
    return paths.index(self.optimizer.iterations.path)

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                   training=True):
    """The loss Keras' own trainers differentiate (JAX backend).

    Training: `compute_losses`' total, with the training metrics updated
    from the same terms. Evaluation: the supervised head's cross-entropy,
    with top-1/top-5 updated. The TensorFlow backend runs its own
    `train_step`/`test_step` (for `tf.distribute`) on the same terms.

    Args:
      x: the images given to `call`.
      y: (B, C) one-hot labels.
      y_pred: what `call` returned for `x`.
      sample_weight: evaluation: optional (B,) weights, 0 for examples
        to leave out (stand-ins for unreadable files). Training ignores
        it (unlabeled examples have all-zero labels).
      training: whether this is a training step.

    Returns:
      A scalar float32 loss.
    """
    if not training or self._is_evaluating:
      return self._update_eval_metrics(y, y_pred[LOGITS_SUP], sample_weight)
    terms = self.compute_losses(x, y, y_pred)
    self._update_train_metrics(terms)
    return terms[TOTAL_LOSS] / replicas.num_replicas_in_sync()

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    # The metrics were updated in `compute_loss`, from the same terms.
    del x, y, y_pred, sample_weight
    return {metric.name: metric.result() for metric in self.metrics}

  def _update_eval_metrics(self, labels, logits, sample_weight=None):
    targets = ops.cast(labels, "float32")
    per_example = keras.losses.categorical_crossentropy(
        targets, ops.cast(logits, "float32"), from_logits=True)
    self._eval_loss.update_state(per_example, sample_weight=sample_weight)
    self._top_1.update_state(targets, logits, sample_weight=sample_weight)
    self._top_5.update_state(targets, logits, sample_weight=sample_weight)
    if sample_weight is None:
      return ops.mean(per_example)
    weight = ops.cast(sample_weight, "float32")
    return ops.sum(per_example * weight) / ops.maximum(ops.sum(weight), 1.0)

  def _tf_train_step(self, data):
    import tensorflow as tf  # Gradient tapes are the TF backend's.
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    if self.grad_cache_chunks > 1:
      from simclr_tf.models import grad_cache  # pylint: disable=g-import-not-at-top
      keys = [PROJ_HEAD_OUTPUT]
      if self.supervised_head is not None:
        keys.append(LOGITS_SUP)
      terms, gradients, variables = grad_cache.cached_gradients(
          self, images, labels, self.grad_cache_chunks, keys)
    else:
      with tf.GradientTape() as tape:
        outputs = self(images, training=True)
        terms = self.compute_losses(images, labels, outputs)
        loss = terms[TOTAL_LOSS] / replicas.num_replicas_in_sync()
        loss = self.optimizer.scale_loss(loss)
      variables = self.trainable_variables
      gradients = tape.gradient(loss, variables)
    # The replicas' gradients are summed here rather than inside the
    # optimizer, so that the logged norm is the step's global gradient on
    # any number of replicas (one all-reduce, as before).
    gradients = _sum_over_replicas(gradients)
    _leave_aggregation_to_the_step(self.optimizer)
    self.optimizer.apply_gradients(zip(gradients, variables))
    # A non-finite gradient poisons every weight it touches, but need not
    # show in this step's loss: under oneDNN graph rewrites TensorFlow's
    # fused BatchNorm turns NaN inputs into finite outputs. So the norm is
    # logged and checked on its own (`faults`).
    norm = tf.linalg.global_norm(gradients)
    if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
      # Scaled gradients; a non-finite one is a skipped step, not damage.
      norm = norm / ops.cast(self.optimizer.scale_loss(1.0), norm.dtype)
      weight = ops.cast(tf.math.is_finite(norm), "float32")
      norm = tf.where(weight > 0, norm, ops.zeros_like(norm))
    else:
      weight = ops.ones(())
    terms[GRAD_NORM] = ops.cast(norm, "float32")
    terms[_GRAD_NORM_WEIGHT] = weight
    return self._update_train_metrics(terms)

  def test_step(self, *args):
    if self.supervised_head is None:
      raise ValueError("Evaluation needs a supervised head: pretrain with "
                       "lineareval_while_pretraining, or run linear_eval / "
                       "finetune first.")
    if keras.backend.backend() != "tensorflow":
      # Keras' step, through `compute_loss` in evaluation mode.
      return super().test_step(*args)
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(args[0])

    def update():
      logits = self(images, training=False)[LOGITS_SUP]
      self._update_eval_metrics(labels, logits)
      if self._teacher is not None:
        self._teacher_top_1.update_state(ops.cast(labels, "float32"),
                                         self.teacher_logits(images))
      return ops.zeros(())

    # At the end of a split some replicas get an empty batch. Skip it: the
    # CPU convolution returns a wrongly shaped tensor for zero examples.
    ops.cond(ops.shape(images)[0] > 0, update, lambda: ops.zeros(()))
    return {m.name: m.result() for m in self.metrics}

  def evaluate(self, *args, **kwargs):
    # One batch per call: Keras' multi-step test loop fails under
    # MirroredStrategy, and evaluation is not the bottleneck.
    steps_per_loop = self.steps_per_execution
    self.steps_per_execution = 1
    self._evaluating = True
    try:
      return super().evaluate(*args, **kwargs)
    finally:
      self._evaluating = False
      self.steps_per_execution = steps_per_loop

  def get_config(self):
    config = super().get_config()
    config.update(
        encoder=keras.saving.serialize_keras_object(self.encoder),
        projection_head=keras.saving.serialize_keras_object(
            self.projection_head),
        supervised_head=(keras.saving.serialize_keras_object(
            self.supervised_head) if self.supervised_head else None),
        train_mode=self.train_mode, temperature=self.temperature,
        hidden_norm=self.hidden_norm, weight_decay=self.weight_decay,
        optimizer_name=self.optimizer_name, loss_type=self.loss_type,
        semihard_negatives=self.semihard_negatives, margin=self.margin,
        distill_temperature=self.distill_temperature,
        distill_label_weight=self.distill_label_weight,
        grad_cache_chunks=self.grad_cache_chunks)
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    for key in ("encoder", "projection_head", "supervised_head"):
      if config.get(key) is not None:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)


def build_from_experiment(config, *, num_classes: int,
                          with_supervised_head: bool) -> SimCLRModel:
  """`build_simclr_model` with the rest taken from an `ExperimentConfig`.

  The training programs of both backends build their model this way.

  Args:
    config: a `simclr_tf.config.ExperimentConfig`: model, image size, train
      mode, loss and weight decay settings.
    num_classes: classes of the supervised head.
    with_supervised_head: add the supervised head.

  Returns:
    A built `SimCLRModel`.
  """
  return build_simclr_model(
      config.model, image_size=config.data.image_size,
      num_classes=num_classes, train_mode=config.run.train_mode,
      with_supervised_head=with_supervised_head,
      temperature=config.loss.temperature,
      hidden_norm=config.loss.hidden_norm,
      weight_decay=config.optimizer.weight_decay,
      optimizer_name=config.optimizer.optimizer,
      loss_type=config.loss.loss_type,
      semihard_negatives=config.loss.semihard_negatives,
      margin=config.loss.margin,
      distill_temperature=config.loss.distill_temperature,
      distill_label_weight=config.loss.distill_label_weight,
      grad_cache_chunks=config.run.grad_cache_chunks)


def build_simclr_model(model_config, *, image_size, num_classes, train_mode,
                       with_supervised_head, temperature=0.1,
                       hidden_norm=True, weight_decay=0.0,
                       optimizer_name="lars", loss_type=losses.NT_XENT,
                       semihard_negatives=False, margin=0.4,
                       distill_temperature=1.0, distill_label_weight=0.0,
                       grad_cache_chunks=1):
  """Builds a `SimCLRModel` from a `config.ModelConfig`.

  Call it inside `strategy.scope()` so variables are mirrored.

  Args:
    model_config: a `simclr_tf.config.ModelConfig`.
    image_size: input side; picks the CIFAR stem at <= 32 px unless the
      config says otherwise.
    num_classes: classes of the supervised head.
    train_mode: one of `TRAIN_MODES`.
    with_supervised_head: add the supervised head (always true outside
      pretraining).
    temperature: NT-Xent temperature.
    hidden_norm: L2-normalise projections in the loss.
    weight_decay: weight decay rate.
    optimizer_name: optimizer the weight decay is split with.
    loss_type, semihard_negatives, margin: the pretraining loss (see
      `losses.pretraining_loss`).
    distill_temperature, distill_label_weight: the distillation loss of
      train_mode=distill (see `SimCLRModel`).
    grad_cache_chunks: chunks of the cached-gradient step (see
      `SimCLRModel`); 1 for none.

  Returns:
    A built `SimCLRModel`.
  """
  encoder = resnet_lib.resnet(
      model_config.resnet_depth,
      width_multiplier=model_config.width_multiplier,
      cifar_stem=model_config.use_cifar_stem(image_size),
      sk_ratio=model_config.sk_ratio, se_ratio=model_config.se_ratio,
      sync_bn=model_config.global_bn,
      bn_momentum=model_config.batch_norm_decay, name="encoder")
  if train_mode in ("finetune", "distill"):
    resnet_lib.freeze_through_block(encoder,
                                    model_config.fine_tune_after_block)
  projection_head = heads_lib.ProjectionHead(
      model_config.proj_head_mode, model_config.proj_out_dim,
      model_config.num_proj_layers, model_config.proj_selector,
      momentum=model_config.batch_norm_decay,
      synchronized=model_config.global_bn, name="projection_head")
  supervised_head = None
  if with_supervised_head or train_mode != "pretrain":
    supervised_head = heads_lib.SupervisedHead(
        num_classes, zero_init=model_config.zero_init_logits_layer,
        feature_norm=model_config.supervised_head_feature_norm,
        momentum=model_config.batch_norm_decay,
        synchronized=model_config.global_bn)
  model = SimCLRModel(encoder, projection_head, supervised_head,
                      train_mode=train_mode, temperature=temperature,
                      hidden_norm=hidden_norm, weight_decay=weight_decay,
                      optimizer_name=optimizer_name, loss_type=loss_type,
                      semihard_negatives=semihard_negatives, margin=margin,
                      distill_temperature=distill_temperature,
                      distill_label_weight=distill_label_weight,
                      grad_cache_chunks=grad_cache_chunks, name="simclr")
  num_views = 2 if train_mode == "pretrain" else 1
  model(ops.zeros((1, image_size, image_size, 3 * num_views)))
  return model


def _sum_over_replicas(gradients):
  """The gradients summed over the replicas in sync (None stays None)."""
  import tensorflow as tf  # tf.distribute is the TF backend's.
  context = tf.distribute.get_replica_context()
  present = [index for index, gradient in enumerate(gradients)
             if gradient is not None]
  if context is None or not present:
    return list(gradients)
  summed = context.all_reduce(tf.distribute.ReduceOp.SUM,
                              [gradients[index] for index in present])
  result = list(gradients)
  for index, gradient in zip(present, summed):
    result[index] = gradient
  return result


def _identity_aggregation(grads_and_vars):
  return list(grads_and_vars)


def _leave_aggregation_to_the_step(optimizer):
  """Stops `optimizer` from summing gradients the step has summed already.

  Keras 3's TensorFlow optimizers all-reduce inside `apply_gradients`
  (`_all_reduce_sum_gradients`) and have no switch to skip it, unlike
  Keras 2's `experimental_aggregate_gradients=False`; a second sum would
  multiply every gradient by the number of replicas. The loss-scale
  wrapper's finiteness check then also sees the same summed gradients on
  every replica, as its own comment assumes.

  Args:
    optimizer: the model's optimizer, possibly a LossScaleOptimizer.

  Raises:
    RuntimeError: this Keras has no such method to replace (a newer
      Keras changed its internals; the pinned version has it).
  """
  chain = [optimizer]
  inner = getattr(optimizer, "inner_optimizer", None)
  if inner is not None:
    chain.append(inner)
  for each in chain:
    if not hasattr(each, "_all_reduce_sum_gradients"):
      raise RuntimeError(
          f"keras {keras.__version__}: {type(each).__name__} has no "
          "_all_reduce_sum_gradients; install the Keras version in "
          "requirements.txt.")
    # Set on the instance, so only this model's optimizer changes.
    each._all_reduce_sum_gradients = _identity_aggregation
