"""A first load of a new folder reads each image file once: the scan's read yields verdict, hashes and pixels."""

from __future__ import annotations

import builtins
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import DataSpec, iter_pixel_batches, load_dataset, load_pixels, pipeline, pixelcache
from edgekit.data import hashing as hashing_module
from edgekit.data import scan as scan_module

SIZE = 20


def _folder(root: Path) -> Path:
    """Twelve images, two classes, the three decode paths (tf JPEG, tf PNG, Pillow webp) and one exact copy."""
    rng = np.random.default_rng(3)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            array = rng.integers(0, 256, (30 + i, 26, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / cls / f"{i}.{('jpg', 'png', 'webp')[i % 3]}")
    (root / "b" / "copy.png").write_bytes((root / "a" / "1.png").read_bytes())
    return root


@pytest.fixture
def reads(monkeypatch):
    """Every read of an image file: Python opens (builtins and io, as Path.read_bytes and Pillow use) and
    TensorFlow's own reads, which go through the pipeline's decode_fn (its only file-reading op)."""
    counted: Counter = Counter()
    images = (".jpg", ".png", ".webp")
    real_open, real_io_open = builtins.open, io.open

    def counting(real):
        def wrapper(file, *args, **kwargs):
            mode = args[0] if args else kwargs.get("mode", "r")
            if isinstance(file, str | Path) and str(file).endswith(images) and "r" in mode:
                counted[str(file)] += 1
            return real(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", counting(real_open))
    monkeypatch.setattr(io, "open", counting(real_io_open))
    real_decode_fn = pipeline.decode_fn

    def counted_decode_fn(image_size):
        from edgekit.compat import tf

        decode = real_decode_fn(image_size)

        def note(path):
            counted[path.decode()] += 1
            return path

        return lambda path, ok: decode(tf.numpy_function(note, [path], tf.string, stateful=True), ok)

    monkeypatch.setattr(pipeline, "decode_fn", counted_decode_fn)
    return counted


def _first_train_load(root: Path):
    """What `train` does with its data before fitting: load the splits, then read both through the cache."""
    splits = load_dataset(DataSpec(data=str(root), image_size=SIZE, validation_fraction=0.3))
    pixels = {name: np.concatenate([x for x, _ in iter_pixel_batches(split, SIZE, batch_size=5)])
              for name, split in (("train", splits.train), ("validation", splits.validation))}
    return splits, pixels


def test_a_first_load_reads_each_file_once_and_a_second_none(tmp_path, edgekit_home, reads):
    root = _folder(tmp_path / "data")
    files = sorted(str(p) for p in root.rglob("*.*"))
    reads.clear()
    splits, pixels = _first_train_load(root)
    assert len(splits.train) + len(splits.validation) == len(files)
    assert dict(reads) == {path: 1 for path in files}  # was 5: header, check decode, hash x2, cache build
    assert splits.record.split.duplicates.exact_groups == 1  # the hashes came from that read
    reads.clear()
    _, again = _first_train_load(root)
    assert dict(reads) == {}  # verdicts, hashes and pixels all cached
    for name in pixels:
        np.testing.assert_array_equal(again[name], pixels[name])


def test_pixels_kept_from_the_scan_equal_the_pipelines_own_decode(tmp_path, edgekit_home, monkeypatch):
    """The cache entries built from the scan's pixels hold exactly what decoding the files again gives."""
    root = _folder(tmp_path / "data")
    built_from = []
    real = pixelcache.staged_batches
    monkeypatch.setattr(pixelcache, "staged_batches", lambda *a: built_from.append(real(*a)) or built_from[-1])
    splits, pixels = _first_train_load(root)
    assert len(built_from) == 2 and all(b is not None for b in built_from)  # both entries came from the scan
    for name, split in (("train", splits.train), ("validation", splits.validation)):
        np.testing.assert_array_equal(pixels[name], load_pixels(split, SIZE))  # load_pixels decodes the files


def test_facts_from_the_scan_equal_hashing_the_file(tmp_path, edgekit_home):
    root = _folder(tmp_path / "data")
    paths = sorted(str(p) for p in root.rglob("*.*"))
    from edgekit.data import scan_class_folders

    scan_class_folders(root, DataSpec(data=str(root)), hashes=True)
    handed = dict(hashing_module.HANDED.facts)
    assert len([k for k in handed if k[0] in paths]) == len(paths)
    for key, facts in handed.items():
        if key[0] in paths:
            assert facts == hashing_module.image_facts(key[0])
    hashing_module.hash_files(paths)
    assert not [k for k in hashing_module.HANDED.facts if k[0] in paths]  # taken, not kept as a second cache


def test_a_changed_file_is_read_again_not_taken_from_the_scan(tmp_path, edgekit_home, reads):
    root = _folder(tmp_path / "data")
    from edgekit.data import scan_class_folders

    scan = scan_class_folders(root, DataSpec(data=str(root), image_size=SIZE), hashes=True, pixels=True)
    changed = scan.paths[0]
    with Image.open(changed) as image:
        kind = image.format
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(changed, format=kind)
    reads.clear()
    facts = hashing_module.hash_files(scan.paths)
    assert facts[0] == hashing_module.image_facts(changed) and reads[changed] >= 1
    assert pixelcache.staged_batches(scan.paths, scan.tf_decodable, SIZE, scan_module.decode.pixel_sources()) is None
