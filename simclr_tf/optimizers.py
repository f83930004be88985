"""LARS, the warm-up and cosine learning-rate schedule, and optimizer building.

Everything here follows the SimCLR authors' TF2 code (google-research/simclr)
update for update:

- `LARS`: layer-wise adaptive rate scaling (You et al. 2017) with the authors'
  "classic" momentum (the learning rate is applied inside the momentum) and
  their coupled weight decay (added to the gradient, not decoupled).
- `WarmUpAndCosineDecay`: linear warm-up over `warmup_epochs`, then cosine
  decay to 0 over the remaining steps, with linear or square-root batch
  scaling of the base learning rate.
- `l2_weight_decay`: the L2 term the authors add to the loss, which depends on
  the optimizer because LARS already decays most variables itself.
- `build_optimizer`: an optimizer from an `OptimizerConfig`.

Variables are matched by their Keras 3 `variable.path`, e.g.
"dense/kernel", "batch_normalization/gamma" or
"simclr/block_group1/batch_normalization_3/beta". The exclusions therefore
rely on Keras' default layer names: a BatchNormalization layer must keep
"batch_normalization" in its name and the supervised head must be named
"head_supervised".
"""

import math
import numbers
import re

import keras
from keras import ops

# What the authors exclude from LARS' weight decay (and so, by default, from
# its layer adaptation): BatchNorm parameters, biases and the supervised
# (linear-eval) head, whose weight decay goes through the loss instead.
LARS_EXCLUDE_FROM_WEIGHT_DECAY = ("batch_normalization", "bias",
                                  "head_supervised")
# BatchNorm parameters are never weight-decayed, whatever the optimizer.
BATCH_NORM_PATTERN = "batch_normalization"
# Substrings `l2_weight_decay` uses for the LARS case.
SUPERVISED_HEAD_PATTERN = "head_supervised"
BIAS_PATTERN = "bias"

OPTIMIZER_NAMES = ("lars", "momentum", "adam")
LEARNING_RATE_SCALINGS = ("linear", "sqrt")

# The authors' default trust coefficient.
DEFAULT_EETA = 0.001


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _variable_path(variable) -> str:
  """The name exclusions are matched against.

  Keras 3 variables have `path` ("block/batch_normalization/gamma"); a plain
  `tf.Variable` only has `name`, which we fall back to.
  """
  path = getattr(variable, "path", None)
  return path if path else variable.name


def _compile_patterns(name, patterns):
  """Validates a list of regex strings and compiles it.

  Args:
    name: the argument's name, for error messages.
    patterns: None or a list/tuple of regex strings.

  Returns:
    (patterns as a tuple of strings, tuple of compiled regexes).

  Raises:
    ValueError: for a bare string (which would otherwise be iterated
      character by character, excluding nearly everything) or a bad regex.
  """
  if patterns is None:
    return (), ()
  if isinstance(patterns, (str, bytes)):
    raise ValueError(
        f"`{name}` must be a list of regex strings, not a single string. "
        f"Received: {name}={patterns!r}. Wrap it in a list: [{patterns!r}]")
  patterns = tuple(patterns)
  compiled = []
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ValueError(f"`{name}` must contain only regex strings. "
                       f"Received: {name}={list(patterns)!r}")
    try:
      compiled.append(re.compile(pattern))
    except re.error as error:
      raise ValueError(f"`{name}` has an invalid regex {pattern!r} ({error}). "
                       f"Received: {name}={list(patterns)!r}") from None
  return patterns, tuple(compiled)


def _matches_any(path, compiled_patterns) -> bool:
  return any(pattern.search(path) for pattern in compiled_patterns)


