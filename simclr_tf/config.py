"""Experiment configuration: one frozen dataclass per concern.

Every setting is declared once, here, with `settings.setting`: its name,
type, default, help and bounds. `simclr_tf.run` derives one absl flag per
setting from these declarations and builds an `ExperimentConfig` from the
parsed flags, so the program and the library share one set of defaults:
the authors' (the paper's ImageNet recipe). Library code only ever sees
these objects (or plain arguments), never flags. The config is written to
`model_dir/config.json` and read back on resume (`run_dir`).
"""

import dataclasses
import json
from typing import Optional, Tuple

from simclr_tf.settings import ARCHITECTURE
from simclr_tf.settings import ConfigError
from simclr_tf.settings import FIXED_ON_RESUME
from simclr_tf.settings import READS_IMAGES
from simclr_tf.settings import RUN_LOCATION
from simclr_tf.settings import check as _check_declared
from simclr_tf.settings import section
from simclr_tf.settings import setting

__all__ = ["ConfigError", "DataConfig", "AugmentConfig", "ModelConfig",
           "LossConfig", "OptimizerConfig", "LinearEvalConfig",
           "SemiSupervisedConfig", "RunConfig", "ExperimentConfig"]

# distill: SimCLRv2's third step, a student trained on a fixed teacher's
# predictions (arXiv 2006.10029, section 2, eq. 2 and 3).
TRAIN_MODES = ("pretrain", "finetune", "linear_eval", "distill")
RUN_MODES = ("train", "eval", "train_then_eval")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
BACKENDS = ("tensorflow", "jax")
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
CROP_SAMPLERS = ("authors", "area_uniform")
# The transformations of the paper's one-branch ablation (Figure 5), as
# `simclr_tf.augment.batched` implements them.
BRANCH_TRANSFORMS = ("crop", "flip", "color", "blur", "cutout", "sobel",
                     "noise", "rotate")
# The paper's Table 2 losses; nt_xent is SimCLR's own and the default.
LOSS_TYPES = ("nt_xent", "nt_logistic", "margin_triplet")


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _check_pair(name: str, pair) -> None:
  low, high = pair
  _check(low <= high, f"`{name}` must be LOW,HIGH with LOW <= HIGH. "
         f"Received: {name}={pair!r}")


