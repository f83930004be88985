"""The `tf.data` input pipeline: one dataset per input pipeline (replica).

Every random crop is taken from the full-resolution decoded image, and the
evaluation view is the authors' (an aspect-preserving centre crop, then a
bicubic resize) whatever the cache, host count or `augment.on_device`.
Nothing is resized before a crop. Two paths, by the source:

Same-size images (tfds datasets with a fixed shape, e.g. CIFAR-10 and the
built-in `synthetic_shapes`):

    source shard -> label subset -> [decode -> cache, if it fits]
      -> shuffle -> repeat -> [decode] -> batch -> crops and distortion of
      whole batches (XLA) | evaluation transform per image

Images of any size (image folders, ImageNet):

    source shard -> label subset -> read bytes -> header check (unusable
      files skipped and counted) -> [cache encoded bytes, if they fit]
      -> shuffle encoded -> repeat -> decode the crop windows at full
      resolution (for one view JPEGs decode only the window) -> resize
      -> batch -> flip and colour distortion of whole batches (XLA)
      | decode -> evaluation transform per image

With `augment_config.on_device` the training pipeline stops after the crops:
the device does flip, colour, grayscale and blur
(`augment.distort_batch_views`).

Elements are `(images, labels)`:

- images: float32 (per_replica_batch, size, size, 3 * num_views) in [0, 1],
  views on the channel axis as in the authors' code (view 1 is channels 0:3,
  view 2 channels 3:6). Evaluation views are the same deterministic transform
  repeated. With `augment_config.on_device` and `training`, images are the
  views' crops as uint8 of the same shape, not yet flipped or distorted.
- labels: float32 one-hot (per_replica_batch, num_classes); an example
  without a label has an all-zero row.

Augmentations draw from stateless seeds that fold the pipeline's
`input_pipeline_id` into `seed`: every worker and input pipeline draws its
own, and a seed and cluster shape reproduce them.

The training stream is a function of its position, so a resumed run
continues it (`start_step`) instead of replaying its head:

- epoch e of a pipeline is its shard (files in the seeded order of the
  source) shuffled with a seed of (seed, pipeline, e), the same whichever
  epoch the input starts at;
- the crop draws of the stream's n-th example and the distortion draws of
  its n-th batch are seeded by (seed, pipeline, n), not by how far this
  input has been iterated;
- `start_step` starts the stream at the epoch and example the interrupted
  run had reached: whole epochs cost nothing, the examples already done in
  the current epoch are skipped before decoding.
"""

import math
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from simclr_tf.augment import host as augment
from simclr_tf.data import encoded_image
from simclr_tf.data import registry
from simclr_tf.data import skipped_files
from simclr_tf.data import source as source_lib
from simclr_tf.data.errors import DataError
from simclr_tf.data.source import DatasetInfo

# `cache_dataset=None` caches a pipeline's shard when it needs at most this
# much memory (decoded same-size images, or encoded bytes).
AUTO_CACHE_MAX_BYTES = 2 * 1024 ** 3
_AUTOTUNE = tf.data.AUTOTUNE
_PROBLEM = "_problem"
# The graph-level seed of each epoch's shuffle (TensorFlow's default one).
_EPOCH_GRAPH_SEED = 87654321


def _validate(data_config, augment_config=None) -> None:
  try:
    data_config.validate()
    if augment_config is not None:
      augment_config.validate()
  except ValueError as e:
    raise DataError(str(e)) from e


def get_dataset_info(data_config, supervised: bool = True) -> DatasetInfo:
  """Prepares and checks the source, and describes it.

  Generates `synthetic_shapes` on first use, lists image folders (decoding
  nothing), and checks tfds datasets are prepared in `data_dir`.

  Args:
    data_config: a `simclr_tf.config.DataConfig`.
    supervised: whether the stage trains on labeled examples only
      (fine-tuning, linear evaluation); pretraining reads every image.

  Returns:
    A `DatasetInfo`. When `supervised`, `num_train_examples` counts the
    label subset if `label_fraction` or `labels_per_class` is set.

  Raises:
    DataError: with a one-line message for the user.
  """
  _validate(data_config)
  cfg = data_config
  source = registry.get_source(cfg)
  num_train = source.num_examples(cfg.train_split)
  num_eval = source.num_examples(cfg.eval_split)
  keep = registry.get_label_subset_keys(cfg) if supervised else None
  if keep is not None:
    num_train = len(keep)
  return DatasetInfo(
      num_classes=source.num_classes, num_train_examples=num_train,
      num_eval_examples=num_eval, image_shape=source.image_shape,
      train_has_labels=source.has_labels(cfg.train_split))


