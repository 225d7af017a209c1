"""Datasets and pipelines: digits, class folders, bad files, splits, decoding parity."""

from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from edgekit.config import AugmentConfig
from edgekit.data import DataSpec, export_digits, load_dataset, load_pixels, make_pipeline, stratified_split
from edgekit.errors import EdgekitError


def _image(path, size=(40, 30), color=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _two_class_folder(root, per_class=4):
    """Two classes of distinct images (a seeded block pattern in the class colour): no file is a copy of
    another, so the duplicate-aware split treats each as its own group."""
    rng = np.random.default_rng(0)
    for cls, color in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        for i in range(per_class):
            pattern = (rng.integers(0, 2, (6, 8, 1)) * np.array(color)).astype(np.uint8)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pattern).resize((40, 30), Image.NEAREST).save(root / cls / f"{i}.png")
    return root


def test_digits_split_is_stratified_and_seeded():
    a = load_dataset(DataSpec(image_size=32, seed=1))
    b = load_dataset(DataSpec(image_size=32, seed=1))
    c = load_dataset(DataSpec(image_size=32, seed=2))
    assert len(a.train) + len(a.validation) == 1797
    assert a.labels == tuple(str(i) for i in range(10))
    assert np.array_equal(a.validation.targets, b.validation.targets)
    assert np.array_equal(a.validation.pixels, b.validation.pixels)
    assert not np.array_equal(a.validation.pixels, c.validation.pixels)
    counts = np.bincount(a.validation.targets, minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40  # about 20% of ~180 per class
    assert a.train.pixels.shape[1:] == (32, 32, 3) and a.train.pixels.dtype == np.uint8


def test_stratified_split_keeps_singletons_in_train():
    targets = np.array([0, 0, 0, 0, 0, 1, 2, 2])
    train, val = stratified_split(targets, 0.2, seed=0)
    assert set(train) | set(val) == set(range(8)) and not set(train) & set(val)
    assert 5 in train  # the only image of class 1 must be trained on
    assert {int(targets[i]) for i in val} == {0, 2}


def test_class_folders_with_random_split(tmp_path):
    root = _two_class_folder(tmp_path / "data", per_class=5)
    (root / "README.txt").write_text("not an image")
    (root / "cat" / "notes.txt").write_text("ignored")
    splits = load_dataset(DataSpec(data=str(root), image_size=32))
    assert splits.labels == ("cat", "dog")
    assert len(splits.train) == 8 and len(splits.validation) == 2
    assert splits.record.n_files == 10
    assert splits.record.split.layout.startswith("class folders")


def test_train_validation_layout(tmp_path):
    root = tmp_path / "data"
    _two_class_folder(root / "train", per_class=3)
    _two_class_folder(root / "validation", per_class=2)
    _two_class_folder(root / "test", per_class=1)
    splits = load_dataset(DataSpec(data=str(root), image_size=32))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (6, 4, 2)


def test_validation_class_unknown_to_train_is_an_error(tmp_path):
    root = tmp_path / "data"
    _two_class_folder(root / "train")
    _image(root / "validation" / "bird" / "0.png")
    with pytest.raises(EdgekitError, match=r"bird.*not one of the model's classes"):
        load_dataset(DataSpec(data=str(root), image_size=32))


def test_missing_data_folder(tmp_path):
    with pytest.raises(EdgekitError, match=r"nope: no such data folder"):
        load_dataset(DataSpec(data=str(tmp_path / "nope")))


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgekitError, match=r"empty: no class folders"):
        load_dataset(DataSpec(data=str(tmp_path / "empty")))


def test_class_folder_without_images(tmp_path):
    root = _two_class_folder(tmp_path / "data")
    (root / "bird").mkdir()
    (root / "bird" / "x.txt").write_text("hello")
    with pytest.raises(EdgekitError, match=r"bird: class folder has no images"):
        load_dataset(DataSpec(data=str(root)))


