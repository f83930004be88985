"""Image files that decoders hate: every mode to RGB, the rest skipped, named.

Pillow writes the files and is the reference for their pixels.
"""

import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_tf.data import encoded_image
from tests.command_line import run_program
from tests.command_line import tiny_flags

_RGB = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
# Claimed size of the decompression bomb: 900 million pixels, 2.7 GB as RGB.
_BOMB_SIDE = 30000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return (struct.pack(">I", len(data)) + kind + data +
          struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _bomb_png(side: int) -> bytes:
  """A valid-looking PNG header claiming side x side RGB pixels, small data."""
  header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
  data = zlib.compress(b"\0" * 1000)
  return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) +
          _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))


def _write_kinds(folder):
  """Every usable kind, returned with Pillow's RGB view of it."""
  folder.mkdir(parents=True, exist_ok=True)
  rgb = Image.fromarray(_RGB)
  kinds = {
      "rgb.jpg": rgb,
      "gray.png": rgb.convert("L"),
      "rgba.png": rgb.convert("RGBA"),
      "palette.png": rgb.convert("P"),
      "cmyk.jpg": rgb.convert("CMYK"),
      "one_pixel.png": Image.fromarray(_RGB[:1, :1]),
      "sixteen_bit.png": Image.fromarray(
          (_RGB[..., 0].astype(np.uint16) * 257)),
  }
  for name, image in kinds.items():
    image.save(folder / name, quality=95) if name.endswith(".jpg") else (
        image.save(folder / name))
  return kinds


def _write_unusable(folder):
  whole = (folder / "rgb.jpg").read_bytes()
  (folder / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
  png = (folder / "rgba.png").read_bytes()
  (folder / "truncated.png").write_bytes(png[:len(png) // 2])
  (folder / "not_an_image.jpg").write_bytes(b"plain text, not a JPEG")
  (folder / "bomb.png").write_bytes(_bomb_png(_BOMB_SIDE))
  return {"truncated.jpg": "truncated", "truncated.png": "truncated",
          "not_an_image.jpg": "not a JPEG, PNG, GIF or BMP image",
          "bomb.png": "more pixels than max_image_pixels"}


def test_every_mode_decodes_to_pillows_rgb(tmp_path):
  kinds = _write_kinds(tmp_path)
  for name, image in kinds.items():
    encoded = tf.io.read_file(str(tmp_path / name))
    height, width, problem = encoded_image.inspect(encoded, 89478485)
    assert int(problem) == encoded_image.OK, name
    decoded = encoded_image.decode_rgb(encoded).numpy()
    assert decoded.shape == (image.height, image.width, 3), name
    assert (int(height), int(width)) == decoded.shape[:2], name
    if name == "sixteen_bit.png":
      # 16-bit samples scale to 8 bits; Pillow's convert would clip them.
      expected = np.repeat(_RGB[..., :1], 3, axis=-1)
    else:
      expected = np.asarray(Image.open(tmp_path / name).convert("RGB"))
    error = np.abs(decoded.astype(int) - expected.astype(int))
    # JPEG decoders may differ by a level or two (CMYK too).
    assert error.mean() < (2.0 if name.endswith(".jpg") else 1e-9), name


def test_unusable_files_are_found_from_their_headers(tmp_path):
  _write_kinds(tmp_path)
  expected = _write_unusable(tmp_path)
  for name, reason in expected.items():
    encoded = tf.io.read_file(str(tmp_path / name))
    _, _, problem = encoded_image.inspect(encoded, 89478485)
    assert encoded_image.PROBLEMS[int(problem)] == reason, name
  # The bomb's claimed size is read, not decoded.
  height, width, _ = encoded_image.inspect(
      tf.io.read_file(str(tmp_path / "bomb.png")), 89478485)
  assert (int(height), int(width)) == (_BOMB_SIDE, _BOMB_SIDE)
  assert (tmp_path / "bomb.png").stat().st_size < 1000


def test_a_folder_of_every_kind_trains_and_names_the_unusable(tmp_path):
  train = tmp_path / "images" / "train"
  for class_name in ("a", "b"):
    _write_kinds(train / class_name)
  expected = _write_unusable(train / "a")
  result = run_program(tiny_flags(
      str(tmp_path / "images"), str(tmp_path / "run"),
      dataset="image_folder", train_split="train", eval_split="train",
      train_steps=2, train_batch_size=4, eval_batch_size=4,
      lineareval_while_pretraining="false", mode="train"))
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  lines = [line for line in output.splitlines()
           if f"skipped {len(expected)} unreadable image file(s)" in line]
  assert lines, output[-3000:]
  for name, reason in expected.items():
    assert f"{name} ({reason})" in lines[0]
  assert "Traceback" not in output