def shuffle_buffer_size(data_config, per_replica_batch: int) -> int:
  """The training shuffle buffer: the setting, or the authors' default.

  Args:
    data_config: a `simclr_tf.config.DataConfig`.
    per_replica_batch: images per replica per step.

  Returns:
    `shuffle_buffer` if set, else 10x the per-replica batch (50x at 32 px and
    below), as the authors' `build_input_fn`.
  """
  if data_config.shuffle_buffer is not None:
    return data_config.shuffle_buffer
  factor = 50 if data_config.image_size <= 32 else 10
  return factor * per_replica_batch


def pipeline_seed(seed: Optional[int], input_pipeline_id: int
                  ) -> Optional[int]:
  """The seed of one input pipeline's draws: `seed` with the id folded in.

  Args:
    seed: the run's seed, or None for nondeterministic draws.
    input_pipeline_id: this pipeline's index.

  Returns:
    An int in [0, 2**31), or None.
  """
  if seed is None:
    return None
  state = np.random.SeedSequence([seed, input_pipeline_id]).generate_state(
      1, np.uint32)
  return int(state[0] >> 1)


def batch_augmenter(size: int, augment_config, num_views: int,
                    transform=augment.augment_batch_views):
  """A batched host transform of `augment`, compiled with XLA.

  The colour jitter applies its four ops in a per-image order as four dense
  passes over the batch; XLA fuses their many small elementwise ops, which
  makes the whole transform about 3x faster on CPU (measured at 32 px,
  batch 256, in `Dataset.map`).

  Args:
    size: output side.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    num_views: views per image.
    transform: `augment.augment_batch_views` (crops and distortion),
      `augment.crop_views_batch` (crops only) or
      `augment.distort_batch_views` (of crops made already).

  Returns:
    A function `(images, seed=None)` giving the transform's output.
  """
  def compiled(images, seed=None):
    with augment.xla_random():
      return transform(images, size=size, augment_config=augment_config,
                       num_views=num_views, seed=seed)

  return tf.function(compiled, jit_compile=True)