@section()
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the images come from and how they are batched."""
  dataset: str = setting(
      "imagenet2012", "A tfds name (e.g. cifar10, imagenet2012_subset/1pct), "
      "a built-in offline dataset (synthetic_shapes, sklearn_digits) or "
      "image_folder.",
      roles=(FIXED_ON_RESUME, READS_IMAGES))
  data_dir: Optional[str] = setting(
      None, "tfds data directory; for image_folder, the folder's root "
      "(root/<split>/<class>/<image>).",
      roles=(RUN_LOCATION, READS_IMAGES))
  train_split: str = setting("train", "Split to train on (e.g. train, "
                             "unlabelled).",
                             roles=(FIXED_ON_RESUME,))
  eval_split: str = setting("test", "Split to evaluate on.")
  image_size: int = setting(224, "Side of the square images fed to the "
                            "network.", at_least=8,
                            roles=(FIXED_ON_RESUME,))
  cache_dataset: Optional[bool] = setting(
      None, "Cache decoded images in memory; auto (None) turns it on for "
      "datasets small enough to fit comfortably.")
  shuffle_files: bool = setting(True, "Shuffle the file order of tfds "
                                "datasets.")
  shuffle_buffer: Optional[int] = setting(
      None, "Examples in the training shuffle buffer; unset: the authors' "
      "10x the per-replica batch (50x at 32 px and below).", at_least=1)
  label_fraction: Optional[float] = setting(
      None, "Keep this fraction of each class's training labels "
      "(semi-supervised fine-tuning); unset keeps all.", above=0.0,
      at_most=1.0,
      roles=(FIXED_ON_RESUME,))
  labels_per_class: Optional[int] = setting(
      None, "Keep this many training labels per class instead.", at_least=1,
      roles=(FIXED_ON_RESUME,))
  label_seed: int = setting(0, "Seed of the label subset, so it is "
                            "repeatable.",
                            roles=(FIXED_ON_RESUME,))
  synthetic_train_examples: int = setting(
      10000, "Train examples of the built-in synthetic_shapes dataset.",
      at_least=1,
      roles=(FIXED_ON_RESUME, READS_IMAGES))
  synthetic_test_examples: int = setting(
      2000, "Test examples of the built-in synthetic_shapes dataset.",
      at_least=1,
      roles=(READS_IMAGES,))
  synthetic_seed: int = setting(0, "Seed synthetic_shapes is generated "
                                "from.",
                                roles=(FIXED_ON_RESUME, READS_IMAGES))
  max_image_pixels: int = setting(
      89478485, "Image files with more pixels than this (read from the "
      "header, before decoding) are skipped and counted; the default is "
      "Pillow's decompression-bomb threshold.", at_least=1)

  def validate(self) -> None:
    _check_declared(self)
    _check(bool(self.dataset), "`dataset` must not be empty. Received: "
           "dataset=''. Use a tfds name, synthetic_shapes, sklearn_digits or "
           "image_folder.")
    if self.dataset == "image_folder":
      _check(bool(self.data_dir),
             "`dataset=image_folder` needs `data_dir` set to the folder root "
             "(root/<split>/<class>/<image>).")
    _check(self.label_fraction is None or self.labels_per_class is None,
           "Set only one of `label_fraction` and `labels_per_class`. "
           f"Received: label_fraction={self.label_fraction}, "
           f"labels_per_class={self.labels_per_class}")


@section()
@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """SimCLR augmentations (paper appendix A). Defaults are ImageNet's."""
  crop_area_range: Tuple[float, float] = setting(
      (0.08, 1.0), "Random crop: smallest and largest area as fractions of "
      "the image, LOW,HIGH (the paper's 0.08,1.0).", above=0.0, at_most=1.0)
  crop_aspect_ratio_range: Tuple[float, float] = setting(
      (3.0 / 4.0, 4.0 / 3.0), "Random crop: range of width / height, "
      "LOW,HIGH.", above=0.0)
  flip_probability: float = setting(0.5, "Probability of a horizontal "
                                    "flip.", at_least=0.0, at_most=1.0)
  color_jitter_strength: float = setting(
      1.0, "Colour jitter strength s: brightness, contrast and saturation "
      "0.8*s, hue 0.2*s.", at_least=0.0)
  color_jitter_probability: float = setting(
      0.8, "Probability of applying colour jitter.", at_least=0.0,
      at_most=1.0)
  grayscale_probability: float = setting(
      0.2, "Probability of converting a view to grayscale.", at_least=0.0,
      at_most=1.0)
  use_blur: bool = setting(True, "Gaussian blur while pretraining (off for "
                           "CIFAR-sized images).")
  blur_probability: float = setting(0.5, "Probability of blurring when "
                                    "use_blur.", at_least=0.0, at_most=1.0)
  blur_sigma_range: Tuple[float, float] = setting(
      (0.1, 2.0), "Range of the blur's standard deviation in pixels, "
      "LOW,HIGH.", above=0.0)
  blur_kernel_fraction: float = setting(
      0.1, "Blur kernel side as a fraction of the image side.", above=0.0,
      at_most=1.0)
  eval_crop_fraction: float = setting(
      0.875, "Central crop kept by the evaluation transform for images "
      "larger than 32 px.", above=0.0, at_most=1.0)
  on_device: bool = setting(
      False, "Augment inside the train step on the accelerator (batched "
      "ops) instead of in the tf.data pipeline, which then only decodes, "
      "takes the random crops from the full-resolution images and batches "
      "them as uint8 views of image_size.", flag="augment_on_device")
  crop_sampler: str = setting(
      "authors", "Random crop distribution: authors = "
      "tf.image.sample_distorted_bounding_box as the authors' code calls "
      "it; area_uniform = the paper's wording (area uniform, log-uniform "
      "aspect ratio).", choices=CROP_SAMPLERS)
  branch_transforms: str = setting(
      "", "The paper's one-branch ablation (Figure 5), pretraining only: "
      "empty is the usual two-view recipe; otherwise comma-separated names "
      f"from {', '.join(BRANCH_TRANSFORMS)}. Both views are then random "
      "crops resized to image_size, and only the first gets these, in this "
      "order (crop: a second random crop; color: jitter and drop; flip, "
      "color and blur with their probabilities, the others always).")
  cutout_fraction: float = setting(
      0.5, "Side of the square that branch_transforms=cutout paints black, "
      "as a fraction of the image side (DeVries & Taylor's 16 px of 32 on "
      "CIFAR-10; the paper gives none).", above=0.0, at_most=1.0)
  noise_std: float = setting(
      0.1, "Standard deviation of branch_transforms=noise on the [0, 1] "
      "pixel scale, before clipping (the paper gives none).", above=0.0)

  def __post_init__(self):
    # A sequence of names is kept as the flag's string, so a config equals
    # itself read back from config.json.
    value = self.branch_transforms
    if value is not None and not isinstance(value, str):
      object.__setattr__(self, "branch_transforms",
                         ",".join(str(name) for name in value))

  def validate(self) -> None:
    _check_declared(self)
    for name in ("crop_area_range", "crop_aspect_ratio_range",
                 "blur_sigma_range"):
      _check_pair(name, getattr(self, name))
    names = self.branch_transform_names
    _check("color" not in names or self.color_jitter_strength > 0,
           "`branch_transforms` lists color, but color_jitter_strength=0 "
           "turns colour distortion off: set color_jitter_strength > 0 or "
           f"drop color. Received: branch_transforms={self.branch_transforms!r}")

  @property
  def branch_transform_names(self) -> Tuple[str, ...]:
    """`branch_transforms` as a tuple of names; () for the usual recipe.

    Accepts the comma-separated string of the flag, or a sequence of names.

    Raises:
      ConfigError: a name outside `BRANCH_TRANSFORMS`.
    """
    value = self.branch_transforms
    if value is None:
      return ()
    if isinstance(value, str):
      value = value.split(",")
    names = tuple(str(name).strip().lower() for name in value)
    names = tuple(name for name in names if name)
    unknown = [name for name in names if name not in BRANCH_TRANSFORMS]
    _check(not unknown,
           f"`branch_transforms` must be comma-separated names from "
           f"{', '.join(BRANCH_TRANSFORMS)} (unknown: {', '.join(unknown)}). "
           f"Received: branch_transforms={self.branch_transforms!r}")
    return names


