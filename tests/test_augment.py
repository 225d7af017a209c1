"""The fused augmentation transform: identity when off, exact flips, bounded geometry."""

from __future__ import annotations

import numpy as np

from edgekit.augment import augment_batch
from edgekit.compat import tf
from edgekit.config import AugmentConfig

OFF = AugmentConfig(enabled=True, flip=False, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0)


def _batch(n=16, size=24, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype(np.float32)


def test_all_transforms_off_is_the_identity():
    x = _batch()
    np.testing.assert_allclose(augment_batch(tf.constant(x), OFF, seed=1).numpy(), x, atol=1e-4)


def test_flip_only_gives_each_image_or_its_mirror():
    x = _batch(n=32)
    out = augment_batch(tf.constant(x), AugmentConfig(flip=True, rotation=0, zoom=0, translation=0, contrast=0),
                        seed=2).numpy()
    same = [np.allclose(o, i, atol=1e-3) for o, i in zip(out, x)]
    mirrored = [np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 4 < sum(mirrored) < 28  # about half


def test_translation_moves_content_by_at_most_the_range():
    x = np.zeros((8, 40, 40, 3), np.float32)
    x[:, 18:22, 18:22] = 255.0  # a bright square in the centre
    config = AugmentConfig(flip=False, rotation=0, zoom=0, translation=0.1, contrast=0)
    out = augment_batch(tf.constant(x), config, seed=3).numpy()
    for image in out:
        ys, xs = np.nonzero(image[..., 0] > 127)
        assert abs(ys.mean() - 19.5) <= 4.5 and abs(xs.mean() - 19.5) <= 4.5
    assert not np.allclose(out, x)


def test_values_stay_in_pixel_range_with_everything_on():
    out = augment_batch(tf.constant(_batch()), AugmentConfig(flip=True, rotation=0.2, zoom=0.3, translation=0.2,
                                                             contrast=0.5), seed=4).numpy()
    assert out.min() >= 0.0 and out.max() <= 255.0 and out.shape == (16, 24, 24, 3)
