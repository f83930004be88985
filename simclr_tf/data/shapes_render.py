"""Vectorised numpy renderer of the built-in `synthetic_shapes` images.

The label is the shape's outline and nothing else. Everything a shortcut could
use is random and independent of the label: foreground and background colours,
the background's texture (flat, gradient, stripes, checks), position, scale,
rotation, a slight stretch, and pixel noise. A linear classifier on raw pixels
or on a random conv net's colour/texture statistics does poorly.

The nuisances vary strongly over the dataset but each takes few values (a
12-colour palette with slight jitter, 4 texture angles, 2 periods), so many
images share them. Were they unique per image, two SimCLR views could be
matched by colour and texture alone, and the encoder would never need shape.

Shapes span 56-90% of the image side so they stay recognisable after SimCLR's
random crops at 32 px, and few crops miss the shape altogether.
"""

import numpy as np

SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross", "ring",
               "crescent", "arrow", "heart", "bowtie")
NUM_CLASSES = len(SHAPE_NAMES)

# Rendering resolution relative to the output, for anti-aliased edges.
_SUPERSAMPLE = 2
# Images rendered at once; bounds memory at large sizes.
_CHUNK = 512
# Shape radius as a fraction of the image side (diameter 56-90%).
_RADIUS_RANGE = (0.28, 0.45)
# Minimum RGB distance between the foreground and both background colours.
_MIN_COLOR_DISTANCE = 0.45
# How far a texture's second colour moves towards black or white.
_TEXTURE_CONTRAST = 0.45
_NOISE_STD_RANGE = (0.0, 0.05)
_NUM_TEXTURES = 4  # flat, gradient, stripes, checks
# Texture directions and periods (fractions of the side) are few, for the
# same reason as the palette.
_TEXTURE_ANGLES = np.array([0.0, 0.25, 0.5, 0.75]) * np.pi
_TEXTURE_PERIODS = np.array([0.2, 0.34])
_PALETTE = (
    (0.90, 0.10, 0.10), (1.00, 0.55, 0.00), (0.95, 0.90, 0.10),
    (0.10, 0.75, 0.20), (0.10, 0.80, 0.90), (0.15, 0.25, 0.90),
    (0.55, 0.20, 0.80), (0.95, 0.30, 0.75), (0.95, 0.95, 0.95),
    (0.08, 0.08, 0.08), (0.50, 0.50, 0.50), (0.50, 0.30, 0.10))
_COLOR_JITTER = 0.06


def _regular_polygon(u, v, sides: int, apothem: float, rotation: float = 0.0):
  inside = np.ones(u.shape, bool)
  for k in range(sides):
    angle = rotation + 2.0 * np.pi * k / sides
    inside &= u * np.cos(angle) + v * np.sin(angle) <= apothem
  return inside


