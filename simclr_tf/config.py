"""Experiment configuration: one frozen dataclass per concern.

`simclr_tf.run` turns absl flags into one `ExperimentConfig`; library code only
ever sees these objects (or plain arguments), never flags. The config is
written to `model_dir/config.json` and read back on resume.
"""

import dataclasses
import json
import math
from typing import Any, Optional, Tuple

TRAIN_MODES = ("pretrain", "finetune", "linear_eval")
RUN_MODES = ("train", "eval", "train_then_eval")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)


class ConfigError(ValueError):
  """An invalid setting, with a message meant for the user as it is."""


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _check_choice(name: str, value: Any, choices) -> None:
  _check(value in choices,
         f"`{name}` must be one of {', '.join(map(str, choices))}. "
         f"Received: {name}={value!r}")


def _check_range(name: str, value, low: float, high: float) -> None:
  _check(low <= value <= high,
         f"`{name}` must be in [{low}, {high}]. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the images come from and how they are batched.

  Attributes:
    dataset: a tfds name (e.g. "cifar10", "imagenet2012_subset/1pct"),
      "synthetic_shapes" (built in, offline) or "image_folder".
    data_dir: tfds data directory; for "image_folder", the folder's root.
    train_split: split to train on (e.g. "train", "unlabelled").
    eval_split: split to evaluate on.
    image_size: side of the square images fed to the network.
    cache_dataset: cache decoded images in memory. None picks automatically
      (on for datasets small enough to fit comfortably).
    shuffle_files: shuffle the file order of tfds datasets.
    shuffle_buffer: examples in the training shuffle buffer. None: the
      authors' 10x the per-replica batch (50x at 32 px and below).
    max_image_pixels: image files with more pixels (read from the header,
      before decoding) are skipped and counted; Pillow's decompression-bomb
      threshold by default.
    label_fraction: keep this fraction of each class of the training split's
      labels (semi-supervised fine-tuning). None keeps all.
    labels_per_class: keep this many labeled examples per class instead.
    label_seed: seed of the label subset, so it is repeatable.
    synthetic_train_examples: size of the built-in dataset's train split.
    synthetic_test_examples: size of the built-in dataset's test split.
    synthetic_seed: seed the built-in dataset is generated from.
  """
  dataset: str = "synthetic_shapes"
  data_dir: Optional[str] = None
  train_split: str = "train"
  eval_split: str = "test"
  image_size: int = 32
  cache_dataset: Optional[bool] = None
  shuffle_files: bool = True
  shuffle_buffer: Optional[int] = None
  max_image_pixels: int = 89478485
  label_fraction: Optional[float] = None
  labels_per_class: Optional[int] = None
  label_seed: int = 0
  synthetic_train_examples: int = 10000
  synthetic_test_examples: int = 2000
  synthetic_seed: int = 0

  def validate(self) -> None:
    _check(bool(self.dataset), "`dataset` must not be empty. Received: "
           "dataset=''. Use a tfds name, synthetic_shapes or image_folder.")
    _check(self.image_size >= 8,
           f"`image_size` must be at least 8. Received: "
           f"image_size={self.image_size}")
    _check(self.shuffle_buffer is None or self.shuffle_buffer >= 1,
           f"`shuffle_buffer` must be positive. Received: "
           f"shuffle_buffer={self.shuffle_buffer}")
    _check(self.max_image_pixels >= 1,
           f"`max_image_pixels` must be positive. Received: "
           f"max_image_pixels={self.max_image_pixels}")
    if self.dataset == "image_folder":
      _check(bool(self.data_dir),
             "`dataset=image_folder` needs `data_dir` set to the folder root "
             "(root/<split>/<class>/<image>).")
    _check(self.label_fraction is None or self.labels_per_class is None,
           "Set only one of `label_fraction` and `labels_per_class`. "
           f"Received: label_fraction={self.label_fraction}, "
           f"labels_per_class={self.labels_per_class}")
    if self.label_fraction is not None:
      _check(0.0 < self.label_fraction <= 1.0,
             f"`label_fraction` must be in (0, 1]. Received: "
             f"label_fraction={self.label_fraction}")
    if self.labels_per_class is not None:
      _check(self.labels_per_class >= 1,
             f"`labels_per_class` must be positive. Received: "
             f"labels_per_class={self.labels_per_class}")
    _check(self.synthetic_train_examples >= 1 and
           self.synthetic_test_examples >= 1,
           "The synthetic dataset needs at least one example per split. "
           f"Received: synthetic_train_examples="
           f"{self.synthetic_train_examples}, synthetic_test_examples="
           f"{self.synthetic_test_examples}")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """SimCLR augmentations (paper appendix A). Defaults are ImageNet's.

  Attributes:
    crop_area_range: range of the crop's area as a fraction of the image.
    crop_aspect_ratio_range: range of the crop's width / height.
    flip_probability: probability of a horizontal flip.
    color_jitter_strength: s; brightness, contrast and saturation are 0.8*s,
      hue 0.2*s.
    color_jitter_probability: probability of applying colour jitter.
    grayscale_probability: probability of converting to grayscale.
    use_blur: apply Gaussian blur (off for CIFAR-sized images).
    blur_probability: probability of blurring when `use_blur`.
    blur_sigma_range: range of the blur's standard deviation, in pixels.
    blur_kernel_fraction: blur kernel side as a fraction of the image side.
    eval_crop_fraction: central crop kept by the evaluation transform for
      images larger than 32 px.
    on_device: run the batched augmentation inside the train step instead of
      in tf.data (the host still takes the crops, from full-resolution
      images).
    crop_sampler: "authors" (`tf.image.sample_distorted_bounding_box` as the
      authors' code calls it) or "area_uniform" (the paper's wording: area
      uniform, aspect ratio log-uniform).
  """
  crop_area_range: Tuple[float, float] = (0.08, 1.0)
  crop_aspect_ratio_range: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip_probability: float = 0.5
  color_jitter_strength: float = 1.0
  color_jitter_probability: float = 0.8
  grayscale_probability: float = 0.2
  use_blur: bool = True
  blur_probability: float = 0.5
  blur_sigma_range: Tuple[float, float] = (0.1, 2.0)
  blur_kernel_fraction: float = 0.1
  eval_crop_fraction: float = 0.875
  on_device: bool = False
  crop_sampler: str = "authors"

  def validate(self) -> None:
    for name in ("crop_area_range", "crop_aspect_ratio_range",
                 "blur_sigma_range"):
      low, high = getattr(self, name)
      _check(0 < low <= high,
             f"`{name}` must be two positive numbers, low <= high. "
             f"Received: {name}={getattr(self, name)!r}")
    _check(self.crop_area_range[1] <= 1.0,
           f"`crop_area_range` cannot exceed 1. Received: "
           f"crop_area_range={self.crop_area_range!r}")
    for name in ("flip_probability", "color_jitter_probability",
                 "grayscale_probability", "blur_probability"):
      _check_range(name, getattr(self, name), 0.0, 1.0)
    _check(self.color_jitter_strength >= 0,
           f"`color_jitter_strength` must be >= 0. Received: "
           f"color_jitter_strength={self.color_jitter_strength}")
    _check(0 < self.blur_kernel_fraction <= 1,
           f"`blur_kernel_fraction` must be in (0, 1]. Received: "
           f"blur_kernel_fraction={self.blur_kernel_fraction}")
    _check(self.crop_sampler in ("authors", "area_uniform"),
           f"`crop_sampler` must be authors or area_uniform. Received: "
           f"crop_sampler={self.crop_sampler!r}")
    _check(0 < self.eval_crop_fraction <= 1,
           f"`eval_crop_fraction` must be in (0, 1]. Received: "
           f"eval_crop_fraction={self.eval_crop_fraction}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Encoder and heads.

  Attributes:
    resnet_depth: 18, 34, 50, 101, 152 or 200.
    width_multiplier: channel multiplier; below 1 only for tiny test models.
    sk_ratio: selective-kernel ratio; 0 turns SK (and ResNet-D) off.
    se_ratio: squeeze-excite ratio; 0 turns SE off.
    cifar_stem: 3x3 stride-1 stem without max-pool. None picks it for
      image_size <= 32, as the authors do.
    global_bn: synchronise BatchNorm statistics across replicas.
    batch_norm_decay: BatchNorm moving-average momentum.
    proj_head_mode: "none", "linear" or "nonlinear".
    proj_out_dim: output size of the projection head.
    num_proj_layers: layers in the nonlinear projection head.
    ft_proj_selector: which projection-head layer fine-tuning starts from
      (0 is the encoder output).
    zero_init_logits_layer: start the supervised head at zero.
    supervised_head_feature_norm: normalise features with a parameter-free
      BatchNorm before the supervised head (MAE's linear probe). Off matches
      the authors; on makes linear evaluation insensitive to feature scale.
    fine_tune_after_block: freeze the encoder up to this block (-1 trains all,
      0 freezes the stem, 4 the whole encoder).
  """
  resnet_depth: int = 50
  width_multiplier: float = 1.0
  sk_ratio: float = 0.0
  se_ratio: float = 0.0
  cifar_stem: Optional[bool] = None
  global_bn: bool = True
  batch_norm_decay: float = 0.9
  proj_head_mode: str = "nonlinear"
  proj_out_dim: int = 128
  num_proj_layers: int = 3
  ft_proj_selector: int = 0
  zero_init_logits_layer: bool = False
  supervised_head_feature_norm: bool = False
  fine_tune_after_block: int = -1

  def validate(self) -> None:
    _check_choice("resnet_depth", self.resnet_depth, RESNET_DEPTHS)
    _check(self.width_multiplier > 0 and int(64 * self.width_multiplier) >= 2,
           "`width_multiplier` must give at least 2 stem channels "
           f"(64 * width_multiplier >= 2). Received: "
           f"width_multiplier={self.width_multiplier}")
    _check_range("sk_ratio", self.sk_ratio, 0.0, 1.0)
    _check_range("se_ratio", self.se_ratio, 0.0, 1.0)
    _check_range("batch_norm_decay", self.batch_norm_decay, 0.0, 1.0)
    _check_choice("proj_head_mode", self.proj_head_mode, PROJ_HEAD_MODES)
    _check(self.proj_out_dim >= 1,
           f"`proj_out_dim` must be positive. Received: "
           f"proj_out_dim={self.proj_out_dim}")
    _check(self.num_proj_layers >= 1,
           f"`num_proj_layers` must be positive. Received: "
           f"num_proj_layers={self.num_proj_layers}")
    _check(self.ft_proj_selector == -1 or
           0 <= self.ft_proj_selector <= self.num_proj_head_layers,
           f"`ft_proj_selector` must be -1 (the last layer) or in "
           f"[0, {self.num_proj_head_layers}] "
           f"for proj_head_mode={self.proj_head_mode}. Received: "
           f"ft_proj_selector={self.ft_proj_selector}")
    _check(-1 <= self.fine_tune_after_block <= 4,
           f"`fine_tune_after_block` must be in [-1, 4]. Received: "
           f"fine_tune_after_block={self.fine_tune_after_block}")

  @property
  def num_proj_head_layers(self) -> int:
    """Layers the projection head actually has in this mode."""
    return {"none": 0, "linear": 1,
            "nonlinear": self.num_proj_layers}[self.proj_head_mode]

  def use_cifar_stem(self, image_size: int) -> bool:
    """The stem choice, resolving None the authors' way (size <= 32)."""
    if self.cifar_stem is None:
      return image_size <= 32
    return self.cifar_stem


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Contrastive loss.

  Attributes:
    temperature: softmax temperature tau.
    hidden_norm: L2-normalise projections (cosine similarity).
  """
  temperature: float = 0.1
  hidden_norm: bool = True

  def validate(self) -> None:
    _check(self.temperature > 0,
           f"`temperature` must be positive. Received: "
           f"temperature={self.temperature}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer and learning-rate schedule.

  Attributes:
    optimizer: "lars", "momentum" or "adam".
    learning_rate: base learning rate, before batch scaling.
    learning_rate_scaling: "linear" (lr * batch / 256) or "sqrt"
      (lr * sqrt(batch)).
    warmup_epochs: epochs of linear warm-up.
    weight_decay: weight decay; BN parameters and biases are excluded.
    momentum: momentum of LARS and momentum SGD; beta_1 of Adam.
  """
  optimizer: str = "lars"
  learning_rate: float = 0.3
  learning_rate_scaling: str = "linear"
  warmup_epochs: float = 10.0
  weight_decay: float = 1e-6
  momentum: float = 0.9

  def validate(self) -> None:
    _check_choice("optimizer", self.optimizer, OPTIMIZERS)
    _check_choice("learning_rate_scaling", self.learning_rate_scaling,
                  LR_SCALINGS)
    _check(self.learning_rate > 0 and math.isfinite(self.learning_rate),
           f"`learning_rate` must be positive. Received: "
           f"learning_rate={self.learning_rate}")
    _check(self.warmup_epochs >= 0,
           f"`warmup_epochs` must be >= 0. Received: "
           f"warmup_epochs={self.warmup_epochs}")
    _check(self.weight_decay >= 0,
           f"`weight_decay` must be >= 0. Received: "
           f"weight_decay={self.weight_decay}")
    _check(0 <= self.momentum < 1,
           f"`momentum` must be in [0, 1). Received: momentum={self.momentum}")


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig:
  """Linear evaluation: a linear head trained on the frozen encoder.

  These settings are used by `train_mode=linear_eval` and by the linear
  evaluation that follows pretraining, so a pretrained encoder and a
  randomly initialised one are always compared under the same settings.
  Defaults are the authors' CIFAR-10 linear-evaluation recipe.

  Attributes:
    after_pretraining: after pretraining, train and evaluate a linear head on
      the frozen encoder (in `model_dir/linear_eval`).
    optimizer: "lars", "momentum" or "adam".
    learning_rate: base learning rate, before batch scaling.
    learning_rate_scaling: "linear" or "sqrt".
    momentum: optimizer momentum.
    weight_decay: weight decay of the head.
    warmup_epochs: epochs of linear warm-up.
    train_batch_size: global batch.
    train_epochs: epochs, used when `train_steps` is 0.
    train_steps: optimizer steps; 0 derives them from `train_epochs`.
    train_split: labeled split the head trains on; None uses the data
      config's `train_split` (set it when pretraining on unlabeled data).
  """
  after_pretraining: bool = False
  optimizer: str = "momentum"
  learning_rate: float = 0.1
  learning_rate_scaling: str = "sqrt"
  momentum: float = 0.9
  weight_decay: float = 0.0
  warmup_epochs: float = 0.0
  train_batch_size: int = 512
  train_epochs: int = 100
  train_steps: int = 0
  train_split: Optional[str] = None

  def validate(self) -> None:
    self.optimizer_config().validate()
    _check(self.train_batch_size >= 1,
           f"`linear_eval_train_batch_size` must be positive. Received: "
           f"linear_eval_train_batch_size={self.train_batch_size}")
    _check(self.train_steps > 0 or self.train_epochs > 0,
           "Set `linear_eval_train_steps` or `linear_eval_train_epochs` "
           "above 0.")

  def optimizer_config(self) -> "OptimizerConfig":
    """These settings as an `OptimizerConfig`."""
    return OptimizerConfig(
        optimizer=self.optimizer, learning_rate=self.learning_rate,
        learning_rate_scaling=self.learning_rate_scaling,
        warmup_epochs=self.warmup_epochs, weight_decay=self.weight_decay,
        momentum=self.momentum)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What to run, for how long, where, and on what hardware.

  Attributes:
    mode: "train", "eval" or "train_then_eval".
    train_mode: "pretrain", "finetune" or "linear_eval".
    model_dir: where checkpoints, summaries, results and exports go.
    checkpoint: checkpoint file, model_dir or export to start from.
    from_scratch: finetune without a checkpoint (supervised baseline).
    lineareval_while_pretraining: train a linear head on stop_gradient
      features beside the contrastive loss.
    train_batch_size: global training batch (images; pretraining sees two
      views of each).
    train_epochs: epochs, used when `train_steps` is 0.
    train_steps: optimizer steps; 0 derives them from `train_epochs`.
    eval_batch_size: global evaluation batch.
    eval_steps: evaluation batches; 0 evaluates the whole split.
    checkpoint_epochs: save every this many epochs (when
      `checkpoint_steps` is 0).
    checkpoint_steps: save every this many steps.
    keep_checkpoint_max: checkpoints to keep.
    keep_hub_module_max: SavedModel exports to keep.
    steps_per_loop: optimizer steps per host call (Keras
      steps_per_execution); progress is printed once per loop.
    seed: random seed.
    strategy: "auto", "one_device", "mirrored", "multi_worker" or "tpu".
    tpu: TPU name or address for `strategy="tpu"`.
    cpu_replicas: split the host CPU into this many logical devices.
    precision: "float32", "mixed_bfloat16" or "mixed_float16".
    jit_compile: compile the train step with XLA.
  """
  mode: str = "train_then_eval"
  train_mode: str = "pretrain"
  model_dir: str = "runs/demo"
  checkpoint: Optional[str] = None
  from_scratch: bool = False
  lineareval_while_pretraining: bool = True
  train_batch_size: int = 512
  train_epochs: int = 100
  train_steps: int = 0
  eval_batch_size: int = 256
  eval_steps: int = 0
  checkpoint_epochs: int = 1
  checkpoint_steps: int = 0
  keep_checkpoint_max: int = 5
  keep_hub_module_max: int = 1
  steps_per_loop: int = 1
  seed: int = 0
  strategy: str = "auto"
  tpu: Optional[str] = None
  cpu_replicas: int = 0
  precision: str = "float32"
  jit_compile: bool = False

  def validate(self) -> None:
    _check_choice("mode", self.mode, RUN_MODES)
    _check_choice("train_mode", self.train_mode, TRAIN_MODES)
    _check_choice("strategy", self.strategy, STRATEGIES)
    _check_choice("precision", self.precision, PRECISIONS)
    _check(bool(self.model_dir), "`model_dir` must not be empty.")
    for name in ("train_batch_size", "eval_batch_size", "keep_checkpoint_max",
                 "keep_hub_module_max", "steps_per_loop"):
      _check(getattr(self, name) >= 1,
             f"`{name}` must be positive. Received: "
             f"{name}={getattr(self, name)}")
    for name in ("train_epochs", "train_steps", "eval_steps",
                 "checkpoint_epochs", "checkpoint_steps", "cpu_replicas"):
      _check(getattr(self, name) >= 0,
             f"`{name}` must be >= 0. Received: "
             f"{name}={getattr(self, name)}")
    _check(self.train_steps > 0 or self.train_epochs > 0,
           "Set `train_steps` or `train_epochs` above 0.")
    if self.strategy == "tpu":
      _check(bool(self.tpu), "`strategy=tpu` needs `tpu` set to the TPU "
             "name or address (e.g. --tpu=local on a TPU VM).")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything one run needs."""
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  optimizer: OptimizerConfig = dataclasses.field(
      default_factory=OptimizerConfig)
  linear_eval: LinearEvalConfig = dataclasses.field(
      default_factory=LinearEvalConfig)
  run: RunConfig = dataclasses.field(default_factory=RunConfig)

  def validate(self) -> "ExperimentConfig":
    """Checks every section and their combinations.

    Returns:
      self, so calls can be chained.

    Raises:
      ConfigError: with a one-line message naming the setting to change.
    """
    for section in (self.data, self.augment, self.model, self.loss,
                    self.optimizer, self.linear_eval, self.run):
      section.validate()
    run, model = self.run, self.model
    if run.train_mode == "pretrain":
      _check(model.fine_tune_after_block == -1,
             "Freezing layers while pretraining is not supported: set "
             "fine_tune_after_block=-1. Received: fine_tune_after_block="
             f"{model.fine_tune_after_block}")
      _check(model.proj_head_mode != "none" or
             model.ft_proj_selector in (0, -1),
             "proj_head_mode=none has no projection layers to select.")
    if run.train_mode == "finetune" and "train" in run.mode:
      _check(bool(run.checkpoint) or run.from_scratch,
             "train_mode=finetune needs --checkpoint (a pretraining "
             "model_dir, checkpoint or export); pass --from_scratch to train "
             "the supervised baseline from random initialisation.")
    _check(not (run.from_scratch and run.checkpoint),
           "--from_scratch and --checkpoint contradict each other: drop one.")
    _check(not run.from_scratch or run.train_mode == "finetune",
           "--from_scratch trains the supervised baseline: use it with "
           f"train_mode=finetune. Received: train_mode={run.train_mode}")
    if self.linear_eval.after_pretraining:
      _check(run.train_mode == "pretrain",
             "linear_eval_after_pretraining needs train_mode=pretrain. "
             f"Received: train_mode={run.train_mode}")
    if run.train_mode == "pretrain" and "eval" in run.mode:
      _check(run.lineareval_while_pretraining or
             self.linear_eval.after_pretraining,
             "Evaluating a pretraining run needs a supervised head: set "
             "--lineareval_while_pretraining or "
             "--linear_eval_after_pretraining, or use --mode=train.")
    return self

  def for_linear_eval(self, *, model_dir: str,
                      checkpoint: Optional[str]) -> "ExperimentConfig":
    """The config of a linear evaluation of this run's encoder.

    Args:
      model_dir: where the linear evaluation writes its outputs.
      checkpoint: the pretrained encoder to load; None keeps the random
        initialisation (the baseline).

    Returns:
      A validated config with train_mode=linear_eval, the optimizer and
      schedule of the `linear_eval` section, and no BatchNorm sync (frozen
      BatchNorm has no batch statistics to share).
    """
    linear = self.linear_eval
    return dataclasses.replace(
        self,
        data=dataclasses.replace(
            self.data, train_split=linear.train_split or self.data.train_split),
        model=dataclasses.replace(self.model, global_bn=False,
                                  fine_tune_after_block=-1),
        optimizer=linear.optimizer_config(),
        linear_eval=dataclasses.replace(linear, after_pretraining=False),
        run=dataclasses.replace(
            self.run,
            mode=(self.run.mode if self.run.train_mode == "linear_eval"
                  else "train_then_eval"),
            train_mode="linear_eval",
            model_dir=model_dir, checkpoint=checkpoint, from_scratch=False,
            lineareval_while_pretraining=False,
            train_batch_size=linear.train_batch_size,
            train_epochs=linear.train_epochs,
            train_steps=linear.train_steps)).validate()


  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict) -> "ExperimentConfig":
    """Builds a config from `to_dict()` output; unknown keys are an error."""
    sections = {}
    for field in dataclasses.fields(cls):
      section_type = field.type
      known = {f.name for f in dataclasses.fields(section_type)}
      given = dict(values.get(field.name, {}))
      unknown = sorted(set(given) - known)
      _check(not unknown, f"Unknown `{field.name}` settings: "
             f"{', '.join(unknown)}")
      for f in dataclasses.fields(section_type):
        if f.name in given and isinstance(f.default, tuple):
          given[f.name] = tuple(given[f.name])
      sections[field.name] = section_type(**given)
    return cls(**sections)

  @classmethod
  def from_json(cls, text: str) -> "ExperimentConfig":
    return cls.from_dict(json.loads(text))

  def replace(self, **sections) -> "ExperimentConfig":
    """Returns a copy with whole sections replaced."""
    return dataclasses.replace(self, **sections)
