"""Encoded image bytes: header checks and decoding to RGB, as graph ops.

Image files are checked from their first and last bytes before they are
decoded, so that a file that cannot or should not be decoded is skipped and
named instead of failing the pipeline or exhausting memory:

- the format is JPEG, PNG, GIF or BMP (by signature, not file name);
- the size in the header is positive and at most `max_pixels` (a small file
  that claims 30,000 x 30,000 pixels is a decompression bomb);
- a JPEG ends with its end-of-image marker and a PNG with its IEND chunk
  (a truncated file fails to decode).

Every decodable image becomes uint8 RGB (grayscale is replicated, alpha
dropped, palettes expanded, 16-bit samples scaled, CMYK converted), as
TensorFlow's decoders do with `channels=3`.
"""

from typing import Tuple

import tensorflow as tf

# Problem codes of `inspect`; 0 means the file looks decodable.
OK = 0
NOT_AN_IMAGE = 1
TRUNCATED = 2
TOO_LARGE = 3
NO_PIXELS = 4
PROBLEMS = {NOT_AN_IMAGE: "not a JPEG, PNG, GIF or BMP image",
            TRUNCATED: "truncated",
            TOO_LARGE: "more pixels than max_image_pixels",
            NO_PIXELS: "no pixels"}
_HEAD = 32
# A JPEG's end-of-image marker may be followed by a little padding.
_TAIL = 32


def _bytes_at(encoded: tf.Tensor, start, length: int) -> tf.Tensor:
  """`length` bytes from `start` as int32, zero-padded past the end."""
  piece = tf.strings.substr(encoded, start, length)
  padded = tf.strings.join([piece, tf.constant(b"\0" * length)])
  return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, length),
                                  tf.uint8), tf.int32)


def _big_endian(b: tf.Tensor) -> tf.Tensor:
  return (b[0] * 16777216 + b[1] * 65536 + b[2] * 256 + b[3])


def _starts_with(head: tf.Tensor, signature: bytes) -> tf.Tensor:
  return tf.reduce_all(tf.equal(head[:len(signature)],
                                tf.constant(list(signature), tf.int32)))


def inspect(encoded: tf.Tensor, max_pixels: int) -> Tuple[tf.Tensor, ...]:
  """Reads an encoded image's size and checks it without decoding it.

  Args:
    encoded: scalar string tensor, the file's bytes.
    max_pixels: largest height * width accepted.

  Returns:
    (height, width, problem): int32 scalars; height and width are 0 when
    unknown, problem is OK or a key of PROBLEMS.
  """
  head = _bytes_at(encoded, 0, _HEAD)
  length = tf.strings.length(encoded)
  tail = _bytes_at(encoded, tf.maximum(length - _TAIL, 0), _TAIL)
  is_jpeg = _starts_with(head, b"\xff\xd8\xff")
  is_png = _starts_with(head, b"\x89PNG\r\n\x1a\n")
  is_gif = _starts_with(head, b"GIF8")
  is_bmp = _starts_with(head, b"BM")
  zero = tf.constant(0, tf.int32)

  jpeg_h, jpeg_w = tf.cond(is_jpeg, lambda: _jpeg_shape(encoded),
                           lambda: (zero, zero))
  png_w, png_h = _big_endian(head[16:20]), _big_endian(head[20:24])
  gif_w = head[6] + 256 * head[7]
  gif_h = head[8] + 256 * head[9]
  bmp_w = tf.abs(tf.bitcast(tf.cast(head[18:22], tf.uint8), tf.int32))
  bmp_h = tf.abs(tf.bitcast(tf.cast(head[22:26], tf.uint8), tf.int32))
  height = tf.case([(is_jpeg, lambda: jpeg_h), (is_png, lambda: png_h),
                    (is_gif, lambda: gif_h), (is_bmp, lambda: bmp_h)],
                   default=lambda: zero)
  width = tf.case([(is_jpeg, lambda: jpeg_w), (is_png, lambda: png_w),
                   (is_gif, lambda: gif_w), (is_bmp, lambda: bmp_w)],
                  default=lambda: zero)
  # JPEG: an FF D9 pair near the end. PNG: the last chunk is IEND.
  eoi = tf.reduce_any(tf.equal(tail[:-1], 0xFF) & tf.equal(tail[1:], 0xD9))
  iend = tf.reduce_all(tf.equal(tail[_TAIL - 8:_TAIL - 4],
                                tf.constant(list(b"IEND"), tf.int32)))
  complete = tf.where(is_jpeg, eoi, tf.where(is_png, iend, True))
  pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
  known = is_jpeg | is_png | is_gif | is_bmp
  problem = tf.case(
      [(tf.logical_not(known), lambda: tf.constant(NOT_AN_IMAGE)),
       (tf.logical_not(complete), lambda: tf.constant(TRUNCATED)),
       ((height <= 0) | (width <= 0), lambda: tf.constant(NO_PIXELS)),
       (pixels > max_pixels, lambda: tf.constant(TOO_LARGE))],
      default=lambda: tf.constant(OK), exclusive=False)
  return height, width, problem