def _star(u, v, points=5, outer=1.05, inner=0.48):
  sector = 2.0 * np.pi / points
  theta = np.arctan2(v, u) + np.pi / 2.0
  alpha = np.abs(np.mod(theta + sector / 2.0, sector) - sector / 2.0)
  r = np.hypot(u, v)
  x, y = r * np.cos(alpha), r * np.sin(alpha)
  # The boundary runs straight from the tip (outer, 0) to the notch at
  # angle sector / 2; points on the origin's side of that line are inside.
  dx = inner * np.cos(sector / 2.0) - outer
  dy = inner * np.sin(sector / 2.0)
  return dx * y - dy * (x - outer) >= 0.0


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask of shape `label` in unit coordinates (radius ~1)."""
  name = SHAPE_NAMES[label]
  r = np.hypot(u, v)
  if name == "circle":
    return r <= 0.9
  if name == "square":
    return np.maximum(np.abs(u), np.abs(v)) <= 0.72
  if name == "triangle":
    return _regular_polygon(u + 0.0, v - 0.2, 3, 0.55, np.pi / 2.0)
  if name == "star":
    return _star(u, v)
  if name == "cross":
    return (((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) |
            ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)))
  if name == "ring":
    return (r >= 0.5) & (r <= 0.95)
  if name == "crescent":
    return (r <= 1.0) & (np.hypot(u - 0.55, v) >= 0.72)
  if name == "arrow":
    shaft = (np.abs(v) <= 0.3) & (u >= -0.95) & (u <= 0.1)
    head = (u >= 0.0) & (np.abs(v) <= 0.8 * (0.95 - u) / 0.95)
    return shaft | head
  if name == "heart":
    x, y = 1.15 * u, -1.15 * v + 0.2
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
  if name == "bowtie":
    return (np.abs(v) <= np.abs(u) * 0.9 + 0.08) & (np.abs(u) <= 0.9)
  raise ValueError(f"Unknown shape label {label}")


def _texture(kind: np.ndarray, size: int, rng: np.random.Generator):
  """(n, size, size) texture weights in [0, 1], one texture kind per image."""
  n = kind.shape[0]
  coords = (np.arange(size, dtype=np.float32) + 0.5) / size
  y, x = np.meshgrid(coords, coords, indexing="ij")
  angle = _TEXTURE_ANGLES[rng.integers(0, len(_TEXTURE_ANGLES), n)]
  angle = angle.astype(np.float32)[:, None, None]
  along = x * np.cos(angle) + y * np.sin(angle)
  across = -x * np.sin(angle) + y * np.cos(angle)
  period = _TEXTURE_PERIODS[rng.integers(0, len(_TEXTURE_PERIODS), n)]
  period = period.astype(np.float32)[:, None, None]
  phase = rng.uniform(0.0, 1.0, n).astype(np.float32)[:, None, None]
  out = np.zeros((n, size, size), np.float32)
  gradient, stripes, checks = kind == 1, kind == 2, kind == 3
  out[gradient] = np.clip(
      (along[gradient] - along[gradient].min(axis=(1, 2), keepdims=True)) /
      1.42, 0.0, 1.0)
  out[stripes] = np.mod(along[stripes] / period[stripes] + phase[stripes],
                        1.0) < 0.5
  out[checks] = (np.floor(along[checks] / period[checks] + phase[checks]) +
                 np.floor(across[checks] / period[checks] +
                          phase[checks])) % 2
  return out


def _colors(n: int, rng: np.random.Generator):
  """Background, its texture's second colour, and a foreground far from both.

  Colours come from a small palette with a little jitter: colour varies a lot
  over the dataset, yet many images share a combination, so colour is not a
  per-image fingerprint that contrastive learning could match views by.
  """
  palette = np.asarray(_PALETTE, np.float32)
  def pick(count):
    base = palette[rng.integers(0, len(palette), count)]
    jitter = rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, (count, 3))
    return np.clip(base + jitter.astype(np.float32), 0.0, 1.0)
  background = pick(n)
  # The texture's second colour is the background made darker or lighter.
  lighter = rng.random(n) < 0.5
  second = np.where(lighter[:, None],
                    background + (1.0 - background) * _TEXTURE_CONTRAST,
                    background * (1.0 - _TEXTURE_CONTRAST))
  foreground = pick(n)
  for _ in range(100):
    close = np.minimum(np.linalg.norm(foreground - background, axis=1),
                       np.linalg.norm(foreground - second, axis=1)
                       ) < _MIN_COLOR_DISTANCE
    if not close.any():
      break
    foreground[close] = pick(int(close.sum()))
  else:
    # Rare leftovers: the colour opposite the background is always far.
    foreground[close] = 1.0 - background[close]
  return background, second, foreground


def _render_chunk(labels: np.ndarray, size: int,
                  rng: np.random.Generator) -> np.ndarray:
  n = labels.shape[0]
  big = size * _SUPERSAMPLE
  radius = rng.uniform(*_RADIUS_RANGE, n).astype(np.float32)
  margin = radius * 0.85
  cx = rng.uniform(margin, 1.0 - margin).astype(np.float32)
  cy = rng.uniform(margin, 1.0 - margin).astype(np.float32)
  angle = rng.uniform(0.0, 2.0 * np.pi, n).astype(np.float32)
  stretch = np.exp(rng.uniform(-0.15, 0.15, n)).astype(np.float32)
  background, second, foreground = _colors(n, rng)
  weight = _texture(rng.integers(0, _NUM_TEXTURES, n), size, rng)[..., None]
  bg_image = (background[:, None, None, :] * (1.0 - weight) +
              second[:, None, None, :] * weight)
  fg_image = np.broadcast_to(foreground[:, None, None, :], bg_image.shape)

  coords = (np.arange(big, dtype=np.float32) + 0.5) / big
  y, x = np.meshgrid(coords, coords, indexing="ij")
  dx = x[None] - cx[:, None, None]
  dy = y[None] - cy[:, None, None]
  cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
  scale_u = (radius * stretch)[:, None, None]
  scale_v = (radius / stretch)[:, None, None]
  u = (dx * cos + dy * sin) / scale_u
  v = (-dx * sin + dy * cos) / scale_v
  mask = np.zeros((n, big, big), np.float32)
  for label in np.unique(labels):
    idx = np.nonzero(labels == label)[0]
    mask[idx] = _shape_mask(int(label), u[idx], v[idx])
  alpha = mask.reshape(n, size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(
      axis=(2, 4))[..., None]
  image = bg_image * (1.0 - alpha) + fg_image * alpha
  noise_std = rng.uniform(*_NOISE_STD_RANGE, n).astype(np.float32)
  image += rng.standard_normal(image.shape, np.float32) * noise_std[
      :, None, None, None]
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_shapes(num_examples: int, size: int, seed: int,
                  stream: int = 0):
  """Renders a deterministic, class-balanced set of shape images.

  Args:
    num_examples: number of images.
    size: image side in pixels (>= 8).
    seed: the dataset seed.
    stream: separates independent sets from one seed (e.g. 0 for train,
      1 for test).

  Returns:
    (images uint8 (N, size, size, 3), labels int64 (N,)). Class counts differ
    by at most one. The same arguments give bit-identical arrays.
  """
  if size < 8:
    raise ValueError(f"`size` must be at least 8. Received: size={size}")
  if num_examples < 1:
    raise ValueError(f"`num_examples` must be positive. Received: "
                     f"num_examples={num_examples}")
  rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
  labels = rng.permutation(np.arange(num_examples) % NUM_CLASSES)
  images = np.empty((num_examples, size, size, 3), np.uint8)
  for start in range(0, num_examples, _CHUNK):
    stop = min(start + _CHUNK, num_examples)
    images[start:stop] = _render_chunk(labels[start:stop], size, rng)
  return images, labels.astype(np.int64)