@section()
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Encoder and heads."""
  resnet_depth: int = setting(50, "ResNet depth: 18, 34, 50, 101, 152 or "
                              "200.", choices=RESNET_DEPTHS,
                              roles=(ARCHITECTURE,))
  width_multiplier: float = setting(
      1.0, "ResNet channel multiplier; below 1 only for small models.",
      above=0.0,
      roles=(ARCHITECTURE,))
  sk_ratio: float = setting(
      0.0, "Selective-kernel ratio (0.0625 in SimCLRv2); 0 turns SK (and "
      "ResNet-D) off.", at_least=0.0, at_most=1.0,
      roles=(ARCHITECTURE,))
  se_ratio: float = setting(0.0, "Squeeze-excite ratio; 0 turns SE off.",
                            at_least=0.0, at_most=1.0,
                            roles=(ARCHITECTURE,))
  cifar_stem: Optional[bool] = setting(
      None, "ResNet stem: true is the CIFAR stem (3x3 stride-1 conv, no "
      "max-pool), false the ImageNet one (7x7 stride-2 conv and max-pool, "
      "16x fewer activations); auto picks the CIFAR stem for image_size <= "
      "32, as the authors do.",
      roles=(ARCHITECTURE,))
  global_bn: bool = setting(True, "Synchronise BatchNorm statistics across "
                            "replicas.")
  batch_norm_decay: float = setting(0.9, "BatchNorm moving-average decay.",
                                    at_least=0.0, at_most=1.0)
  proj_head_mode: str = setting("nonlinear", "Projection head: none, linear "
                                "or nonlinear.", choices=PROJ_HEAD_MODES,
                                roles=(ARCHITECTURE,))
  proj_out_dim: int = setting(128, "Output size of the projection head.",
                              at_least=1,
                              roles=(ARCHITECTURE,))
  num_proj_layers: int = setting(3, "Layers of the nonlinear projection "
                                 "head (2 for SimCLR v1, 3 for v2).",
                                 at_least=1,
                                 roles=(ARCHITECTURE,))
  ft_proj_selector: int = setting(
      0, "Projection-head layer that fine-tuning starts from: 0 is the "
      "encoder output, -1 the head's last layer.", at_least=-1,
      roles=(FIXED_ON_RESUME,))
  zero_init_logits_layer: bool = setting(
      False, "Fine-tuning: start the supervised head at zero instead of "
      "restoring the one trained beside pretraining (the authors' rule).")
  supervised_head_feature_norm: bool = setting(
      False, "Normalise features with a parameter-free BatchNorm before the "
      "supervised head (MAE's linear probe). Off matches the authors; on "
      "makes linear evaluation insensitive to feature scale.",
      roles=(FIXED_ON_RESUME,))
  fine_tune_after_block: int = setting(
      -1, "Freeze the encoder up to this block when fine-tuning: -1 trains "
      "all, 0 freezes the stem, 4 the whole encoder.", at_least=-1,
      at_most=4,
      roles=(FIXED_ON_RESUME,))

  def validate(self) -> None:
    _check_declared(self)
    _check(int(64 * self.width_multiplier) >= 2,
           "`width_multiplier` must give at least 2 stem channels "
           f"(64 * width_multiplier >= 2). Received: "
           f"width_multiplier={self.width_multiplier}")
    _check(self.ft_proj_selector <= self.num_proj_head_layers,
           f"`ft_proj_selector` must be in [-1, {self.num_proj_head_layers}]"
           f" for proj_head_mode={self.proj_head_mode}. Received: "
           f"ft_proj_selector={self.ft_proj_selector}")

  @property
  def num_proj_head_layers(self) -> int:
    """Layers the projection head actually has in this mode."""
    return {"none": 0, "linear": 1,
            "nonlinear": self.num_proj_layers}[self.proj_head_mode]

  @property
  def proj_selector(self) -> int:
    """`ft_proj_selector` with -1 resolved to the head's last layer."""
    if self.ft_proj_selector < 0:
      return self.num_proj_head_layers
    return self.ft_proj_selector

  def use_cifar_stem(self, image_size: int) -> bool:
    """The stem choice, resolving None the authors' way (size <= 32)."""
    if self.cifar_stem is None:
      return image_size <= 32
    return self.cifar_stem


