"""The flat MobileNetV2 classifier and the --weights / --image-size contract."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.compat import keras
from edgekit.errors import EdgekitError
from edgekit.model import ModelSpec, body_layers, build_classifier, resolve_weights, set_body_trainable


@pytest.fixture(scope="module")
def model():
    return build_classifier(ModelSpec(num_classes=5, image_size=32, alpha=0.35))


def test_classifier_is_one_flat_graph(model):
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert model.layers[1].name == "rescale_to_unit"
    assert [layer.name for layer in model.layers[-4:]] == ["pool", "dropout", "logits", "probs"]
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 5)


def test_normalisation_lives_inside_the_model(model):
    rescale = keras.Model(model.input, model.get_layer("rescale_to_unit").output)
    out = rescale.predict(np.array([[[[0, 127.5, 255]] * 32] * 32], np.float32), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-6)


def test_from_scratch_batch_norm_momentum_is_fast(model):
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}


def test_fine_tuning_keeps_batch_norm_frozen(model):
    set_body_trainable(model, 50)
    body = body_layers(model)
    assert not any(layer.trainable for layer in body[:50])
    assert any(layer.trainable for layer in body[50:])
    assert not any(layer.trainable for layer in body if isinstance(layer, keras.layers.BatchNormalization))
    set_body_trainable(model, None)
    assert not any(layer.trainable for layer in body)
    assert model.get_layer("logits").trainable


def test_too_small_image_size_is_refused():
    with pytest.raises(EdgekitError, match=r"--image-size 16: MobileNetV2 needs at least 32"):
        build_classifier(ModelSpec(num_classes=3, image_size=16))


def test_unknown_weights_value_is_refused():
    with pytest.raises(EdgekitError, match=r"--weights 'imagenett': unknown value"):
        resolve_weights("imagenett", 0.35, 96)


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(EdgekitError, match=r"no such file"):
        resolve_weights(str(tmp_path / "w.h5"), 0.35, 96)


def test_imagenet_without_network_or_cache_says_how_to_get_them(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(EdgekitError) as info:
        resolve_weights("imagenet", 0.35, 96)
    message = str(info.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in message
    assert "--weights none" in message and "\n" not in message
    printed = capfd.readouterr()
    assert "Downloading data from" not in printed.out + printed.err  # Keras's announcement is not ours to print


def test_imagenet_weights_from_the_keras_cache_are_used(tmp_path, monkeypatch):
    """A no-top weights file placed in the Keras cache is picked up without any download."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    body = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=None, alpha=0.35)
    cached = tmp_path / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    cached.parent.mkdir(parents=True)
    body.save_weights(str(cached))
    path = resolve_weights("imagenet", 0.35, 96)
    assert path == str(cached)
    model = build_classifier(ModelSpec(num_classes=3, image_size=96), weights=path)
    np.testing.assert_allclose(model.get_layer("Conv1").get_weights()[0], body.get_layer("Conv1").get_weights()[0])


def test_imagenet_alpha_must_exist():
    with pytest.raises(EdgekitError, match=r"--alpha 0.6: imagenet weights exist only"):
        resolve_weights("imagenet", 0.6, 96)
