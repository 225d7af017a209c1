"""Pixel semantics shared by training and the device runner: JPEG DCT scaling, EXIF orientation, 16 bits.

Each test builds a small class-folder dataset, loads it through edgekit.data's tf.data pipeline (what
train and eval see) and through the runner's preprocessing (what the device sees), and requires the
same float pixels, so a speed-up on one side cannot silently change what the model was trained on.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import DataSpec, load_dataset, load_pixels

RUNNER = Path(__file__).resolve().parents[1] / "edgekit" / "resources" / "devices" / "edgekit_runner.py"


def camera_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3))
    smooth = np.kron(blocks, np.ones((16, 16, 1)))[:height, :width]
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit greyscale (2-D input) or RGB PNG, written by hand: Pillow cannot write 16-bit RGB."""
    height, width = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def training_pixels(tmp_path: Path, files: dict[str, bytes], size: int) -> dict[str, np.ndarray]:
    """Every file through edgekit.data's pipeline (two copies, one per class, as a dataset needs)."""
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for name, data in files.items():
            (root / cls / name).write_bytes(data)
    splits = load_dataset(DataSpec(data=str(root), image_size=size, validation_fraction=0.5))
    every = splits.train.concat(splits.validation)
    return {Path(path).name: image for path, image in zip(every.paths, load_pixels(every, size))}


def device_pixels(runner, data: bytes, size: int) -> np.ndarray:
    decoded, _ = runner.decode_image(data, 40 * 10**6, (size, size))
    return runner.resize_bilinear(decoded, size, size)


@pytest.mark.parametrize("size", [224, 96, 32])
def test_dct_scaled_jpeg_decode_is_identical_in_training_and_on_the_device(runner, tmp_path, size):
    files = {}
    shapes = [(640, 480, 2, False), (641, 479, 0, False), (1001, 333, 1, False), (500, 700, 2, True)]
    for n, (width, height, subsampling, progressive) in enumerate(shapes):
        buffer = io.BytesIO()
        Image.fromarray(camera_like(width, height, n)).save(buffer, format="JPEG", quality=85,
                                                            subsampling=subsampling, progressive=progressive)
        files[f"{n}.jpg"] = buffer.getvalue()
    ours = training_pixels(tmp_path, files, size)
    for name, data in files.items():
        np.testing.assert_allclose(device_pixels(runner, data, size), ours[name], atol=1e-3, err_msg=name)
    decoded, _ = runner.decode_image(files["0.jpg"], 40 * 10**6, (size, size))
    expected_scale = {224: 2, 96: 4, 32: 8}[size]
    assert decoded.shape == (480 // expected_scale, 640 // expected_scale, 3)


def test_exif_orientation_is_applied_the_same_way_everywhere(runner, tmp_path):
    upright = camera_like(64, 48, seed=3)
    upright[:8, :8] = (255, 0, 0)  # a red top-left corner shows which way up it is
    files = {}
    for orientation, method in ((6, Image.Transpose.ROTATE_90), (3, Image.Transpose.ROTATE_180),
                                (8, Image.Transpose.ROTATE_270), (2, Image.Transpose.FLIP_LEFT_RIGHT)):
        # stored as a camera would store it: pixels turned, the tag saying how to turn them back
        stored = np.asarray(Image.fromarray(upright).transpose(method))
        files[f"o{orientation}.jpg"] = jpeg_with_orientation(stored, orientation)
    ours = training_pixels(tmp_path, files, 32)
    for name, data in files.items():
        decoded, _ = runner.decode_image(data, 10**6)
        assert decoded.shape == (48, 64, 3), name
        assert decoded[:6, :6, 0].min() > 200 and decoded[:6, :6, 1:].max() < 60, name  # red is top-left again
        np.testing.assert_allclose(device_pixels(runner, data, 32), ours[name], atol=1e-3, err_msg=name)


def test_16_bit_pngs_are_scaled_not_clipped(runner, tmp_path):
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 65536, size=(20, 30)).astype(np.uint16)
    rgb = rng.integers(0, 65536, size=(20, 30, 3)).astype(np.uint16)
    files = {"grey16.png": png16(grey), "rgb16.png": png16(rgb)}
    decoded_grey, _ = runner.decode_image(files["grey16.png"], 10**6)
    decoded_rgb, _ = runner.decode_image(files["rgb16.png"], 10**6)
    np.testing.assert_array_equal(decoded_grey, np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2))
    np.testing.assert_array_equal(decoded_rgb, (rgb >> 8).astype(np.uint8))
    assert 100 < decoded_grey.mean() < 155  # all-white (255) was the bug
    ours = training_pixels(tmp_path, files, 24)
    for name, data in files.items():
        np.testing.assert_allclose(device_pixels(runner, data, 24), ours[name], atol=1e-3, err_msg=name)


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def test_simplejpeg_fast_path_gives_pillows_pixels(runner, monkeypatch):
    """The optional simplejpeg decode must be a pure speed-up: every JPEG kind, every DCT scale, the same
    pixels as Pillow's draft decode; what it cannot decode exactly (CMYK, corrupt data) goes to Pillow."""
    pytest.importorskip("simplejpeg")
    colour = camera_like(641, 479, seed=7)
    files = {f"sub{s}{'-prog' if p else ''}": _jpeg(colour, subsampling=s, progressive=p)
             for s in (0, 1, 2) for p in (False, True)}
    files["grey"] = _jpeg(colour[..., 0])
    files["exif6"] = jpeg_with_orientation(colour, 6)
    files["cmyk"] = _jpeg_cmyk(colour)
    header = files["sub2"].index(b"\xff\xda")  # junk before the scan: libjpeg-turbo warns "Corrupt JPEG data"
    files["junk"] = files["sub2"][:header] + b"\x00\x01\x02" + files["sub2"][header:]
    real, used = runner.fast_jpeg, []

    def spy(*args):
        pixels = real(*args)
        used.append(pixels is not None)
        return pixels

    monkeypatch.setattr(runner, "fast_jpeg", spy)
    for size in (480, 224, 96, 32):  # DCT scales 1, 2, 4, 8
        for name, data in files.items():
            used.clear()
            fast, _ = runner.decode_image(data, 40 * 10**6, (size, size))
            with monkeypatch.context() as without:
                without.setattr(runner, "simplejpeg_module", lambda: None)
                slow, _ = runner.decode_image(data, 40 * 10**6, (size, size))
            np.testing.assert_array_equal(fast, slow, err_msg=f"{name} at {size} px")
            assert used == [name not in ("cmyk", "junk"), False], (name, size)


def _jpeg_cmyk(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