@section()
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Contrastive loss."""
  temperature: float = setting(
      0.1, "Temperature tau: NT-Xent's softmax temperature, NT-Logistic's "
      "logit scale; margin_triplet only uses it for contrast_entropy.",
      above=0.0)
  hidden_norm: bool = setting(True, "L2-normalise projections (cosine "
                              "similarity) in the loss.")
  loss_type: str = setting(
      "nt_xent", "Pretraining loss, from the paper's Table 2: nt_xent "
      "(SimCLR's), nt_logistic or margin_triplet, each over the same global "
      "negatives.", choices=LOSS_TYPES)
  semihard_negatives: bool = setting(
      False, "Semi-hard negative mining (paper section 5.1, Table 4 'sh') "
      "for nt_logistic and margin_triplet: each anchor uses only the "
      "negatives less similar than its positive (and, for margin_triplet, "
      "within the margin), else its least similar negative.")
  distill_temperature: float = setting(
      1.0, "train_mode=distill: temperature tau of the teacher's and the "
      "student's softmax in the distillation loss (SimCLRv2 eq. 2; the "
      "paper uses 1).", above=0.0)
  distill_label_weight: float = setting(
      0.0, "train_mode=distill: weight of the labelled cross-entropy on the "
      "label subset, 1 - alpha of SimCLRv2 eq. 3; 0 is the paper's "
      "distillation-only loss (eq. 2).", at_least=0.0, at_most=1.0)
  margin: float = setting(
      0.4, "Margin m of margin_triplet. The paper tunes it over "
      "{0, 0.4, 0.8, 1.6} (appendix B.10) without naming the best; 0.4 is "
      "our pick from that grid.", at_least=0.0)

  def validate(self) -> None:
    _check_declared(self)
    # NT-Xent weighs negatives by hardness itself (section 5.1): the paper
    # mines only for the other two, and no NT-Xent mining is defined.
    _check(not (self.semihard_negatives and self.loss_type == "nt_xent"),
           "semihard_negatives applies to loss_type=nt_logistic or "
           "margin_triplet only: set loss_type to one of those or drop "
           "semihard_negatives. Received: loss_type=nt_xent, "
           "semihard_negatives=True")


@section()
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer and learning-rate schedule."""
  optimizer: str = setting("lars", "Optimizer: lars, momentum or adam.",
                           choices=OPTIMIZERS,
                           roles=(FIXED_ON_RESUME,))
  learning_rate: float = setting(
      0.3, "Base learning rate, before batch scaling (lr * batch / 256, or "
      "lr * sqrt(batch)).", above=0.0)
  learning_rate_scaling: str = setting(
      "linear", "How the learning rate scales with the batch: linear or "
      "sqrt.", choices=LR_SCALINGS)
  warmup_epochs: float = setting(10.0, "Epochs of linear warm-up.",
                                 at_least=0.0)
  weight_decay: float = setting(1e-6, "Weight decay (BatchNorm parameters "
                                "and biases excluded).", at_least=0.0)
  momentum: float = setting(0.9, "Momentum of LARS and momentum SGD; "
                            "beta_1 of Adam.", at_least=0.0, below=1.0)

  def validate(self) -> None:
    _check_declared(self)
    _check(self.learning_rate != float("inf"),
           f"`learning_rate` must be finite. Received: "
           f"learning_rate={self.learning_rate}")


