"""Tiny models and images for the fleet tests: a serving model, a candidate that behaves the same (other
bytes, same answers: agreement 1), one that answers differently (agreement ~0) and an int8 one (another
input type, so the shadow converts its input) and one with a bigger input (it cannot shadow the others).

Built from runner_models' hand-set colour classifier, once per test session (a few seconds of TFLite
conversion; no training): tests/conftest.py registers these fixtures, so test modules must not import them
(an import would give each module its own session fixture, built again).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import runner_models  # noqa: E402


def _variant(root: Path, name: str, scale: float = 1.0, roll: int = 0, quantize: str | None = None,
             size: int = runner_models.SIZE) -> Path:
    if scale == 1.0 and roll == 0:  # the plain colour model: the conversion other modules share
        return runner_models.write_variant(root / name, runner_models.colour_tflite(quantize, size), size=size)
    model = runner_models.build_keras_model(size)
    dense = model.layers[-1]
    weights, bias = dense.get_weights()
    dense.set_weights([np.roll(weights * scale, roll, axis=1), bias])
    return runner_models.write_variant(root / name, runner_models.convert(model, quantize), size=size)


@pytest.fixture(scope="session", name="fleet_models")
def models_fixture(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fleet-models")
    return {"base": _variant(root, "base"), "same": _variant(root, "same", scale=1.001),
            "other": _variant(root, "other", roll=1), "int8": _variant(root, "int8", quantize="int8"),
            "bigger": _variant(root, "bigger", size=48)}


@pytest.fixture(scope="session", name="fleet_images")
def images_fixture(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fleet-images")
    pixels, labels = runner_models.color_images(12, seed=3)
    for n, (image, label) in enumerate(zip(pixels, labels)):
        Image.fromarray(image).save(directory / f"{runner_models.LABELS[label]}_{n}.png")
    return directory