@keras.saving.register_keras_serializable(package="simclr_tf")
class LARS(keras.optimizers.Optimizer):
  """Layer-wise Adaptive Rate Scaling (You et al. 2017), as SimCLR uses it.

  Per variable `w` with gradient `g`, momentum slot `v` and learning rate
  `lr` (the schedule's value at the current iteration):

  1. If weight decay applies to `w`: `g <- g + weight_decay * w` (coupled
     L2 decay, added to the gradient as the authors do).
  2. With `classic_momentum=True` (the authors' default), the learning rate
     lives inside the momentum:
     `trust = eeta * |w| / |g|` (1 when adaptation is excluded or a norm is
     0), `v <- momentum * v + lr * trust * g`,
     `update = momentum * v + lr * trust * g` if `nesterov` else `v`,
     `w <- w - update`.
  3. With `classic_momentum=False` ("popular" momentum), the learning rate
     and trust ratio multiply the momentum's output:
     `v <- momentum * v + g`, `update = momentum * v + g` if `nesterov`
     else `v`, `trust = eeta * |w| / |update|`,
     `w <- w - lr * trust * update`.

  Norms are L2 norms over the whole tensor. The arithmetic is done in
  float32 even for float16/bfloat16 variables: squared norms overflow
  float16 (above 65504) easily, which would silently zero the trust ratio.
  The momentum slot has the variable's dtype.

  Exclusions are lists of regexes searched (`re.search`) in each variable's
  Keras 3 `path`, e.g. "block_group1/batch_normalization_3/gamma"; any match
  excludes the variable.

  Keras' own decoupled weight decay (the base class `weight_decay`) stays
  off: `self.weight_decay` is always None, and this optimizer's coefficient
  is `self.coupled_weight_decay`. `get_config()["weight_decay"]` is the
  LARS coefficient, so configs round-trip.

  Works under `tf.distribute` strategies: Keras' TF optimizer all-reduces
  (sums) the gradients across replicas and then calls `update_step` once per
  variable on each replica's copy.

  Args:
    learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule`
      (evaluated at `iterations` before it is incremented) or a callable
      taking no arguments.
    momentum: momentum in [0, 1).
    nesterov: use Nesterov momentum.
    weight_decay: coupled L2 weight-decay coefficient, >= 0. 0 turns weight
      decay off everywhere.
    exclude_from_weight_decay: list of regexes; variables whose path matches
      one get no weight decay. None excludes nothing.
    exclude_from_layer_adaptation: list of regexes; variables whose path
      matches one use a trust ratio of 1. None (the default) uses
      `exclude_from_weight_decay`, as the authors do. Pass `[]` to adapt
      every variable. (The authors' code also falls back for an empty list;
      the authors never pass this argument, so their runs are unaffected.)
    classic_momentum: True for the authors' classic momentum, False for
      "popular" momentum (see above).
    eeta: trust coefficient, > 0.
    name: the optimizer's name.
    **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`,
      `global_clipnorm`, `use_ema`, `loss_scale_factor`, ...).
  """

  def __init__(self,
               learning_rate,
               momentum=0.9,
               nesterov=False,
               weight_decay=0.0,
               exclude_from_weight_decay=None,
               exclude_from_layer_adaptation=None,
               classic_momentum=True,
               eeta=DEFAULT_EETA,
               name="LARS",
               **kwargs):
    # Check our own arguments before the base class creates any variable.
    if not _is_number(momentum) or not 0.0 <= momentum < 1.0:
      raise ValueError(
          f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")
    if not _is_number(eeta) or not eeta > 0 or not math.isfinite(eeta):
      raise ValueError(
          f"`eeta` must be a positive number. Received: eeta={eeta!r}")
    if (not _is_number(weight_decay) or not weight_decay >= 0 or
        not math.isfinite(weight_decay)):
      raise ValueError(f"`weight_decay` must be >= 0. Received: "
                       f"weight_decay={weight_decay!r}")
    decay_patterns, decay_regexes = _compile_patterns(
        "exclude_from_weight_decay", exclude_from_weight_decay)
    adaptation_patterns, adaptation_regexes = _compile_patterns(
        "exclude_from_layer_adaptation", exclude_from_layer_adaptation)
    # Keras only accepts a Python float learning rate; accept ints and numpy
    # scalars too (e.g. `learning_rate=1`).
    if _is_number(learning_rate) and not isinstance(learning_rate, float):
      learning_rate = float(learning_rate)
    # The base class' `weight_decay` is Keras' *decoupled* decay (applied to
    # the variable, scaled by lr, before update_step). LARS' decay is
    # coupled, so the base must never see it or variables would be decayed
    # twice. (`from_config` hands the "weight_decay" key back to us.)
    super().__init__(learning_rate=learning_rate, weight_decay=None,
                     name=name, **kwargs)
    self.momentum = float(momentum)
    self.nesterov = bool(nesterov)
    self.coupled_weight_decay = float(weight_decay)
    self.classic_momentum = bool(classic_momentum)
    self.eeta = float(eeta)
    # Constructor arguments as given, for get_config.
    self._exclude_from_weight_decay_arg = (
        None if exclude_from_weight_decay is None else list(decay_patterns))
    self._exclude_from_layer_adaptation_arg = (
        None if exclude_from_layer_adaptation is None
        else list(adaptation_patterns))
    self._decay_regexes = decay_regexes
    # The authors' default: adaptation follows the weight-decay exclusions.
    self._adaptation_regexes = (decay_regexes
                                if exclude_from_layer_adaptation is None
                                else adaptation_regexes)

  def build(self, var_list):
    """Creates one momentum slot per variable and resolves the exclusions.

    Exclusions are decided here, once, from each variable's path: inside
    `update_step` under a distribution strategy the variable is a
    per-replica `tf.Variable` without a Keras path, so `update_step` looks
    the decision up by the variable's index instead.

    Args:
      var_list: the model variables this optimizer will update.
    """
    if self.built:
      return
    super().build(var_list)
    # Named like keras.optimizers.SGD's slots ("momentums").
    self.momentums = [
        self.add_variable_from_reference(variable, name="momentum")
        for variable in var_list
    ]
    self._applies_weight_decay = [
        self.applies_weight_decay(variable) for variable in var_list
    ]
    self._applies_layer_adaptation = [
        self.applies_layer_adaptation(variable) for variable in var_list
    ]

  def applies_weight_decay(self, variable) -> bool:
    """Whether LARS weight-decays `variable`.

    Args:
      variable: a Keras variable (its `path` is used) or a path string.

    Returns:
      True unless weight decay is 0 or the path matches an exclusion.
    """
    path = variable if isinstance(variable, str) else _variable_path(variable)
    return (self.coupled_weight_decay > 0 and
            not _matches_any(path, self._decay_regexes))

  def applies_layer_adaptation(self, variable) -> bool:
    """Whether LARS scales `variable`'s step by a trust ratio.

    Args:
      variable: a Keras variable (its `path` is used) or a path string.

    Returns:
      True unless the path matches a layer-adaptation exclusion.
    """
    path = variable if isinstance(variable, str) else _variable_path(variable)
    return not _matches_any(path, self._adaptation_regexes)

  def _trust_ratio(self, weight, direction):
    """eeta * |weight| / |direction|, or 1 when either norm is 0."""
    weight_norm = ops.sqrt(ops.sum(ops.square(weight)))
    direction_norm = ops.sqrt(ops.sum(ops.square(direction)))
    both_positive = ops.logical_and(ops.greater(weight_norm, 0.0),
                                    ops.greater(direction_norm, 0.0))
    # Divide by a safe denominator so that the branch `where` discards never
    # computes 0/0 or x/0: the result would be the same, but inf/NaN
    # intermediates trip tf.debugging.enable_check_numerics.
    safe_norm = ops.where(both_positive, direction_norm, 1.0)
    return ops.where(both_positive, self.eeta * weight_norm / safe_norm, 1.0)

  def update_step(self, gradient, variable, learning_rate):
    """Applies one LARS step to one variable.

    Args:
      gradient: the (all-reduced) gradient of `variable`.
      variable: the model variable (under a strategy, one replica's copy).
      learning_rate: the learning rate for this iteration.
    """
    index = self._get_variable_index(variable)
    velocity = self.momentums[index]
    # float32 for all arithmetic; see the class docstring.
    weight = ops.cast(variable, "float32")
    grad = ops.cast(gradient, "float32")
    old_velocity = ops.cast(velocity, "float32")
    lr = ops.cast(learning_rate, "float32")
    momentum = self.momentum
    adapt = self._applies_layer_adaptation[index]

    if self._applies_weight_decay[index]:
      grad = grad + self.coupled_weight_decay * weight

    if self.classic_momentum:
      # The trust ratio is of the gradient (after weight decay), and the
      # scaled learning rate enters the momentum buffer.
      trust = self._trust_ratio(weight, grad) if adapt else 1.0
      scaled_lr = lr * trust
      new_velocity = momentum * old_velocity + scaled_lr * grad
      if self.nesterov:
        update = momentum * new_velocity + scaled_lr * grad
      else:
        update = new_velocity
      new_weight = weight - update
    else:
      # Popular momentum: the buffer accumulates raw gradients and the trust
      # ratio is of the resulting update direction.
      new_velocity = momentum * old_velocity + grad
      if self.nesterov:
        update = momentum * new_velocity + grad
      else:
        update = new_velocity
      trust = self._trust_ratio(weight, update) if adapt else 1.0
      new_weight = weight - lr * trust * update

    self.assign(velocity, ops.cast(new_velocity, velocity.dtype))
    self.assign(variable, ops.cast(new_weight, variable.dtype))

  def exclude_from_weight_decay(self, var_list=None, var_names=None):
    """Not supported: LARS takes its exclusions in the constructor.

    The base class method configures Keras' decoupled weight decay, which
    LARS keeps off, so calling it would silently do nothing.
    """
    del var_list, var_names
    raise NotImplementedError(
        "LARS takes weight-decay exclusions as regexes matched against "
        "variable paths in its constructor: "
        "LARS(..., exclude_from_weight_decay=['batch_normalization', 'bias'])")

  def get_config(self):
    """Returns every constructor argument (and the base class' ones)."""
    config = super().get_config()
    config.update({
        "momentum": self.momentum,
        "nesterov": self.nesterov,
        # Replaces the base class' (always None) decoupled weight decay.
        "weight_decay": self.coupled_weight_decay,
        "exclude_from_weight_decay": self._exclude_from_weight_decay_arg,
        "exclude_from_layer_adaptation":
            self._exclude_from_layer_adaptation_arg,
        "classic_momentum": self.classic_momentum,
        "eeta": self.eeta,
    })
    return config


def _check_positive_int(name, value, minimum=1):
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool) or
      value < minimum):
    raise ValueError(f"`{name}` must be an integer >= {minimum}. "
                     f"Received: {name}={value!r}")