def build_input_fn(data_config, augment_config, *, training: bool,
                   num_views: int, global_batch_size: int,
                   seed: Optional[int] = None, supervised: bool = True,
                   start_step: int = 0,
                   eval_keys: Optional[np.ndarray] = None
                   ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """Builds the `input_fn` for `strategy.distribute_datasets_from_function`.

  The source is opened (and synthetic data generated) here, so bad settings
  fail before training starts.

  Args:
    data_config: a `simclr_tf.config.DataConfig`.
    augment_config: a `simclr_tf.config.AugmentConfig`.
    training: True: the train split, shuffled, repeated forever, augmented,
      `drop_remainder=True`, non-deterministic order. False: the eval split,
      one pass in order, evaluation transform, last partial batch kept, so
      every example counts once.
    num_views: augmented views per image on the channel axis (2 to pretrain,
      1 to fine-tune or evaluate).
    global_batch_size: images per step over all replicas.
    seed: seed of the shuffles and augmentations (None: random).
    supervised: with a label subset, True (fine-tuning, linear evaluation)
      reads only the subset's examples; False (pretraining) reads every
      example, and only the subset's keep their labels.
    start_step: training only: the optimizer steps already done (a resumed
      run); the stream starts where an uninterrupted run is after them,
      with the same order and draws (exact with a `seed` when every listed
      example is usable; without a seed the draws are fresh anyway).
    eval_keys: evaluation only: read only the examples with these keys (a
      sample of the split, e.g. the kNN monitor's bank); None reads all.

  Returns:
    `input_fn(input_context)` returning this pipeline's dataset of
    `(images, labels)`; see the module docstring for the element format.
    Passing `None` reads everything as one replica.

  Raises:
    DataError: bad settings or data. `input_fn` raises it when the global
      batch does not divide over the replicas.
  """
  _validate(data_config, augment_config)
  if num_views < 1:
    raise DataError(f"`num_views` must be at least 1. Received: "
                    f"num_views={num_views}")
  if global_batch_size < 1:
    raise DataError(f"The global batch size must be positive. Received: "
                    f"global_batch_size={global_batch_size}")
  if start_step < 0 or (start_step and not training):
    raise DataError(f"`start_step` must be 0 for evaluation and at least 0 "
                    f"for training. Received: start_step={start_step}")
  cfg, aug = data_config, augment_config
  source = registry.get_source(cfg)
  split = cfg.train_split if training else cfg.eval_split
  num_examples = source.num_examples(split)
  if eval_keys is not None and training:
    raise DataError("`eval_keys` selects examples of an evaluation pass; "
                    "training reads the label subset instead.")
  subset = registry.get_label_subset_keys(cfg) if training else None
  keep = subset if supervised else None
  labeled = None if supervised else subset
  if eval_keys is not None:
    keep = np.asarray(eval_keys)
  if keep is not None:
    num_examples = len(keep)
  num_classes = source.num_classes
  size = cfg.image_size
  on_device = training and aug.on_device
  fixed = source.image_shape
  if fixed is not None:
    stored_bytes = num_examples * math.prod(fixed)
  else:
    stored_bytes = source.encoded_bytes(split)
    if stored_bytes is not None and keep is not None:
      stored_bytes *= len(keep) / max(source.num_examples(split), 1)

  # Examples per epoch of each pipeline, counted once per `input_fn` when
  # resuming (the example views and the training input both need it).
  counts = {}

  def input_fn(input_context: Optional[tf.distribute.InputContext] = None):
    context = input_context or tf.distribute.InputContext()
    replicas = context.num_replicas_in_sync
    if global_batch_size % replicas:
      raise DataError(
          f"The global batch size {global_batch_size} does not divide over "
          f"{replicas} replicas; use a multiple of {replicas}.")
    batch = context.get_per_replica_batch_size(global_batch_size)
    pipelines = max(context.num_input_pipelines, 1)
    own_seed = pipeline_seed(seed, context.input_pipeline_id)
    # A pipeline feeds its replicas one batch each per step.
    first_batch = start_step * max(replicas // pipelines, 1)
    cache = cfg.cache_dataset
    if cache is None:
      cache = (stored_bytes is not None and
               stored_bytes / pipelines <= AUTO_CACHE_MAX_BYTES)
    ds = source.read(split, input_context=context,
                     shuffle_files=training and cfg.shuffle_files, seed=seed,
                     keep_keys=keep, labeled_keys=labeled)
    if fixed is not None:
      if cache:
        ds = ds.map(source.decode, num_parallel_calls=_AUTOTUNE)
        uncached, ds = ds, ds.cache()
    else:
      ds = _usable_encoded(ds, source, cfg.max_image_pixels)
      uncached = ds
      if cache:
        ds = ds.cache()
    if training:
      if fixed is not None and not cache:
        uncached = ds
      ds = _training_stream(ds, shuffle_buffer_size(cfg, batch), own_seed,
                            first_batch * batch, counts,
                            context.input_pipeline_id, uncached)
    if fixed is not None and not cache:
      ds = ds.map(source.decode, num_parallel_calls=_AUTOTUNE)

    if not training:
      ds = _evaluation_views(ds, source, fixed, size, aug, num_views)
      ds = ds.batch(batch, drop_remainder=False)
    elif fixed is not None:
      ds = _same_size_training_views(ds, size, aug, num_views, batch,
                                     own_seed, on_device, first_batch)
    else:
      ds = _any_size_training_views(ds, source, size, aug, num_views, batch,
                                    own_seed, on_device, first_batch)
    ds = ds.map(lambda images, labels: (images,
                                        tf.one_hot(labels, num_classes)))
    ds = ds.prefetch(_AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = not training
    return ds.with_options(options)

  # The pipeline's functions use TensorFlow control flow (`tf.cond`), not
  # Python's, so AutoGraph has nothing to convert; converting them anyway
  # (tf.data's default) took half of building the input: at 224 px on a
  # 2-core AVX2 CPU, 8 s -> 4 s.
  return tf.autograph.experimental.do_not_convert(input_fn)


def _usable_encoded(ds, source, max_pixels):
  """Loaded examples, with the unusable files recorded and dropped.

  Only headers are read here (nothing is decoded), so this is cheap enough
  to run before a cache. A file that passes the header check but still
  fails to decode later is dropped there by `ignore_errors`, with
  TensorFlow's warning, uncounted.
  """
  ds = ds.map(source.load, num_parallel_calls=_AUTOTUNE)
  if source.encoded:
    def inspect(example):
      problem = encoded_image.inspect(example[source_lib.IMAGE_KEY],
                                      max_pixels)[2]
      return dict(example, **{_PROBLEM: problem})
    ds = ds.map(inspect, num_parallel_calls=_AUTOTUNE)
    ds = ds.filter(lambda ex: skipped_files.keep_or_record(
        ex[source_lib.NAME_KEY], ex[_PROBLEM]))
    ds = ds.map(lambda ex: {k: v for k, v in ex.items() if k != _PROBLEM})
  # A file that cannot be read at all (removed, no permission) still stops
  # the run: that is the storage failing, not a bad image.
  return ds


def _decode_loaded(source, example) -> tf.Tensor:
  if source.encoded:
    return encoded_image.decode_rgb(example[source_lib.IMAGE_KEY])
  return source.decode(example)[source_lib.IMAGE_KEY]


def _evaluation_views(ds, source, fixed, size, aug, num_views):
  """The authors' evaluation view of each full-resolution image."""
  def view(example):
    if fixed is not None:
      image = example[source_lib.IMAGE_KEY]
    else:
      image = _decode_loaded(source, example)
    image = augment.preprocess_for_eval(image, size, aug)
    return (tf.concat([image] * num_views, axis=-1),
            example[source_lib.LABEL_KEY])
  if fixed is None:
    return _map_skipping_failures(ds, view)
  return ds.map(view, num_parallel_calls=_AUTOTUNE)


def _map_skipping_failures(ds, fn):
  """`ds.map(fn)` in parallel, dropping the elements whose `fn` fails.

  Each element gets its own one-element dataset, so `ignore_errors` sees
  only that element's decoding: an error upstream (a file that vanished)
  still stops the pipeline instead of being retried forever after
  `repeat`. The order follows `tf.data.Options.deterministic`: in order for
  evaluation; in training, parallel elements may swap places unless the
  options ask for determinism (each element keeps its own crop seed).
  """
  def one(*element):
    return tf.data.Dataset.from_tensors(element).map(fn).ignore_errors(
        log_warning=True)
  return ds.interleave(one, cycle_length=_AUTOTUNE, block_length=1,
                       num_parallel_calls=_AUTOTUNE)


def _seed_of(seed: int, position) -> tf.Tensor:
  """A full-range int64 seed of (seed, position), stateless: the same for
  a position whichever element the input started at."""
  return tf.random.stateless_uniform(
      [], tf.stack([tf.constant(seed, tf.int64),
                    tf.cast(position, tf.int64)]),
      minval=None, maxval=None, dtype=tf.int64)


def examples_per_epoch(ds: tf.data.Dataset) -> int:
  """The elements of one pass of `ds`: its cardinality when known, else
  counted by one pass (which fills a cache that `ds` ends with).

  Args:
    ds: a finite dataset.

  Returns:
    The number of elements.
  """
  count = int(ds.cardinality())
  if count >= 0:
    return count
  return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _training_stream(ds, buffer_size, seed, first_example, counts,
                     pipeline_id, uncached):
  """Epochs of `ds` without end, each shuffled with its own seed, from
  example `first_example` of the stream.

  Epoch e's order depends on (seed, e) only, so a resumed input draws the
  order an uninterrupted one draws there. `ds` must give the same elements
  in the same order on every pass (a cache, or a source read with a fixed
  file order). `counts` remembers its length by `pipeline_id`. `uncached`
  is `ds` before its cache, which a fresh input reads one element of: an
  empty epoch would make the stream spin forever.
  """
  first_epoch, offset = 0, 0
  if first_example and seed is not None:
    if pipeline_id not in counts:
      counts[pipeline_id] = examples_per_epoch(ds)
    count = counts[pipeline_id]
    first_epoch, offset = divmod(first_example, max(count, 1))
  else:
    count = sum(1 for _ in uncached.take(1))
  if count == 0:
    raise DataError("The training split has no usable examples: every "
                    "file was skipped (see the skipped-files report).")

  def epoch(index):
    if seed is None:
      return ds.shuffle(buffer_size, reshuffle_each_iteration=False)
    # This function's own graph: a fixed graph-level seed, so the order
    # depends on `seed` and the epoch alone, whatever global seed the
    # program set (and `shuffle` takes a tensor seed only beside a nonzero
    # one: with 0 its seed check compares the tensor as a Python bool).
    tf.random.set_seed(_EPOCH_GRAPH_SEED)
    # Negative positions: apart from the draws' seeds of positions >= 0.
    return ds.shuffle(buffer_size, seed=_seed_of(seed, -1 - index),
                      reshuffle_each_iteration=False)
  # Skipped before decoding: the examples are still encoded (or cached).
  return tf.data.Dataset.counter(first_epoch).flat_map(epoch).skip(offset)


def _with_seeds(ds, seed, first_position):
  """Pairs the n-th element of `ds` with the seed of position
  `first_position + n` (random seeds when `seed` is None)."""
  if seed is None:
    seeds = tf.data.Dataset.random(seed=None)
  else:
    seeds = tf.data.Dataset.counter(first_position).map(
        lambda position: _seed_of(seed, position))
  return tf.data.Dataset.zip((ds, seeds))


def _same_size_training_views(ds, size, aug, num_views, batch, own_seed,
                              on_device, first_batch):
  """Batches of full-resolution images, cropped (and distorted) at once."""
  ds = ds.map(lambda ex: (ex[source_lib.IMAGE_KEY], ex[source_lib.LABEL_KEY]))
  ds = ds.batch(batch, drop_remainder=True)
  transform = (augment.crop_views_batch if on_device
               else augment.augment_batch_views)
  views = batch_augmenter(size, aug, num_views, transform)
  return _with_seeds(ds, own_seed, first_batch).map(
      lambda element, seed: (views(element[0], seed=seed), element[1]),
      num_parallel_calls=_AUTOTUNE)


def _any_size_training_views(ds, source, size, aug, num_views, batch,
                             own_seed, on_device, first_batch):
  """Per-image crops from the full-resolution image, then batched rest."""

  def crops(example, seed):
    if source.encoded and num_views == 1:
      encoded = example[source_lib.IMAGE_KEY]

      def window():
        shape = tf.image.extract_jpeg_shape(encoded, output_type=tf.int32)
        box = augment.crop_box(shape[0], shape[1], aug, view=0, seed=seed)
        return augment.resize_crop(
            encoded_image.decode_rgb_window(encoded, box), size)

      def whole():
        return augment.crop_views(encoded_image.decode_rgb(encoded), size,
                                  aug, num_views=1, seed=seed)
      # A JPEG decodes only the window: the box `crop_views` would take.
      views = tf.cond(tf.io.is_jpeg(encoded), window, whole)
    else:
      views = augment.crop_views(_decode_loaded(source, example), size, aug,
                                 num_views=num_views, seed=seed)
    views = tf.ensure_shape(views, [size, size, 3 * num_views])
    if on_device:
      views = augment.to_uint8(views)
    return views, example[source_lib.LABEL_KEY]

  crop_seed = None if own_seed is None else own_seed + 1
  ds = _map_skipping_failures(
      _with_seeds(ds, crop_seed, first_batch * batch), crops)
  ds = ds.batch(batch, drop_remainder=True)
  if on_device:
    return ds
  distort = batch_augmenter(size, aug, num_views, augment.distort_batch_views)
  return _with_seeds(ds, own_seed, first_batch).map(
      lambda element, seed: (distort(element[0], seed=seed), element[1]),
      num_parallel_calls=_AUTOTUNE)
