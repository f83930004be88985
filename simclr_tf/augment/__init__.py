"""The SimCLR augmentations (the paper's appendix A, as the authors run them).

Modules:
  batched: the `keras.ops` crop-resize, colour jitter, grayscale and blur on
    batches, the one implementation both backends use; TensorFlow-free.
  host: the TensorFlow per-image and batched entry points of the `tf.data`
    pipeline (`preprocess_for_train`, `preprocess_for_eval`, ...), drawing
    into `batched`.

The public names of `host` are also attributes of this package, loaded on
first use so that `batched` serves the JAX backend without TensorFlow.
"""

from simclr_tf import _lazy

_PUBLIC = (
    "AREA_UNIFORM_SAMPLER", "AUTHORS_SAMPLER", "CROP_SAMPLERS",
    "EVAL_CENTER_CROP_MIN_SIZE", "SeedType", "augment_batch",
    "augment_batch_views", "blur_kernel_radius", "center_crop", "crop_box",
    "crop_and_resize_batch", "crop_views", "crop_views_batch", "device_seed",
    "distort_batch_views", "gaussian_blur_batch", "preprocess_for_eval",
    "preprocess_for_train", "random_crop_with_resize", "resize_crop",
    "sample_crop_boxes", "to_float_image", "to_grayscale", "to_uint8",
    "xla_random")

__getattr__ = _lazy.attributes(__name__, {name: ("host", name)
                                          for name in _PUBLIC})
__all__ = list(_PUBLIC)
