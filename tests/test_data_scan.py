"""Folder scanning: the training decoder decides, every skipped file is named, verdicts are cached."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import DataSpec, decode, load_dataset, load_pixels, make_pipeline, scan_class_folders
from edgekit.data import scan as scan_module
from edgekit.errors import EdgekitError


def _png(path, seed=0, size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def _bad_crc_png(path):
    """A PNG whose IDAT chunk has a wrong CRC: Pillow decodes it, TensorFlow's libpng refuses it."""
    _png(path, seed=9)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"IDAT")
    raw[at + 4 + int.from_bytes(raw[at - 4:at], "big")] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _folder(root, per_class=3):
    for cls in ("cat", "dog"):
        for i in range(per_class):
            _png(root / cls / f"{i}.png", seed=i + (10 if cls == "dog" else 0))
    return root


def test_png_with_bad_crc_is_skipped_and_training_decodes_everything_left(tmp_path):
    root = _folder(tmp_path / "data")
    bad = _bad_crc_png(root / "cat" / "bad_crc.png")
    with Image.open(bad) as image:
        image.load()  # the old Pillow-only check passed it
    scan = scan_class_folders(root, DataSpec(data=str(root)))
    reasons = dict(scan.skipped)
    assert str(bad) not in scan.paths and "training decoder" in reasons[str(bad)]
    assert "Invalid PNG data" in reasons[str(bad)] and "{{" not in reasons[str(bad)]
    splits = load_dataset(DataSpec(data=str(root), image_size=16))
    for images in (splits.train, splits.validation):  # used to fail mid-epoch with InvalidArgumentError
        assert sum(len(y) for _, y in make_pipeline(images, 16, 4, cache=False)) == len(images)


def test_png_with_bad_crc_is_fatal_with_strict(tmp_path):
    root = _folder(tmp_path / "data")
    _bad_crc_png(root / "dog" / "bad_crc.png")
    with pytest.raises(EdgekitError, match=r"bad_crc\.png: cannot be decoded by the training decoder.*--strict"):
        scan_class_folders(root, DataSpec(data=str(root), strict=True))


def test_every_skipped_file_is_named_with_its_reason(tmp_path, caplog, edgekit_home):
    root = _folder(tmp_path / "data")
    cat = root / "cat"
    (cat / "notes.txt").write_text("not an image")
    (cat / "README").write_text("no extension")
    (cat / "folder.jpg").mkdir()
    _png(cat / "folder.jpg" / "inside.png", seed=3)
    os.symlink("loop.jpg", cat / "loop.jpg")
    os.symlink("missing.png", cat / "dangling.png")
    (cat / ".DS_Store").write_bytes(b"\0")
    (root / "stray.jpg").write_bytes(b"beside the classes")
    Image.fromarray(np.full((8, 8, 3), 77, np.uint8)).save(cat / "scan.tif")
    with caplog.at_level(logging.WARNING):
        scan = scan_class_folders(root, DataSpec(data=str(root)))
    reasons = {os.path.relpath(p, root): r for p, r in scan.skipped}
    assert set(reasons) == {"cat/notes.txt", "cat/README", "cat/folder.jpg", "cat/loop.jpg", "cat/dangling.png",
                            "cat/.DS_Store", "stray.jpg"}
    assert "symlink" in reasons["cat/loop.jpg"] and "symlink" in reasons["cat/dangling.png"]
    assert ".txt is not an image type" in reasons["cat/notes.txt"]
    assert "no file extension" in reasons["cat/README"] and "folder" in reasons["cat/folder.jpg"]
    used = {os.path.relpath(p, root) for p in scan.paths}
    assert {"cat/scan.tif", "cat/folder.jpg/inside.png"} <= used  # TIFF is read (through Pillow)
    [record] = [r for r in caplog.records if "skipped 7 file(s)" in r.getMessage()]
    listing = record.getMessage().split("listed with reasons in ")[1].split(" (use")[0]
    lines = open(listing).read().splitlines()
    assert lines[0] == "path\treason" and len(lines) == 8
    assert {line.split("\t")[0] for line in lines[1:]} == {p for p, _ in scan.skipped}


