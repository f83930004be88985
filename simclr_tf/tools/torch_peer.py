"""A PyTorch SimCLR train step: the peer that `benchmark --backend=jax` times.

The network is torchvision's ResNet (v1.5: the stride sits on the 3x3
convolution, as in ours), taken from torchvision when it imports and the
width multiplier is 1, else built here to the same layout (torchvision has
no width multiplier, and the CPU wheel of torchvision does not load on every
machine). With the CIFAR stem, the first convolution is 3x3 stride 1 and
there is no max-pool, as in ours. On top: the SimCLR v2 projection head
(3 layers, BatchNorm, ReLU between) and NT-Xent over the 2B views. The
optimizer is SGD with momentum 0.9: PyTorch has no LARS, and the optimizer
is a small part of a step.

Two modes, each on channels-last tensors: eager, and `torch.compile`.
"""

import time
from typing import Dict, Optional

import torch
from torch import nn
from torch.nn import functional


class _Basic(nn.Module):
  expansion = 1

  def __init__(self, inputs, filters, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inputs, filters, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(filters)
    self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(filters)
    self.shortcut = None
    if stride != 1 or inputs != filters:
      self.shortcut = nn.Sequential(
          nn.Conv2d(inputs, filters, 1, stride, bias=False),
          nn.BatchNorm2d(filters))

  def forward(self, x):
    out = functional.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return functional.relu(out + (x if self.shortcut is None
                                  else self.shortcut(x)))


class _Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inputs, filters, stride):
    super().__init__()
    outputs = 4 * filters
    self.conv1 = nn.Conv2d(inputs, filters, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(filters)
    self.conv2 = nn.Conv2d(filters, filters, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(filters)
    self.conv3 = nn.Conv2d(filters, outputs, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(outputs)
    self.shortcut = None
    if stride != 1 or inputs != outputs:
      self.shortcut = nn.Sequential(
          nn.Conv2d(inputs, outputs, 1, stride, bias=False),
          nn.BatchNorm2d(outputs))

  def forward(self, x):
    out = functional.relu(self.bn1(self.conv1(x)))
    out = functional.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return functional.relu(out + (x if self.shortcut is None
                                  else self.shortcut(x)))


_LAYOUTS = {18: (_Basic, (2, 2, 2, 2)), 34: (_Basic, (3, 4, 6, 3)),
            50: (_Bottleneck, (3, 4, 6, 3)), 101: (_Bottleneck, (3, 4, 23, 3)),
            152: (_Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
  """torchvision's ResNet layout with a width multiplier; returns features.

  Args:
    depth: 18, 34, 50, 101 or 152.
    width_multiplier: channels scale.
    cifar_stem: 3x3 stride-1 stem without max-pool.
  """

  def __init__(self, depth: int, width_multiplier: float = 1.0,
               cifar_stem: bool = False):
    super().__init__()
    if depth not in _LAYOUTS:
      raise ValueError(f"`depth` must be one of {sorted(_LAYOUTS)}. "
                       f"Received: depth={depth}")
    block, counts = _LAYOUTS[depth]
    width = int(64 * width_multiplier)
    if cifar_stem:
      self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU())
    else:
      self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU(),
                                nn.MaxPool2d(3, 2, 1))
    layers = []
    inputs = width
    for index, count in enumerate(counts):
      filters = width * 2**index
      for repeat in range(count):
        stride = 2 if index > 0 and repeat == 0 else 1
        layers.append(block(inputs, filters, stride))
        inputs = filters * block.expansion
    self.blocks = nn.Sequential(*layers)
    self.num_features = inputs

  def forward(self, x):
    return torch.flatten(
        functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


def _torchvision_resnet(depth: int):
  try:
    import torchvision  # Optional: the reference implementation.
  except (ImportError, RuntimeError, OSError):
    return None
  model = getattr(torchvision.models, f"resnet{depth}", None)
  if model is None:
    return None
  network = model()
  network.fc = nn.Identity()
  network.num_features = 2048 if depth >= 50 else 512
  return network


class SimCLRNet(nn.Module):
  """Encoder and the 3-layer projection head."""

  def __init__(self, encoder, out_dim: int):
    super().__init__()
    self.encoder = encoder
    features = encoder.num_features
    self.head = nn.Sequential(
        nn.Linear(features, features, bias=False), nn.BatchNorm1d(features),
        nn.ReLU(), nn.Linear(features, features, bias=False),
        nn.BatchNorm1d(features), nn.ReLU(),
        nn.Linear(features, out_dim, bias=False), nn.BatchNorm1d(out_dim))

  def forward(self, x):
    return self.head(self.encoder(x))


def nt_xent(projections, temperature: float):
  """NT-Xent over 2B rows (view 1 first), the authors' scale (sum of both
  directions averaged over images)."""
  z = functional.normalize(projections.float(), dim=1)
  batch = z.shape[0] // 2
  logits = z @ z.t() / temperature
  logits = logits - 1e9 * torch.eye(2 * batch, device=z.device)
  targets = torch.cat([torch.arange(batch, 2 * batch),
                       torch.arange(batch)]).to(z.device)
  return 2.0 * functional.cross_entropy(logits, targets)


class TorchPeer:
  """One configuration's PyTorch step, eager or compiled.

  Args:
    depth: ResNet depth.
    width_multiplier: channels scale.
    cifar_stem: the CIFAR stem.
    image_size: input side.
    batch_size: images per step (2x views).
    out_dim: projection size.
    temperature: NT-Xent temperature.
    bfloat16: autocast to bfloat16.
    compiled: `torch.compile` the step's forward and loss.
    device: "cuda" where available, else "cpu".
  """

  def __init__(self, *, depth, width_multiplier, cifar_stem, image_size,
               batch_size, out_dim, temperature, bfloat16, compiled,
               device: Optional[str] = None):
    self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = None
    if width_multiplier == 1 and not cifar_stem:
      encoder = _torchvision_resnet(depth)
    self.encoder_source = "torchvision" if encoder is not None else (
        "torchvision layout, built here")
    if encoder is None:
      encoder = ResNet(depth, width_multiplier, cifar_stem)
    self.net = SimCLRNet(encoder, out_dim).to(self.device).to(
        memory_format=torch.channels_last)
    self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1,
                                     momentum=0.9)
    self.temperature = temperature
    self.bfloat16 = bfloat16
    self.views = torch.rand(2 * batch_size, 3, image_size, image_size,
                            device=self.device).to(
                                memory_format=torch.channels_last)
    self._forward = self._loss
    if compiled:
      self._forward = torch.compile(self._loss)

  def _loss(self, views):
    with torch.autocast(self.device, dtype=torch.bfloat16,
                        enabled=self.bfloat16):
      projections = self.net(views)
    return nt_xent(projections, self.temperature)

  def step(self):
    self.optimizer.zero_grad(set_to_none=True)
    loss = self._forward(self.views)
    loss.backward()
    self.optimizer.step()
    return loss

  def time_steps(self, steps: int) -> float:
    """Seconds for `steps` steps, after the device finished."""
    start = time.perf_counter()
    for _ in range(steps):
      loss = self.step()
    loss.detach().item()  # Waits for the device.
    return time.perf_counter() - start

  def describe(self) -> Dict[str, str]:
    return {"encoder": self.encoder_source, "device": self.device,
            "torch": torch.__version__}