def test_class_folder_with_only_corrupt_images(tmp_path):
    root = _two_class_folder(tmp_path / "data")
    (root / "bird").mkdir()
    (root / "bird" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(EdgekitError, match=r"bird: class folder has no readable image"):
        load_dataset(DataSpec(data=str(root)))


def test_only_one_class(tmp_path):
    _image(tmp_path / "data" / "cat" / "0.png")
    _image(tmp_path / "data" / "cat" / "1.png")
    with pytest.raises(EdgekitError, match=r"only one class \(cat\)"):
        load_dataset(DataSpec(data=str(tmp_path / "data")))


def _with_bad_files(root):
    _two_class_folder(root, per_class=4)
    good = root / "cat" / "good.jpg"
    _image(good, size=(64, 64), fmt="JPEG")
    data = good.read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "dog" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    return root


def test_corrupt_and_truncated_images_are_skipped_and_listed(tmp_path, caplog):
    root = _with_bad_files(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(DataSpec(data=str(root), image_size=32))
    skipped = {s.path.rsplit("/", 1)[-1] for s in splits.record.skipped}
    assert skipped == {"truncated.jpg", "garbage.png"}
    assert len(splits.train) + len(splits.validation) == 9
    assert "skipped 2 file(s)" in caplog.text and "truncated.jpg" in caplog.text
    [reason] = [s.reason for s in splits.record.skipped if s.path.endswith("truncated.jpg")]
    assert reason.startswith("is truncated: its JPEG data ends")  # what libjpeg said on stderr, said by edgekit


def test_a_jpeg_libjpeg_complains_about_is_named_by_edgekit_not_by_a_raw_line(tmp_path, caplog, capfd):
    """libjpeg prints "Corrupt JPEG data: ..." to fd 2 naming no file, and TensorFlow decodes on: the scan keeps
    the raw line off stderr and says which file it was about, once; the file is still used."""
    root = _two_class_folder(tmp_path / "data", per_class=4)
    whole = _image(tmp_path / "whole.jpg", size=(64, 48), fmt="JPEG").read_bytes()
    scan = whole.index(b"\xff\xda")
    (root / "cat" / "junk.jpg").write_bytes(whole[:scan] + b"\x00\x01\x02" + whole[scan:])
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(DataSpec(data=str(root), image_size=32))
    err = capfd.readouterr().err
    assert not re.search(r"^Corrupt JPEG data", err, re.M), err
    [line] = [r.getMessage() for r in caplog.records if "junk.jpg" in r.getMessage()]
    assert line.startswith(str(root / "cat" / "junk.jpg") + ": libjpeg reports Corrupt JPEG data: 3 extraneous bytes")
    assert len(splits.train) + len(splits.validation) == 9 and not splits.record.skipped


def test_strict_makes_a_corrupt_image_fatal(tmp_path):
    root = _with_bad_files(tmp_path / "data")
    with pytest.raises(EdgekitError, match=r"(truncated\.jpg|garbage\.png): .*drop --strict"):
        load_dataset(DataSpec(data=str(root), strict=True))


def test_images_too_large_to_decode_safely_are_skipped(tmp_path):
    root = _two_class_folder(tmp_path / "data")
    _image(root / "dog" / "huge.png", size=(2000, 1500))
    splits = load_dataset(DataSpec(data=str(root), max_image_pixels=1_000_000))
    [skipped] = splits.record.skipped
    assert skipped.path.endswith("huge.png") and "pixel limit" in skipped.reason


def test_spec_round_trips_through_a_run_manifest(tmp_path):
    """eval, compress and bench reload a run's data from its manifest: every field that picks the files or
    the split comes back. A non-default pixel limit used to be dropped, so the reload saw other files."""
    from edgekit import manifests

    root = _two_class_folder(tmp_path / "data", per_class=5)
    _image(root / "dog" / "huge.png", size=(1200, 1000))  # over the run's limit, under the default one
    extra = _two_class_folder(tmp_path / "extra", per_class=2)
    exclusions = tmp_path / "exclude.txt"
    exclusions.write_text("cat/0.png\n")
    spec = DataSpec(data=str(root.resolve()), extra_data=(str(extra.resolve()),), image_size=24, seed=7,
                    validation_fraction=0.3, max_image_pixels=1_000_000, exclude=str(exclusions.resolve()))
    splits = load_dataset(spec)
    run = tmp_path / "run"
    run.mkdir()
    manifests.write(run, manifests.RunManifest(name="r", dataset=splits.record), [])
    again = manifests.read(run, manifests.RunManifest).dataset.spec
    assert again == spec
    reloaded = load_dataset(again)
    assert (reloaded.train.paths, reloaded.validation.paths) == (splits.train.paths, splits.validation.paths)
    assert not any(p.endswith("huge.png") for p in reloaded.train.paths + reloaded.validation.paths)


def test_every_supported_format_decodes(tmp_path):
    root = tmp_path / "data"
    color = (10, 120, 240)
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp")):
        _image(root / "a" / f"x.{ext}", size=(16, 16), color=color, fmt=fmt)
        _image(root / "b" / f"y.{ext}", size=(16, 16), color=color, fmt=fmt)
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(root / "a" / "cmyk.jpg")
    # every file is the same flat colour, one duplicate group the group-aware split would refuse to split
    splits = load_dataset(DataSpec(data=str(root), image_size=16, validation_fraction=0.1, group_duplicates=False))
    pixels = load_pixels(splits.train.concat(splits.validation), 16)
    assert pixels.shape == (11, 16, 16, 3)
    assert not splits.record.skipped
    webp = [i for i, p in enumerate(splits.train.paths) if p.endswith(".webp")]
    assert webp and not splits.train.tf_decodable[webp[0]]  # routed through Pillow


def test_pipeline_resize_matches_tf_image_resize(tmp_path):
    from edgekit.compat import tf

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(array).save(root / cls / "img.png")
    splits = load_dataset(DataSpec(data=str(root), image_size=24))
    ours = load_pixels(splits.train, 24)[0]
    expected = tf.image.resize(array.astype(np.float32), [24, 24], method="bilinear").numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_pipeline_batches_and_augmentation_switch():
    splits = load_dataset(DataSpec(image_size=32))
    small = splits.train.subset(np.arange(64))
    off = AugmentConfig(enabled=False)
    x1, y1 = next(iter(make_pipeline(small, 32, 16, training=True, augment=off, seed=3)))
    assert x1.shape == (16, 32, 32, 3) and y1.shape == (16,)
    assert float(x1.numpy().min()) >= 0.0 and float(x1.numpy().max()) <= 255.0
    on = AugmentConfig(enabled=True, flip=False, rotation=0.1, zoom=0.2, translation=0.1, contrast=0.2)
    plain = next(iter(make_pipeline(small, 32, 64, augment=on)))[0].numpy()  # not training: no augmentation
    np.testing.assert_array_equal(plain, small.pixels.astype(np.float32))
    augmented = next(iter(make_pipeline(small, 32, 64, training=True, augment=on, seed=3)))[0].numpy()
    assert augmented.shape == plain.shape and not np.allclose(np.sort(augmented.ravel()), np.sort(plain.ravel()))


def test_extra_data_is_folded_into_training(tmp_path, digits_folder):
    extra = tmp_path / "feedback"
    shutil.copytree(digits_folder / "3", extra / "3")
    base = load_dataset(DataSpec(data=str(digits_folder), image_size=32))
    merged = load_dataset(DataSpec(data=str(digits_folder), image_size=32, extra_data=(str(extra),)))
    assert len(merged.train) == len(base.train) + 20
    assert len(merged.validation) == len(base.validation)
    assert merged.record.extra_data[0].n_files == 20


def test_extra_data_with_unknown_class_is_an_error(tmp_path, digits_folder):
    _image(tmp_path / "feedback" / "eleven" / "0.png")
    with pytest.raises(EdgekitError, match=r"eleven.*not one of the model's classes"):
        load_dataset(DataSpec(data=str(digits_folder), extra_data=(str(tmp_path / "feedback"),)))


def test_export_digits_round_trips_through_the_folder_pipeline(tmp_path):
    root = export_digits(tmp_path / "d", image_size=32, limit_per_class=3)
    splits = load_dataset(DataSpec(data=str(root), image_size=32, validation_fraction=0.34))
    digits = load_dataset(DataSpec(image_size=32))
    from_files = load_pixels(splits.train, 32)
    # every exported image is pixel-identical to some embedded digit
    all_pixels = np.concatenate([digits.train.pixels, digits.validation.pixels]).astype(np.float32)
    for image in from_files[:5]:
        assert np.any(np.all(all_pixels == image, axis=(1, 2, 3)))


def test_jpeg_decoding_matches_pillow_exactly(tmp_path):
    """The device runner decodes with Pillow; training and eval must see the same pixels."""
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, size=(8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(noisy).save(root / cls / "photo.jpg", quality=85)
    splits = load_dataset(DataSpec(data=str(root), image_size=64))
    ours = load_pixels(splits.train, 64)[0]
    with Image.open(root / "a" / "photo.jpg") as image:
        pillow = np.asarray(image.convert("RGB"), dtype=np.float32)
    np.testing.assert_array_equal(ours, pillow)