def test_tiff_pixels_reach_the_pipeline(tmp_path):
    root = tmp_path / "data"
    array = np.random.default_rng(4).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(array).save(root / cls / "x.tiff")
    splits = load_dataset(DataSpec(data=str(root), image_size=12))
    assert not splits.train.tf_decodable[0]
    pixels = load_pixels(splits.train, 12)
    np.testing.assert_array_equal(pixels[0], array.astype(np.float32))


def test_unchanged_folder_is_not_decoded_again(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    spec = DataSpec(data=str(root))
    first = scan_class_folders(root, spec)
    calls = []
    real = scan_module.read_image_bytes
    monkeypatch.setattr(scan_module, "read_image_bytes", lambda path: calls.append(path) or real(path))
    again = scan_class_folders(root, spec)
    assert calls == [] and again.paths == first.paths and again.tf_decodable == first.tf_decodable
    changed = root / "dog" / "1.png"
    _png(changed, seed=99, size=(21, 20))
    os.utime(changed, ns=(1, 1))
    third = scan_class_folders(root, spec)
    assert [str(p) for p in calls] == [str(changed)] and third.paths == first.paths


def test_an_edited_decoder_checks_every_file_again(tmp_path, monkeypatch):
    """A verdict says whether the training decoder reads a file, so the decoder's code is in the scan cache's
    key: after an edit to it, nothing is taken from the old verdicts."""
    root = _folder(tmp_path / "data")
    spec = DataSpec(data=str(root))
    first = scan_class_folders(root, spec)
    host = Path(decode.__file__)
    edited = tmp_path / "edited" / host.name
    edited.parent.mkdir()
    edited.write_text(host.read_text() + "\n# an edit\n")
    sources = decode.pixel_sources()
    monkeypatch.setattr(decode, "pixel_sources", lambda: [edited if p == host else p for p in sources])
    calls = []
    real = scan_module.read_image_bytes
    monkeypatch.setattr(scan_module, "read_image_bytes", lambda path: calls.append(path) or real(path))
    again = scan_class_folders(root, spec)
    assert sorted(map(str, calls)) == sorted(first.paths) and again.paths == first.paths


def test_cached_verdict_of_a_bad_file_still_obeys_strict(tmp_path):
    root = _folder(tmp_path / "data")
    _bad_crc_png(root / "cat" / "bad.png")
    scan_class_folders(root, DataSpec(data=str(root)))
    with pytest.raises(EdgekitError, match=r"bad\.png: .*drop --strict"):
        scan_class_folders(root, DataSpec(data=str(root), strict=True))


def test_damaged_scan_cache_is_rebuilt_with_a_notice(tmp_path, edgekit_home, caplog):
    root = _folder(tmp_path / "data")
    scan_class_folders(root, DataSpec(data=str(root)))
    [cache_file] = (edgekit_home / "cache" / "scan").glob("*.json")
    cache_file.write_text('{"format": 2, "files": ')
    with caplog.at_level(logging.WARNING):
        scan = scan_class_folders(root, DataSpec(data=str(root)))
    assert len(scan.paths) == 6 and "is unreadable" in caplog.text and "computing it again" in caplog.text
    assert json.loads(cache_file.read_text())["files"]


def test_no_cache_writes_no_scan_cache(tmp_path, edgekit_home, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", "off")
    root = _folder(tmp_path / "data")
    scan_class_folders(root, DataSpec(data=str(root)))
    assert not (edgekit_home / "cache").exists()


def test_a_cache_that_cannot_be_saved_leaves_the_scan_working(tmp_path, edgekit_home, caplog, monkeypatch):
    from edgekit.data import filecache

    def full_disk(path, text):
        raise EdgekitError(f"{path}: cannot write (No space left on device); free some space")

    monkeypatch.setattr(filecache, "write_text_atomic", full_disk)
    root = _folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        scan = scan_class_folders(root, DataSpec(data=str(root)))
    assert len(scan.paths) == 6 and "could not save the scan cache" in caplog.text
    assert "No space left on device" in caplog.text