def scale_learning_rate(base_learning_rate, batch_size, scaling="linear"):
  """The authors' batch-size scaling of the base learning rate.

  Args:
    base_learning_rate: the learning rate before scaling.
    batch_size: the global training batch size.
    scaling: "linear" (base * batch_size / 256) or "sqrt"
      (base * sqrt(batch_size)).

  Returns:
    The scaled learning rate as a Python float.

  Raises:
    ValueError: for an unknown `scaling`.
  """
  if scaling == "linear":
    return base_learning_rate * batch_size / 256.0
  if scaling == "sqrt":
    return base_learning_rate * math.sqrt(batch_size)
  raise ValueError(f"`scaling` must be one of "
                   f"{', '.join(LEARNING_RATE_SCALINGS)}. "
                   f"Received: scaling={scaling!r}")


def warmup_steps_for(warmup_epochs, num_examples, batch_size) -> int:
  """The authors' warm-up length in steps.

  Exactly `int(round(warmup_epochs * num_examples // batch_size))`: the
  floor division happens first, so e.g. 10 epochs of 50000 examples at batch
  512 give 976 steps (976.56 floored), not 977.

  Args:
    warmup_epochs: epochs of warm-up (may be fractional).
    num_examples: examples per epoch.
    batch_size: global batch size.

  Returns:
    The number of warm-up steps.
  """
  return int(round(warmup_epochs * num_examples // batch_size))


@keras.saving.register_keras_serializable(package="simclr_tf")
class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up, then cosine decay to 0, as in the SimCLR authors' code.

  With `scaled = scale_learning_rate(base_learning_rate, batch_size,
  scaling)`, `warmup = warmup_steps_for(warmup_epochs, num_examples,
  batch_size)` and `decay = total_steps - warmup`:

  - step < warmup: `step / warmup * scaled`;
  - otherwise: `scaled * 0.5 * (1 + cos(pi * min(step - warmup, decay) /
    decay))`, reaching 0 at `total_steps` and staying there.

  With `warmup_epochs=0` the cosine starts at step 0. If the warm-up covers
  the whole run (`decay <= 0`; the authors' code then computes 0/0 = NaN
  when `decay == 0`), steps from `warmup` on get `scaled`, the value the
  warm-up was heading for. Training never sees it: all of such a run's
  steps (0 to `total_steps - 1`) are warm-up steps.

  Values are float32; `step` may be a Python number or an integer tensor
  (e.g. the optimizer's `iterations`), also inside `tf.function`.

  Args:
    base_learning_rate: learning rate before batch scaling, > 0.
    batch_size: global training batch size, >= 1.
    num_examples: training examples per epoch, >= 1.
    warmup_epochs: epochs of linear warm-up, >= 0.
    total_steps: total optimizer steps of the run, >= 1 (see
      `total_train_steps`).
    scaling: "linear" or "sqrt".
    name: name scope of the ops.
  """

  def __init__(self,
               base_learning_rate,
               *,
               batch_size,
               num_examples,
               warmup_epochs,
               total_steps,
               scaling="linear",
               name="WarmUpAndCosineDecay"):
    if (not _is_number(base_learning_rate) or not base_learning_rate > 0 or
        not math.isfinite(base_learning_rate)):
      raise ValueError(f"`base_learning_rate` must be positive. Received: "
                       f"base_learning_rate={base_learning_rate!r}")
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("num_examples", num_examples)
    _check_positive_int("total_steps", total_steps)
    if (not _is_number(warmup_epochs) or not warmup_epochs >= 0 or
        not math.isfinite(warmup_epochs)):
      raise ValueError(f"`warmup_epochs` must be >= 0. Received: "
                       f"warmup_epochs={warmup_epochs!r}")
    # Raises for an unknown scaling, naming it.
    self._scaled_learning_rate = scale_learning_rate(
        base_learning_rate, batch_size, scaling)
    self.base_learning_rate = base_learning_rate
    self.batch_size = batch_size
    self.num_examples = num_examples
    self.warmup_epochs = warmup_epochs
    self.total_steps = total_steps
    self.scaling = scaling
    self.name = name
    self._warmup_steps = warmup_steps_for(warmup_epochs, num_examples,
                                          batch_size)

  @property
  def warmup_steps(self) -> int:
    """Steps of linear warm-up."""
    return self._warmup_steps

  @property
  def scaled_learning_rate(self) -> float:
    """The peak learning rate, after batch scaling."""
    return self._scaled_learning_rate

  @property
  def decay_steps(self) -> int:
    """Steps of cosine decay (<= 0 when the warm-up covers the run)."""
    return self.total_steps - self._warmup_steps

  def __call__(self, step):
    """The learning rate at `step`, a float32 scalar tensor."""
    with keras.name_scope(self.name):
      step = ops.cast(step, "float32")
      peak = ops.cast(self._scaled_learning_rate, "float32")
      warmup = self._warmup_steps
      decay = self.decay_steps

      if warmup > 0:
        warmup_lr = step / float(warmup) * peak
      else:
        warmup_lr = peak
      if decay > 0:
        decay_progress = ops.minimum(
            ops.maximum(step - float(warmup), 0.0), float(decay)) / decay
        cosine_lr = peak * 0.5 * (1.0 + ops.cos(math.pi * decay_progress))
      else:
        # Documented guard: the warm-up covers the whole run.
        cosine_lr = peak
      learning_rate = ops.where(ops.less(step, float(warmup)), warmup_lr,
                                cosine_lr)
      return ops.cast(learning_rate, "float32")

  def get_config(self):
    """Returns every constructor argument."""
    return {
        "base_learning_rate": self.base_learning_rate,
        "batch_size": self.batch_size,
        "num_examples": self.num_examples,
        "warmup_epochs": self.warmup_epochs,
        "total_steps": self.total_steps,
        "scaling": self.scaling,
        "name": self.name,
    }


def schedule_from_config(optimizer_config, *, batch_size: int,
                         num_examples: int,
                         total_steps: int) -> "WarmUpAndCosineDecay":
  """The learning-rate schedule an `OptimizerConfig` describes.

  Args:
    optimizer_config: a `simclr_tf.config.OptimizerConfig`.
    batch_size: the global train batch size.
    num_examples: training examples (warm-up epochs are counted in them).
    total_steps: the run's last step.

  Returns:
    A `WarmUpAndCosineDecay`.
  """
  return WarmUpAndCosineDecay(
      optimizer_config.learning_rate, batch_size=batch_size,
      num_examples=num_examples,
      warmup_epochs=optimizer_config.warmup_epochs, total_steps=total_steps,
      scaling=optimizer_config.learning_rate_scaling)


def total_train_steps(num_examples, train_epochs, batch_size,
                      train_steps=0) -> int:
  """The authors' number of training steps.

  Args:
    num_examples: training examples per epoch.
    train_epochs: epochs to train, used when `train_steps` is 0.
    batch_size: global training batch size.
    train_steps: explicit step count; 0 derives it from the epochs.

  Returns:
    `train_steps` if it is positive, else
    `num_examples * train_epochs // batch_size + 1` (the authors' "+ 1").
  """
  _check_positive_int("batch_size", batch_size)
  _check_positive_int("train_steps", train_steps, minimum=0)
  if train_steps > 0:
    return int(train_steps)
  return int(num_examples * train_epochs // batch_size + 1)


def _half_squared_norm(variable):
  value = ops.cast(variable, "float32")
  return 0.5 * ops.sum(ops.square(value))


def l2_weight_decay(variables, weight_decay, optimizer_name):
  """The L2 weight-decay term to add to the loss, as the authors do.

  With LARS, the optimizer already decays every variable except BatchNorm
  parameters, biases and the supervised head; only the supervised head's
  non-bias weights are decayed through the loss. With momentum or Adam, the
  loss decays every given variable except BatchNorm parameters (biases
  included, as in the authors' code).

  Under a distribution strategy the replicas' gradients are summed, so the
  term must reach the summed gradient exactly once: add it to each replica's
  loss before that loss is divided by the number of replicas. (Keras 3
  `fit` on TensorFlow already divides compiled losses and `add_loss` terms
  by the number of replicas; a term added to such an already-divided loss
  must be divided too.)

  Args:
    variables: Keras variables (matched by `path`), usually the model's
      trainable variables.
    weight_decay: the coefficient, >= 0.
    optimizer_name: "lars", "momentum" or "adam".

  Returns:
    A float32 scalar: `weight_decay * sum(0.5 * ||v||^2)` over the selected
    variables, 0.0 when none is selected.

  Raises:
    ValueError: for an unknown optimizer or a negative weight decay.
  """
  if optimizer_name not in OPTIMIZER_NAMES:
    raise ValueError(f"`optimizer_name` must be one of "
                     f"{', '.join(OPTIMIZER_NAMES)}. "
                     f"Received: optimizer_name={optimizer_name!r}")
  if not _is_number(weight_decay) or not weight_decay >= 0:
    raise ValueError(f"`weight_decay` must be >= 0. Received: "
                     f"weight_decay={weight_decay!r}")
  if optimizer_name == "lars":
    selected = [
        v for v in variables
        if SUPERVISED_HEAD_PATTERN in _variable_path(v) and
        BIAS_PATTERN not in _variable_path(v)
    ]
  else:
    selected = [
        v for v in variables if BATCH_NORM_PATTERN not in _variable_path(v)
    ]
  if not selected:
    return ops.convert_to_tensor(0.0, dtype="float32")
  total = ops.sum(ops.stack([_half_squared_norm(v) for v in selected]))
  return ops.cast(weight_decay, "float32") * total


def build_optimizer(optimizer_config, learning_rate):
  """Builds the optimizer an `OptimizerConfig` asks for.

  - "lars": `LARS` with the config's momentum and weight decay, excluding
    BatchNorm, biases and the supervised head (`LARS_EXCLUDE_FROM_WEIGHT_DECAY`)
    from weight decay and layer adaptation, as the authors do.
  - "momentum": `keras.optimizers.SGD` with Nesterov momentum (the authors'
    choice).
  - "adam": `keras.optimizers.Adam` with `beta_1 = config.momentum`, as
    `OptimizerConfig` documents. The authors used default Adam; the
    default momentum 0.9 equals Adam's default beta_1, so default configs
    match them.

  For "momentum" and "adam" the optimizer has no weight decay: add
  `l2_weight_decay(..., optimizer_name)` to the loss (for "lars" too, which
  covers the supervised head).

  Args:
    optimizer_config: a `simclr_tf.config.OptimizerConfig`.
    learning_rate: a float or a `LearningRateSchedule` (usually
      `WarmUpAndCosineDecay`).

  Returns:
    A `keras.optimizers.Optimizer`.

  Raises:
    ValueError: for an unknown optimizer name.
  """
  name = optimizer_config.optimizer
  momentum = float(optimizer_config.momentum)
  if _is_number(learning_rate):
    learning_rate = float(learning_rate)
  if name == "lars":
    return LARS(learning_rate,
                momentum=momentum,
                weight_decay=float(optimizer_config.weight_decay),
                exclude_from_weight_decay=list(LARS_EXCLUDE_FROM_WEIGHT_DECAY))
  if name == "momentum":
    return keras.optimizers.SGD(learning_rate, momentum=momentum,
                                nesterov=True)
  if name == "adam":
    return keras.optimizers.Adam(learning_rate, beta_1=momentum)
  raise ValueError(f"`optimizer` must be one of {', '.join(OPTIMIZER_NAMES)}. "
                   f"Received: optimizer={name!r}")
