"""Training-time augmentation as one fused geometric transform per batch, applied inside tf.data.

Flip, rotation, zoom and translation are composed into a single projective matrix per image and applied
with one resampling pass: the separate Keras preprocessing layers resample every image once per
transform, which made augmentation ~90% of the input pipeline's cost. Augmentation stays out of the
model so the exported graph is the plain classifier.
"""

from __future__ import annotations

import math

from edgekit.config import AugmentConfig


def _uniform(tf, batch, limit: float, seed: int):
    return tf.random.uniform([batch], -limit, limit, seed=seed) if limit > 0 else tf.zeros([batch])


def transform_matrices(tf, batch, height: float, width: float, augment: AugmentConfig, seed: int):
    """Per-image [a0 a1 a2 b0 b1 b2 c0 c1] mapping output pixels to input pixels (ImageProjectiveTransform).

    input = centre + R(angle) · S(scale) · F(flip) · (output − centre) − shift
    """
    angle = _uniform(tf, batch, augment.rotation * 2 * math.pi, seed)
    scale = 1.0 + _uniform(tf, batch, augment.zoom, seed + 1)
    shift_x = _uniform(tf, batch, augment.translation, seed + 2) * width
    shift_y = _uniform(tf, batch, augment.translation, seed + 3) * height
    if augment.flip:
        mirror = tf.where(tf.random.uniform([batch], seed=seed + 4) < 0.5, -1.0, 1.0)
    else:
        mirror = tf.ones([batch])
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    a0, a1 = cos * mirror, -sin
    b0, b1 = sin * mirror, cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    a2 = cx - a0 * cx - a1 * cy - shift_x
    b2 = cy - b0 * cx - b1 * cy - shift_y
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images, augment: AugmentConfig, seed: int):
    """Augment a float32 batch [B, H, W, 3] of pixels in [0, 255]; edges are extended, not blacked out."""
    from edgekit.compat import tf

    shape = tf.shape(images)
    batch, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    if augment.flip or augment.rotation > 0 or augment.zoom > 0 or augment.translation > 0:
        matrices = transform_matrices(tf, batch, height, width, augment, seed)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=matrices, output_shape=shape[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="NEAREST")
    if augment.contrast > 0:
        factor = 1.0 + _uniform(tf, batch, augment.contrast, seed + 5)
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * factor[:, None, None, None] + mean
    return tf.clip_by_value(images, 0.0, 255.0)
