"""From an image file to the pipeline's pixels: the header check, the decode and the resize.

Everything between a file's bytes and the float32 pixels the pipeline (and so the pixel cache) holds
lives here or in the device runner, whose Pillow decode this module calls for what tf.io cannot read.
The pixel cache's key hashes these files (`pixel_sources`, with the pipeline's own), so a change to any
of them invalidates cached pixels: keep any new decoding or resizing step in this module.
"""

from __future__ import annotations

import functools
import io
import re
import threading
import warnings
from pathlib import Path

import numpy as np

from edgekit.runner import module as runner_module_loaded

# what tf.io.decode_image reads natively; anything else is decoded by Pillow inside the pipeline
TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
TF_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")


def device_runner():
    """The device runner as a module: training's Pillow path runs the very decode the device runs."""
    return runner_module_loaded


def pixel_sources() -> list[Path]:
    """The source files whose code turns an image file into pixels: this module and the device runner
    (the file the decode is actually loaded from, so the bytes hashed are the bytes that run)."""
    return [Path(__file__), Path(device_runner().__file__)]


class BadImage(Exception):
    """Why one file cannot be used as an image."""


def inspect_image(source: Path | bytes, max_pixels: int) -> bool:
    """Read an image's header (a path, or the bytes already read) with Pillow; return whether tf.io decodes
    it natively. Raise BadImage otherwise.

    Only the header: the scan then decodes the file with the training decoder itself, because a full
    Pillow decode accepts files (a PNG with a bad CRC) that TensorFlow's decoder refuses mid-epoch.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImage(f"{width}x{height} is over the {max_pixels:,}-pixel limit for safe decoding")
                if width < 1 or height < 1:
                    raise BadImage("has no pixels")
                upright = image.getexif().get(0x0112, 1) in (0, 1)  # tf.io ignores EXIF orientation
                return image.format in TF_FORMATS and image.mode in TF_MODES and upright
    except Image.DecompressionBombError:
        raise BadImage(f"is over the {max_pixels:,}-pixel limit for safe decoding") from None
    except UnidentifiedImageError:
        raise BadImage("is not a recognised image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"cannot be decoded ({str(exc).splitlines()[0][:100] if str(exc) else 'corrupt'})") \
            from None


def pil_decode(raw: bytes, image_size) -> np.ndarray:
    """EXIF-rotated, 16-bit, webp... images: decoded (and JPEG-draft-scaled) as the device runner does."""
    size = int(image_size)
    pixels, _ = device_runner().decode_image(bytes(raw), 2**62, (size, size))
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def _jpeg_ratio(raw, image_size: int):
    """tf.io.decode_jpeg at the DCT scale the device picks (edgekit_runner.jpeg_draft_scale): 8, 4, 2 or 1."""
    from edgekit.compat import tf

    shape = tf.io.extract_jpeg_shape(raw)
    ratio = tf.minimum(shape[0] // image_size, shape[1] // image_size)
    branches = [(tf.greater_equal(ratio, scale), functools.partial(_decode_jpeg, raw, scale))
                for scale in (8, 4, 2)]
    return tf.case(branches, default=functools.partial(_decode_jpeg, raw, 1), exclusive=False)


def _decode_jpeg(raw, ratio: int):
    from edgekit.compat import tf

    # the accurate DCT is what Pillow (and so the device runner) uses; TF's default fast one
    # differs by a few grey levels on most pixels of a camera JPEG
    return tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE", ratio=ratio)


def decode_bytes_fn(image_size: int):
    """(file bytes, tf decodable) -> float32 [size, size, 3] pixels: the one decode of training, evaluation,
    the pixel cache and the scan's check (which so accepts exactly what the pipeline can read)."""
    from edgekit.compat import tf

    def decode(raw, tf_ok):
        def with_tf():
            return tf.cond(
                tf.io.is_jpeg(raw),
                lambda: _jpeg_ratio(raw, image_size),
                lambda: tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8),
            )

        def with_pillow():
            image = tf.numpy_function(pil_decode, [raw, image_size], tf.uint8, stateful=False)
            return tf.ensure_shape(image, [None, None, 3])

        image = tf.cond(tf_ok, with_tf, with_pillow)
        image = tf.image.resize(image, [image_size, image_size], method="bilinear")
        return tf.ensure_shape(image, [image_size, image_size, 3])

    return decode


def decode_fn(image_size: int):
    """(path, tf decodable) -> float32 [size, size, 3] pixels, as a tf.data map function."""
    from edgekit.compat import tf

    decode = decode_bytes_fn(image_size)
    return lambda path, tf_ok: decode(tf.io.read_file(path), tf_ok)


_decoder_lock = threading.Lock()


def check_image(raw: bytes, max_pixels: int, decoder: list, image_size: int = 8) -> tuple[bool, str | None, object]:
    """(tf decodable, None, pixels) for a usable image's bytes, else (False, reason, None).

    The verdict comes from the pipeline's own decode at `image_size`, so its pixels are what the pixel cache
    holds; a pure check decodes at 8 px. `decoder` holds the lazily built decoder (one per image size)."""
    try:
        tf_ok = inspect_image(raw, max_pixels)
    except BadImage as exc:
        return False, _truncated_or(str(exc), raw), None
    with _decoder_lock:
        if not decoder:
            decoder.append(_training_decoder(image_size))
    pixels, reason = decoder[0](raw, tf_ok)
    return (False, _truncated_or(reason, raw), None) if reason is not None else (tf_ok, None, pixels)


def _truncated_or(reason: str, raw: bytes) -> str:
    """A decode failure of a JPEG cut short said as such: libjpeg's own line on stderr is kept quiet."""
    return TRUNCATED if reason.startswith("cannot be decoded") and is_truncated_jpeg(raw) else reason


TRUNCATED = "is truncated: its JPEG data ends before the image does (a partial copy or download?)"


def _training_decoder(image_size: int):
    """The pipeline's own decode function, run on one file's bytes."""
    from edgekit.compat import tf

    # traced once as a graph, as tf.data runs it
    decode = tf.function(decode_bytes_fn(image_size), input_signature=[
        tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.bool)]).get_concrete_function()

    def check(raw: bytes, tf_ok: bool) -> tuple[np.ndarray | None, str | None]:
        try:
            return decode(tf.constant(raw), tf.constant(tf_ok)).numpy(), None
        except (tf.errors.OpError, ValueError) as exc:
            return None, f"cannot be decoded by the training decoder ({_op_error_line(exc)})"

    return check


def is_truncated_jpeg(raw: bytes) -> bool:
    """A JPEG without its end-of-image marker: cut short. Padding after the marker (zeros, newlines) is
    allowed, as decoders allow it."""
    return raw[:2] == b"\xff\xd8" and not raw.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def _op_error_line(exc: Exception) -> str:
    """The one informative line of a TensorFlow graph error (not its call stack or node names)."""
    text = getattr(exc, "message", "") or str(exc)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith((" ", "\t"))
             and not line.startswith(("Graph execution error", "Detected at node"))]
    return re.sub(r"\s*\[\[.*", "", lines[-1])[:120] if lines else "corrupt"