# Start-of-frame markers (baseline, progressive, lossless, arithmetic), which
# hold the image size; C4, C8 and CC are other segments.
_JPEG_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
             0xCE, 0xCF)


def _jpeg_shape(encoded: tf.Tensor):
  """(height, width) from a JPEG's frame header; (0, 0) if none is found.

  Walks the marker segments by their lengths, as a decoder does, so a
  thumbnail inside an EXIF segment is skipped and a damaged header gives
  (0, 0) instead of an error (`tf.image.extract_jpeg_shape` raises, which
  would stop the pipeline).
  """
  data = tf.cast(tf.io.decode_raw(tf.strings.join([encoded, b"\0" * 10]),
                                  tf.uint8), tf.int32)
  end = tf.size(data) - 10
  sof = tf.constant(_JPEG_SOF, tf.int32)

  def cond(pos, height, width, done):
    return tf.logical_not(done) & (pos < end)

  def body(pos, height, width, done):
    marker_ok = tf.equal(data[pos], 0xFF)
    marker = data[pos + 1]
    # Fill bytes (FF FF ...) before a marker.
    fill = marker_ok & tf.equal(marker, 0xFF)
    is_sof = marker_ok & tf.reduce_any(tf.equal(marker, sof))
    length = data[pos + 2] * 256 + data[pos + 3]
    height = tf.where(is_sof, data[pos + 5] * 256 + data[pos + 6], height)
    width = tf.where(is_sof, data[pos + 7] * 256 + data[pos + 8], width)
    stop = is_sof | tf.logical_not(marker_ok) | (
        tf.logical_not(fill) & (length < 2))
    step = tf.where(fill, 1, 2 + length)
    return pos + step, height, width, stop

  zero = tf.constant(0, tf.int32)
  _, height, width, _ = tf.while_loop(
      cond, body, (tf.constant(2, tf.int32), zero, zero, tf.constant(False)))
  return height, width


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes jpeg/png/bmp/gif bytes to uint8 (H, W, 3); gifs' first frame.

  Args:
    encoded: scalar string tensor.

  Returns:
    uint8 (H, W, 3) tensor.
  """
  image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                             expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def decode_rgb_window(encoded: tf.Tensor, box) -> tf.Tensor:
  """Decodes only the window `box` of an image; JPEGs decode just that part.

  Args:
    encoded: scalar string tensor.
    box: (offset_y, offset_x, height, width) int32 scalars inside the image.

  Returns:
    uint8 (height, width, 3).
  """
  offset_y, offset_x, height, width = box

  def jpeg():
    return tf.image.decode_and_crop_jpeg(
        encoded, tf.stack([offset_y, offset_x, height, width]), channels=3)

  def other():
    return tf.image.crop_to_bounding_box(decode_rgb(encoded), offset_y,
                                         offset_x, height, width)

  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  image.set_shape([None, None, 3])
  return image