@section(prefix="linear_eval_")
@dataclasses.dataclass(frozen=True)
class LinearEvalConfig:
  """Linear evaluation: a linear head trained on the frozen encoder.

  These settings are used by `train_mode=linear_eval` and by the linear
  evaluation that follows pretraining, so a pretrained encoder and a
  randomly initialised one are always compared under the same settings.
  The authors have no separate linear-evaluation settings (their linear
  evaluation is a fine-tuning run), so these are this project's. Most
  defaults are the values of the authors' CIFAR-10 linear-evaluation
  command (momentum, learning rate 0.1, no weight decay, no warm-up, batch
  512, 100 epochs); the batch scaling is this project's own: sqrt, where the
  authors' default is linear, so a preset that follows their command sets
  `linear_eval_learning_rate_scaling=linear`.
  """
  after_pretraining: bool = setting(
      False, "After pretraining, train and evaluate a linear head on the "
      "frozen encoder (in model_dir/linear_eval). Ignored by the other "
      "train modes.")
  optimizer: str = setting("momentum", "Linear eval: optimizer.",
                           choices=OPTIMIZERS)
  learning_rate: float = setting(0.1, "Linear eval: base learning rate.",
                                 above=0.0)
  learning_rate_scaling: str = setting(
      "sqrt", "Linear eval: batch scaling, linear or sqrt.",
      choices=LR_SCALINGS)
  momentum: float = setting(0.9, "Linear eval: momentum.", at_least=0.0,
                            below=1.0)
  weight_decay: float = setting(0.0, "Linear eval: weight decay of the "
                                "head.", at_least=0.0)
  warmup_epochs: float = setting(0.0, "Linear eval: warm-up epochs.",
                                 at_least=0.0)
  train_batch_size: int = setting(512, "Linear eval: global batch.",
                                  at_least=1)
  train_epochs: int = setting(100, "Linear eval: epochs (when "
                              "linear_eval_train_steps is 0).", at_least=0)
  train_steps: int = setting(0, "Linear eval: optimizer steps; 0 derives "
                             "them from the epochs.", at_least=0)
  train_split: Optional[str] = setting(
      None, "Linear eval: labeled split the head trains on (default: "
      "train_split; set it when pretraining on unlabeled data).")

  def validate(self) -> None:
    _check_declared(self)
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


