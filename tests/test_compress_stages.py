"""The compression stages as a library: prune, cluster, QAT (plain and collaborative) and conversion.

One tiny trained classifier is shared by the whole module, and each fine-tune runs one or two eager
steps: the graph trace of a wrapped MobileNetV2 alone costs 30-60 s on two cores.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny import tiny_datasets, tiny_images, trained_tiny_classifier

from edgekit.compat import keras, tf
from edgekit.compress import cluster, prune, qat
from edgekit.compress.convert import convert
from edgekit.compress.finetune import count_steps, fine_tune, kernel_arrays
from edgekit.compress.params import ClusterParams, ConvertParams, PruneParams, QATParams
from edgekit.config import validate
from edgekit.errors import EdgekitError
from edgekit.tflite import parse

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def trained():
    return trained_tiny_classifier(num_classes=3, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def data():
    return tiny_datasets(num_classes=3, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def calibration():
    return tiny_images(100, seed=7)[0]


@pytest.fixture(scope="module")
def eval_batch():
    return tiny_images(64, seed=11)


def _steps(model, callbacks, data, steps: int, learning_rate: float = 1e-4):
    fine_tune(model, data[0], None, 1, learning_rate, callbacks, steps_per_epoch=steps, run_eagerly=True)


@pytest.fixture(scope="module")
def pruned(trained, data):
    """Pruned to 50% in one training step (polynomial schedule over a 1-step run), then stripped."""
    params = PruneParams(target_sparsity=0.5, epochs=1)
    wrapped, callbacks = prune.apply(trained, params, steps_per_epoch=1)
    _steps(wrapped, callbacks, data, 1)
    return wrapped, prune.finalize(wrapped)


@pytest.fixture(scope="module")
def converted(trained, calibration):
    """float32, float16, dynamic and int8 (int8 I/O) conversions of the trained model, once each."""
    modes = {"float32": "float32", "float16": "float32", "dynamic": "float32", "int8": "int8"}
    return {mode: convert(trained, ConvertParams(mode=mode, io_dtype=io), calibration)
            for mode, io in modes.items()}


def run_tflite(content: bytes, images: np.ndarray) -> np.ndarray:
    """Float outputs of a .tflite model for float pixels, (de)quantizing integer input and output."""
    from edgekit.runner import module as runner

    interpreter = runner.get_runtime(runner.choose_runtime(None)).interpreter(model_content=content)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], list(images.shape))
    interpreter.allocate_tensors()
    x = images
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(images / scale + zero), info.min, info.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def is_2_of_4(kernel: np.ndarray) -> bool:
    """At least 2 zeros in every 4 consecutive input-channel weights (TFLite layout: input channels last)."""
    rows = kernel.T.reshape(kernel.shape[-1], -1) if kernel.ndim == 2 else \
        np.transpose(kernel, (3, 0, 1, 2)).reshape(-1, kernel.shape[2])
    pad = (-rows.shape[1]) % 4
    groups = np.pad(rows, ((0, 0), (0, pad))).reshape(rows.shape[0], -1, 4)
    return bool(np.all(np.sum(groups == 0, axis=-1) >= 2))


# --- pruning -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prune_reaches_target_sparsity_and_strip_removes_wrappers(trained, pruned):
    wrapped, final = pruned
    assert any(type(layer).__name__ == "PruneLowMagnitude" for layer in wrapped.layers)
    assert not any(type(layer).__name__ == "PruneLowMagnitude" for layer in final.layers)
    assert [layer.name for layer in final.layers] == [layer.name for layer in trained.layers]
    sparsity = prune.measure_sparsity(final)
    assert sparsity["overall"] == pytest.approx(0.5, abs=0.05)
    kernels = {name: value for name, value in sparsity.items() if name != "overall"}
    assert "Conv1/kernel" in kernels and "logits/kernel" in kernels
    assert all(0.45 <= value <= 0.55 for value in kernels.values()), kernels


@pytest.mark.slow
def test_prune_leaves_the_callers_model_dense(trained, pruned):
    assert prune.measure_sparsity(trained)["overall"] < 0.01


@pytest.mark.slow
def test_prune_zero_sparsity_is_noop(trained, data):
    params = PruneParams(target_sparsity=0.0, epochs=1)
    wrapped, callbacks = prune.apply(trained, params, steps_per_epoch=1)
    _steps(wrapped, callbacks, data, 1, learning_rate=1e-9)  # the masks update; the weights barely move
    final = prune.finalize(wrapped)
    assert prune.measure_sparsity(final)["overall"] < 0.001
    before, after = kernel_arrays(trained), kernel_arrays(final)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_prune_structured_2x4_pattern(trained, data):
    params = PruneParams(structured_2x4=True, epochs=1)
    wrapped, callbacks = prune.apply(trained, params, steps_per_epoch=1)
    _steps(wrapped, callbacks, data, 1)
    final = prune.finalize(wrapped)
    for name in ("Conv1", "block_3_expand", "logits"):
        kernel = final.get_layer(name).kernel.numpy()
        assert is_2_of_4(kernel), name
        assert not is_2_of_4(trained.get_layer(name).kernel.numpy()), name  # the check can fail
    assert prune.measure_sparsity(final)["overall"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_prune_latency_policy_prunes_only_pointwise_convs(trained, data):
    with pytest.warns(UserWarning, match="XNNPACK"):  # our stem is SAME-padded, tfmot wants VALID
        wrapped, callbacks = prune.apply(
            trained, PruneParams(latency_policy=True, epochs=1), steps_per_epoch=1
        )
    _steps(wrapped, callbacks, data, 1)
    sparsity = prune.measure_sparsity(prune.finalize(wrapped))
    assert sparsity["block_1_expand/kernel"] == pytest.approx(0.5, abs=0.05)
    assert sparsity["Conv1/kernel"] < 0.01 and sparsity["logits/kernel"] < 0.01


def test_prune_schedule_fits_short_runs():
    schedule = prune._schedule(PruneParams(epochs=2), steps_per_epoch=7)
    config = schedule.get_config()["config"]
    assert config["frequency"] == 1 and config["end_step"] == 14
    with pytest.raises(EdgekitError, match="frequency"):
        prune._schedule(PruneParams(epochs=1, frequency=100), steps_per_epoch=20)
    with pytest.raises(EdgekitError, match="end_step"):
        prune._schedule(PruneParams(), steps_per_epoch=None)


@pytest.mark.parametrize("params, field", [
    (PruneParams(target_sparsity=1.0), "target_sparsity"),
    (PruneParams(structured_2x4=True, target_sparsity=0.8), "target_sparsity"),
    (PruneParams(begin_step=10, end_step=5), "end_step"),
    (ClusterParams(clusters=1), "clusters"),
    (QATParams(learning_rate=0.0), "learning_rate"),
    (QATParams(epochs=0), "epochs"),
    (QATParams(preserve="everything"), "preserve"),
    (ConvertParams(mode="float16", io_dtype="uint8"), "io_dtype"),
])
def test_params_report_impossible_values(params, field):
    with pytest.raises(EdgekitError, match=f"^prune: field '{field}' "):
        validate(params, "field", where="prune")


def test_params_defaults_have_no_problems():
    for params in (PruneParams(), ClusterParams(), QATParams(), ConvertParams()):
        validate(params, "field")


# --- clustering ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cluster_to_8_leaves_at_most_8_values_per_kernel(trained, data):
    wrapped, callbacks = cluster.apply(trained, ClusterParams(clusters=8, epochs=1))
    _steps(wrapped, callbacks, data, 1, learning_rate=1e-4)
    final = cluster.finalize(wrapped)
    assert not any(type(layer).__name__ == "ClusterWeights" for layer in final.layers)
    counts = cluster.unique_weights(final)
    big = {name for name, value in kernel_arrays(final).items() if value.size > 8}
    assert big and all(counts[name] <= 8 for name in big), counts
    # the caller's model keeps its own kernels (tfmot deletes them from the layers it wraps)
    assert len(trained.weights) == len(final.weights)
    assert cluster.unique_weights(trained)["Conv1/kernel"] > 100


@pytest.mark.slow
def test_count_steps_reads_dataset_length(data):
    assert count_steps(data[0]) == 12
    assert count_steps(data[0].repeat()) is None


# --- QAT errors (cheap: they fail before tfmot does any work) ------------------------------------


def _small_model(extra) -> keras.Model:
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(8, 3, name="conv")(x)
    x = extra(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(x))


def test_qat_rejects_lambda_layer_by_name():
    model = _small_model(lambda x: keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(x))
    expected = r"layer 'doubler' \(Lambda\) cannot be quantization-aware trained; remove it, or use post-tr"
    with pytest.raises(EdgekitError, match=expected):
        qat.apply(model, QATParams())


def test_qat_rejects_raw_tf_op_by_name():
    model = _small_model(lambda x: tf.math.square(x))
    with pytest.raises(EdgekitError, match=r"layer 'tf.math.square' \(TFOpLambda\)"):
        qat.apply(model, QATParams())


@pytest.mark.slow
def test_qat_names_an_unsupported_layer():
    model = _small_model(lambda x: keras.layers.LayerNormalization(name="norm")(x))
    with pytest.raises(EdgekitError, match=r"layer 'norm' \(LayerNormalization\) cannot be quantization"):
        qat.apply(model, QATParams())


@pytest.mark.parametrize("stage, params", [
    (qat, QATParams()), (prune, PruneParams()), (cluster, ClusterParams()),
])
def test_nested_model_is_rejected_with_its_name(stage, params):
    body = keras.Sequential([keras.layers.Conv2D(4, 1, name="inner")], name="backbone")
    model = _small_model(lambda x: body(x))
    with pytest.raises(EdgekitError, match=r"layer 'backbone' is a nested Keras model.*build the classifier"):
        stage.apply(model, params)


@pytest.mark.parametrize("previous, preserve", [
    (None, "none"), ("prune", "sparsity"), ("cluster", "clusters"),
    (["prune", "cluster"], "sparsity+clusters"), (["cluster", "prune"], "sparsity"),
])
def test_qat_auto_preserve_follows_previous_stage(previous, preserve):
    assert qat.resolve_preserve("auto", previous) == preserve
    assert qat.resolve_preserve("none", previous) == "none"


# --- conversion ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_float32_tflite_matches_keras(trained, converted, eval_batch):
    info = parse(converted["float32"]).describe()
    assert info["inputs"][0] == {"name": "image", "dtype": "float32", "shape": [1, IMAGE_SIZE, IMAGE_SIZE, 3],
                                 "quantization": None}
    assert info["ops"]["CONV_2D"] == 35 and info["ops"]["DEPTHWISE_CONV_2D"] == 17
    assert info["tensor_count"] > 100
    images = eval_batch[0][:16]
    np.testing.assert_allclose(run_tflite(converted["float32"], images), trained.predict(images, verbose=0),
                               atol=1e-4)


@pytest.mark.slow
def test_float16_is_about_half_and_dynamic_smaller(converted):
    f32, f16, dyn = (len(converted[mode]) for mode in ("float32", "float16", "dynamic"))
    assert 0.45 < f16 / f32 < 0.6
    assert dyn < 0.4 * f32
    assert "DEQUANTIZE" in parse(converted["float16"]).describe()["ops"]


@pytest.mark.slow
def test_int8_has_integer_io_and_agrees_with_keras(trained, converted, eval_batch):
    info = parse(converted["int8"]).describe()
    for tensor in info["inputs"] + info["outputs"]:
        assert tensor["dtype"] == "int8"
        assert tensor["quantization"]["scale"] > 0
    assert info["inputs"][0]["quantization"]["scale"] == pytest.approx(1.0, rel=0.05)  # raw pixels
    images, _ = eval_batch
    keras_top = trained.predict(images, verbose=0).argmax(1)
    tflite_top = run_tflite(converted["int8"], images).argmax(1)
    assert np.mean(keras_top == tflite_top) >= 0.9
    assert len(set(keras_top)) > 1  # a model that always answers the same class would agree trivially


@pytest.mark.slow
def test_uint8_io_for_integer_only_targets(trained, calibration):
    params = ConvertParams(mode="int8", io_dtype="uint8", calibration_samples=10)
    content = convert(trained, params, calibration)
    info = parse(content).describe()
    assert info["inputs"][0]["dtype"] == "uint8" and info["outputs"][0]["dtype"] == "uint8"
    assert info["inputs"][0]["quantization"]["zero_point"] == 0


@pytest.mark.slow
def test_int8_without_calibration_images_is_an_error(trained):
    with pytest.raises(EdgekitError, match="int8 needs calibration images"):
        convert(trained, ConvertParams(mode="int8"), None)


@pytest.mark.slow
def test_calibration_images_must_be_raw_pixels_at_model_size(trained, calibration):
    with pytest.raises(EdgekitError, match="normalised"):
        convert(trained, ConvertParams(mode="int8"), calibration / 255.0)
    with pytest.raises(EdgekitError, match="shape"):
        convert(trained, ConvertParams(mode="int8"), calibration[:, :16, :16])


def test_describe_rejects_non_tflite_bytes():
    with pytest.raises(EdgekitError, match="TFL3"):
        parse(b"not a model at all").describe()


# --- QAT (slow: quantize_apply alone takes 15-40 s for MobileNetV2 on two cores) -----------------


@pytest.mark.slow
def test_qat_converts_to_uint8_without_calibration_and_agrees(trained, data, eval_batch):
    model, callbacks = qat.apply(trained, QATParams(epochs=1))
    assert qat.is_qat_model(model) and not qat.is_qat_model(trained)
    _steps(model, callbacks, data, 2, learning_rate=1e-5)
    content = convert(qat.finalize(model), ConvertParams(mode="int8", io_dtype="uint8"), None)
    info = parse(content).describe()
    assert info["inputs"][0]["dtype"] == "uint8"
    assert info["inputs"][0]["quantization"] == {"scale": 1.0, "zero_point": 0}  # pinned 0..255 input range
    assert "DEQUANTIZE" not in info["ops"]  # the split Rescaling quantizes; nothing falls back to float
    images, _ = eval_batch
    agreement = np.mean(model.predict(images, verbose=0).argmax(1) == run_tflite(content, images).argmax(1))
    assert agreement >= 0.9
    with pytest.raises(EdgekitError, match="converts only to int8"):
        convert(model, ConvertParams(mode="float16"))


@pytest.mark.slow
def test_pqat_keeps_sparsity_through_fine_tuning_and_conversion(pruned, data):
    _, final = pruned
    model, callbacks = qat.apply(final, QATParams(epochs=1), previous="prune")
    _steps(model, callbacks, data, 2, learning_rate=1e-4)
    assert prune.measure_sparsity(model)["overall"] == pytest.approx(0.5, abs=0.05)
    weights = parse(convert(model, ConvertParams(mode="int8"))).constants()
    pruned_layers = [name.split("/")[0] for name in prune.measure_sparsity(final) if name != "overall"]
    for layer in pruned_layers:
        kernel = next(v for name, v in weights.items() if f"quant_{layer}/" in name and v.dtype == np.int8)
        assert np.mean(kernel == 0) >= 0.45, layer
