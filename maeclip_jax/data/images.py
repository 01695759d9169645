"""Image decoding and random-resized-crop inside tf.data, deterministic per example.

Every random draw is a stateless op seeded by (seed, example index), so an example's crop does
not depend on thread scheduling, and a resumed stream repeats it exactly. The horizontal flip
is decided on the host from the same index (pipeline.flip_bits) and applied on the device.
"""
from typing import Sequence

import tensorflow as tf


def _crop_window(shape: tf.Tensor, seed: tf.Tensor, scale: Sequence[float],
                 ratio: Sequence[float]) -> tf.Tensor:
    """A random-resized-crop window `[y, x, h, w]` (int32) inside an image of `shape` [H, W, C]."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=tuple(ratio), area_range=tuple(scale),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_crop_resize(encoded: tf.Tensor, image_size: int, seed: tf.Tensor,
                       scale: Sequence[float] = (0.2, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """Encoded image bytes -> uint8 `[image_size, image_size, 3]`: random-resized-crop (area
    fraction in `scale`, aspect ratio in `ratio`), bilinear resize.

    JPEGs are decoded only inside the crop window (decode_and_crop_jpeg); other formats (PNG,
    ...) are decoded whole, then cropped. Raises InvalidArgumentError on undecodable bytes (the
    pipeline drops and counts such examples).
    seed: int64 `[2]`, `[s, n]` with n >= 0 (the pipeline's: its seed and the example index).
    """
    def jpeg():
        window = _crop_window(tf.image.extract_jpeg_shape(encoded), seed, scale, ratio)
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        y, x, h, w = tf.unstack(_crop_window(tf.shape(img), seed, scale, ratio))
        return img[y:y + h, x:x + w]

    img = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    img = tf.image.resize(img, [image_size, image_size], method="bilinear", antialias=False)
    # Bilinear weights are convex, so values stay in [0, 255]: +0.5 then truncation rounds, with
    # no clip (round + clip were three more passes over the pixels: ~8% of the throughput).
    img = tf.cast(img + 0.5, tf.uint8)
    img.set_shape([image_size, image_size, 3])
    return img