@section(prefix="semi_supervised_")
@dataclasses.dataclass(frozen=True)
class SemiSupervisedConfig:
  """SimCLRv2's semi-supervised pipeline (arXiv 2006.10029, Figure 3).

  With `pipeline` on, one run trains, each stage in its own subfolder of
  `model_dir` (`simclr_tf.training.stages`): pretraining on every image
  (`pretrain/`), fine-tuning from the projection head's first layer on the
  label subset (`finetune/`), self-distillation of that network into a
  student of the same architecture on every image (`distill/`), and a
  supervised network trained from scratch on the same labels
  (`supervised_baseline/`). Fine-tuning, distillation and the baseline
  share this section's schedule, the authors' command for fine-tuning v2 on
  1% of ImageNet (their README): LARS at `learning_rate` with square-root
  batch scaling, no weight decay, no warm-up, the logits layer started at
  zero.
  """
  pipeline: bool = setting(
      False, "Run SimCLRv2's whole semi-supervised pipeline: pretrain, "
      "fine-tune on the label subset (--label_fraction or "
      "--labels_per_class), self-distil on all images, and a supervised "
      "baseline on the same labels, each in a subfolder of model_dir.",
      flag="semi_supervised", roles=(FIXED_ON_RESUME,))
  finetune_epochs: int = setting(
      60, "Pipeline: epochs of fine-tuning and of the supervised baseline, "
      "over the labelled subset (the paper's 60 at 1%).", at_least=1)
  distill_epochs: int = setting(
      60, "Pipeline: epochs of distillation, over every training image.",
      at_least=1)
  learning_rate: float = setting(
      0.005, "Pipeline: base learning rate of fine-tuning, distillation "
      "and the baseline (LARS, x sqrt(batch)).", above=0.0)
  baseline: bool = setting(
      True, "Pipeline: also train the supervised baseline from scratch on "
      "the same labels.")

  def validate(self) -> None:
    _check_declared(self)


@section()
@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What to run, for how long, where, and on what hardware."""
  mode: str = setting("train_then_eval", "train, eval or train_then_eval.",
                      choices=RUN_MODES)
  train_mode: str = setting(
      "pretrain", "pretrain (contrastive), finetune, linear_eval (frozen "
      "encoder, linear head), or distill (a student trained on the "
      "predictions of --teacher_checkpoint).", choices=TRAIN_MODES,
      roles=(FIXED_ON_RESUME,))
  model_dir: str = setting("runs/simclr", "Where checkpoints, TensorBoard "
                           "logs, results and exports go.",
                           roles=(RUN_LOCATION,))
  checkpoint: Optional[str] = setting(
      None, "Checkpoint to start fine-tuning or linear eval from (a "
      "pretraining model_dir, checkpoint prefix or SavedModel export), or "
      "to evaluate.")
  teacher_checkpoint: Optional[str] = setting(
      None, "train_mode=distill: the fixed teacher, a classifier: a "
      "fine-tuning run's model_dir or checkpoint, its export, or the "
      "authors' fine-tuned checkpoint.")
  from_scratch: bool = setting(False, "Fine-tune from random "
                               "initialisation: the supervised baseline.")
  lineareval_while_pretraining: bool = setting(
      True, "Train a linear head on stop_gradient features beside the "
      "contrastive loss.",
      roles=(FIXED_ON_RESUME,))
  train_batch_size: int = setting(
      512, "Global training batch (images; pretraining sees two views of "
      "each).", at_least=1)
  grad_cache_chunks: int = setting(
      1, "Pretraining: run each replica's batch through the network in this "
      "many chunks, holding one chunk's activations at a time, with the "
      "exact gradients of the whole batch's loss (cached gradients; about a "
      "third more compute). BatchNorm normalises each chunk on its own. "
      "Must divide the per-replica batch; 1 turns it off.",
      at_least=1)
  train_epochs: int = setting(100, "Training epochs (when train_steps is "
                              "0).", at_least=0)
  train_steps: int = setting(0, "Training steps; 0 derives them from "
                             "train_epochs.", at_least=0)
  eval_batch_size: int = setting(256, "Global evaluation batch.",
                                 at_least=1)
  eval_steps: int = setting(0, "Evaluation batches; 0 evaluates the whole "
                            "eval split.", at_least=0)
  checkpoint_epochs: int = setting(1, "Save a checkpoint every this many "
                                   "epochs (when checkpoint_steps is 0).",
                                   at_least=0)
  checkpoint_steps: int = setting(0, "Save a checkpoint every this many "
                                  "steps.", at_least=0)
  keep_checkpoint_max: int = setting(5, "Checkpoints to keep.", at_least=1)
  keep_hub_module_max: int = setting(
      1, "SavedModel exports to keep in model_dir/saved_model/ (one is "
      "written at the end of each training or evaluation); 0 writes none "
      "(the checkpoints stay loadable by every tool).", at_least=0)
  steps_per_loop: int = setting(
      1, "Optimizer steps per host call; progress, summaries and "
      "checkpoints happen between loops.", at_least=1)
  seed: int = setting(0, "Random seed.")
  strategy: str = setting("auto", "tf.distribute strategy: auto, "
                          "one_device, mirrored, multi_worker or tpu.",
                          choices=STRATEGIES,
                          roles=(RUN_LOCATION,))
  tpu: Optional[str] = setting(None, "TPU name or address for "
                               "strategy=tpu (--tpu=local on a TPU VM).",
                               roles=(RUN_LOCATION,))
  cpu_replicas: int = setting(0, "Split the host CPU into this many logical "
                              "devices to try multi-replica runs.",
                              at_least=0,
                              roles=(RUN_LOCATION,))
  precision: str = setting(
      "float32", "Keras dtype policy: float32, mixed_bfloat16, "
      "mixed_float16 (with dynamic loss scaling), or auto (mixed_bfloat16 "
      "on hardware with native bfloat16, else float32). Losses, BatchNorm "
      "statistics and LARS stay float32.", choices=PRECISIONS,
      roles=(RUN_LOCATION,))
  jit_compile: bool = setting(False, "Compile the train step with XLA.",
      roles=(RUN_LOCATION,))
  backend: Optional[str] = setting(
      None, "Keras backend: tensorflow (every feature) or jax (pretrain and "
      "linear_eval with Keras' JAX trainer, on the built-in dataset or an "
      "image folder; docs/jax.md). Unset: the KERAS_BACKEND "
      "environment variable, else tensorflow.", choices=BACKENDS,
      roles=(RUN_LOCATION,))
  knn_eval_every_epochs: int = setting(
      0, "While pretraining, report the weighted kNN accuracy of the encoder "
      "(eval/knn_top_1, eval/knn_top_5) every this many epochs and at the "
      "end; 0 turns the monitor off.", at_least=0)
  knn_bank_size: int = setting(
      10000, "kNN memory bank: at most this many train-split examples (a "
      "seeded, class-stratified sample), which bounds its cost.",
      at_least=1)
  knn_k: int = setting(200, "kNN: neighbours per query.", at_least=1)
  knn_temperature: float = setting(
      0.1, "kNN: votes weigh exp(cosine similarity / knn_temperature).",
      above=0.0)
  health_examples: int = setting(
      1024, "Label-free health signals of pretraining (health/alignment, "
      "health/uniformity, health/effective_rank; docs/evaluation.md) on at "
      "most this many eval-split images (a seeded, class-stratified "
      "sample), at the end and with the kNN monitor; 0 turns them off.",
      at_least=0)
  probe_baselines: bool = setting(
      False, "After pretraining, fit the paper's L-BFGS linear probe "
      "(logistic regression, appendix B.8) to the encoder's frozen "
      "features, to raw pixels and to a random-init encoder, and print the "
      "three in the summary (model_dir/probe.json).")
  probe_num_strengths: int = setting(
      45, "Probe: l2 strengths in the grid, log-spaced over the paper's "
      "[1e-6, 1e5] (the paper: 45).", at_least=1)
  probe_train_examples: int = setting(
      0, "Probe: fit on at most this many train examples (a seeded, "
      "class-stratified sample), to bound its cost; 0 uses all.", at_least=0)
  write_plots: bool = setting(
      False, "At the end of pretraining, write PNGs of the training curves "
      "and of an embedding of eval features to model_dir/plots "
      "(tools/plot_run.py).")

  def validate(self) -> None:
    _check_declared(self)
    _check(bool(self.model_dir), "`model_dir` must not be empty.")
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
  semi_supervised: SemiSupervisedConfig = dataclasses.field(
      default_factory=SemiSupervisedConfig)
  run: RunConfig = dataclasses.field(default_factory=RunConfig)

  def validate(self) -> "ExperimentConfig":
    """Checks every section and their combinations.

    Returns:
      self, so calls can be chained.

    Raises:
      ConfigError: with a one-line message naming the setting to change.
    """
    for section in (self.data, self.augment, self.model, self.loss,
                    self.optimizer, self.linear_eval, self.semi_supervised,
                    self.run):
      section.validate()
    run, model = self.run, self.model
    if self.semi_supervised.pipeline:
      _check(run.train_mode == "pretrain" and run.mode != "eval",
             "--semi_supervised runs the whole pipeline from pretraining: "
             "use it with train_mode=pretrain and mode=train or "
             f"train_then_eval. Received: train_mode={run.train_mode}, "
             f"mode={run.mode}")
      _check(self.data.label_fraction is not None or
             self.data.labels_per_class is not None,
             "--semi_supervised fine-tunes on a label subset: set "
             "--label_fraction (e.g. 0.1) or --labels_per_class.")
      _check(not run.checkpoint,
             "--semi_supervised pretrains its own encoder: drop "
             "--checkpoint.")
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
    if run.train_mode == "distill" and "train" in run.mode:
      _check(bool(run.teacher_checkpoint),
             "train_mode=distill needs --teacher_checkpoint: a fine-tuning "
             "run's model_dir, checkpoint or export (the teacher).")
    _check(not run.teacher_checkpoint or run.train_mode == "distill",
           "--teacher_checkpoint is the teacher of train_mode=distill. "
           f"Received: train_mode={run.train_mode}")
    _check(run.grad_cache_chunks == 1 or run.train_mode == "pretrain",
           "`grad_cache_chunks` applies to pretraining only: set "
           "grad_cache_chunks=1 for train_mode="
           f"{run.train_mode}. Received: grad_cache_chunks="
           f"{run.grad_cache_chunks}")
    _check(not (run.from_scratch and run.checkpoint),
           "--from_scratch and --checkpoint contradict each other: drop one.")
    _check(not run.from_scratch or run.train_mode in ("finetune", "distill"),
           "--from_scratch starts the network at random initialisation: use "
           "it with train_mode=finetune or distill. Received: "
           f"train_mode={run.train_mode}")
    # linear_eval_after_pretraining only means something after pretraining;
    # other train modes ignore it, so a preset that sets it can still run a
    # linear evaluation or a fine-tune without contradicting flags.
    if run.train_mode == "pretrain" and "eval" in run.mode:
      _check(run.lineareval_while_pretraining or
             self.linear_eval.after_pretraining,
             "Evaluating a pretraining run needs a supervised head: set "
             "--lineareval_while_pretraining or "
             "--linear_eval_after_pretraining, or use --mode=train.")
    return self

  def train_augment(self) -> "AugmentConfig":
    """The augmentation settings of this stage's training data.

    Returns:
      `augment` when pretraining; for fine-tuning and linear evaluation the
      same with colour distortion, blur and `branch_transforms` off: they
      see crops and flips only, as the authors' do (colour and blur are
      pretraining augmentations).
    """
    if self.run.train_mode == "pretrain":
      return self.augment
    # The one-branch protocol is a pretraining ablation: it is off here too.
    return dataclasses.replace(self.augment, color_jitter_probability=0.0,
                               grayscale_probability=0.0, use_blur=False,
                               branch_transforms="")

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
            lineareval_while_pretraining=False, grad_cache_chunks=1,
            train_batch_size=linear.train_batch_size,
            train_epochs=linear.train_epochs,
            train_steps=linear.train_steps)).validate()


  @classmethod
  def sections(cls):
    """(name, section type) of each section, in declaration order."""
    return [(field.name, field.type) for field in dataclasses.fields(cls)]

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
