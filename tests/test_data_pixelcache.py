"""The decode-once pixel cache: exact pixels, reuse, invalidation, damage, limits and a full disk."""

from __future__ import annotations

import errno
import importlib.util
import inspect
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgekit.data import (
    DataSpec,
    decode,
    filecache,
    iter_pixel_batches,
    load_dataset,
    load_pixels,
    make_pipeline,
    pipeline,
    pixelcache,
)
from edgekit.devices import runner_path
from edgekit.errors import EdgekitError

SIZE = 24


@pytest.fixture
def images(tmp_path):
    """Six photos-like files in three formats (tf.io and Pillow decode paths), two classes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i, ext in enumerate(("jpg", "png", "webp")):
            array = rng.integers(0, 256, (37 + i, 29, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / cls / f"{i}.{ext}")
    splits = load_dataset(DataSpec(data=str(root), image_size=SIZE, validation_fraction=0.01))
    return splits.train.concat(splits.validation)


def _entries(home):
    root = home / "cache" / "pixels"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def _cached(images):
    x, y = zip(*iter_pixel_batches(images, SIZE, batch_size=4))
    return np.concatenate(x), np.concatenate(y)


def test_cached_pixels_equal_the_uncached_pipeline_and_are_decoded_once(images, edgekit_home, monkeypatch):
    first, targets = _cached(images)
    [entry] = _entries(edgekit_home)
    np.testing.assert_array_equal(first, load_pixels(images, SIZE))  # load_pixels never caches
    np.testing.assert_array_equal(targets, images.targets)
    monkeypatch.setattr(pixelcache, "_build", lambda *a: pytest.fail("decoded a second time"))
    again, _ = _cached(images)
    np.testing.assert_array_equal(again, first)
    assert _entries(edgekit_home) == [entry]


def test_training_reads_every_cached_image_once_per_epoch(images, monkeypatch):
    monkeypatch.setattr(pixelcache, "SHARD_BYTES", SIZE * SIZE * 3 * 4 * 2)  # three shards of two
    expected = {load_pixels(images.subset([i]), SIZE)[0].tobytes(): int(images.targets[i])
                for i in range(len(images))}
    ds = make_pipeline(images, SIZE, 4, training=True, seed=1)
    for _ in range(2):
        seen = {x.tobytes(): int(y) for xb, yb in ds for x, y in zip(xb.numpy(), yb.numpy())}
        assert seen == expected


def test_a_changed_file_makes_a_new_entry(images, edgekit_home):
    before, _ = _cached(images)
    path = images.paths[0]
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(path, format=Image.open(path).format)
    after, _ = _cached(images)
    assert len(_entries(edgekit_home)) == 2
    assert not np.array_equal(before[0], after[0]) and np.array_equal(before[1:], after[1:])


@pytest.mark.parametrize("damage, notice", [
    ("truncate", "has the wrong size"),
    ("index", "unreadable index"),
    ("version", "another edgekit version or decoder"),
])
def test_damaged_or_foreign_entry_is_rebuilt_with_a_notice(images, edgekit_home, caplog, damage, notice):
    good, _ = _cached(images)
    [entry] = _entries(edgekit_home)
    shard = entry / "shard-00000.f32"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "index":
        (entry / "index.json").write_text("{not json")
    else:
        index = json.loads((entry / "index.json").read_text())
        (entry / "index.json").write_text(json.dumps({**index, "decoder": "edgekit 0.0.1"}))
    with caplog.at_level(logging.WARNING):
        again, _ = _cached(images)
    np.testing.assert_array_equal(again, good)
    assert notice in caplog.text and "rebuilding it" in caplog.text
    fingerprint = pixelcache.decoder_fingerprint(pipeline.pixel_sources())
    assert pixelcache._problem(entry, len(images), SIZE, fingerprint) is None


def _flip_a_bit(shard: Path) -> None:
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0x40
    shard.write_bytes(bytes(raw))


def test_a_damaged_shard_is_found_when_read_in_one_line_and_rebuilt_next_time(images, edgekit_home, caplog,
                                                                              monkeypatch):
    """Opening an entry no longer reads every shard; the shard read checks its checksum and never yields
    wrong pixels: one line naming the entry and shard, the entry removed, the next run rebuilds it."""
    good, _ = _cached(images)
    [entry] = _entries(edgekit_home)
    _flip_a_bit(entry / "shard-00000.f32")
    opened = []
    real = pixelcache.read_shard
    monkeypatch.setattr(pixelcache, "read_shard", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    pixelcache.open_or_build(list(images.paths), list(images.tf_decodable), SIZE, lambda: pytest.fail("rebuilt"),
                             pipeline.pixel_sources())
    assert opened == []  # opening the entry read no shard
    with pytest.raises(EdgekitError) as caught:
        _cached(images)
    message = str(caught.value)
    assert "\n" not in message and "shard-00000.f32 fails its checksum" in message and str(entry) in message
    assert "run the command again" in message
    with caplog.at_level(logging.WARNING):
        again, _ = _cached(images)
    np.testing.assert_array_equal(again, good)
    assert "rebuilding it" in caplog.text


def test_a_shard_damaged_mid_epoch_stops_training_with_the_same_line(images, edgekit_home, monkeypatch):
    monkeypatch.setattr(pixelcache, "SHARD_BYTES", SIZE * SIZE * 3 * 4 * 2)  # three shards of two
    _cached(images)
    [entry] = _entries(edgekit_home)
    ds = make_pipeline(images, SIZE, 2, training=True, seed=1)
    _flip_a_bit(entry / "shard-00002.f32")
    from edgekit.compat import tf

    with pytest.raises(tf.errors.OpError) as caught:
        for _ in ds:
            pass
    line = pixelcache.damage_line(caught.value)
    assert line is not None and "shard-00002.f32 fails its checksum" in line
    assert not (entry / "index.json").exists()  # the next open rebuilds it


def test_cli_turns_a_wrapped_damaged_shard_into_one_line(capsys):
    from edgekit.cli import user_errors
    from edgekit.compat import tf

    def fit():
        raise tf.errors.UnknownError(None, None, "Traceback ...\nDamagedShard: pixel cache entry /h/cache/pixels/ab "
                                     f"{pixelcache.DAMAGED}: shard-00001.f32 fails its checksum; the entry was "
                                     "removed, run the command again to rebuild it\n\t [[{{node PyFunc}}]]")

    import typer

    with pytest.raises(typer.Exit):
        user_errors(fit)()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: pixel cache entry /h/cache/pixels/ab is damaged")


def _edited_copy(source: Path, folder: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert text.count(old) == 1, f"{source} no longer holds {old!r}; pick another line to edit"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / source.name
    copy.write_text(text.replace(old, new))
    return copy


def test_an_edited_device_decode_rebuilds_the_cache_with_its_pixels(images, edgekit_home, caplog, monkeypatch,
                                                                     tmp_path):
    """The runner's decode (training's Pillow path, here the .webp files) is part of the key: after an edit
    that inverts its pixels, the cached pixels are rebuilt, not served from the old decoder."""
    before, _ = _cached(images)
    edited = _edited_copy(runner_path(), tmp_path / "edited", "            return pixels, image.format",
                          "            return 255 - pixels, image.format")
    spec = importlib.util.spec_from_file_location("edited_runner", edited)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(decode, "device_runner", lambda: module)
    with caplog.at_level(logging.WARNING):
        after, _ = _cached(images)
    assert "another edgekit version or decoder" in caplog.text and "rebuilding it" in caplog.text
    pillow = np.array([not ok for ok in images.tf_decodable])
    assert pillow.any() and not pillow.all()
    np.testing.assert_allclose(after[pillow], 255 - before[pillow], atol=1e-3)
    np.testing.assert_array_equal(after[~pillow], before[~pillow])


@pytest.mark.parametrize("module, old, new", [
    ("decode", 'dct_method="INTEGER_ACCURATE"', 'dct_method="INTEGER_FAST"'),  # the JPEG DCT path most photos take
    ("decode", 'method="bilinear"', 'method="area"'),  # the resize
    ("pipeline", "decode(p, ok), y)", "decode(p, ok) / 2, y)"),  # the uncached pipeline the cache is filled from
])
def test_an_edited_host_decode_rebuilds_the_cache(images, edgekit_home, caplog, monkeypatch, tmp_path, module, old,
                                                   new):
    """Every line of the host modules that make the pixels is in the key, not only a few listed functions."""
    _cached(images)
    host = Path({"decode": decode, "pipeline": pipeline}[module].__file__)
    edited = _edited_copy(host, tmp_path / "edited", old, new)
    sources = pipeline.pixel_sources()
    assert host in sources and Path(runner_path()) in sources
    monkeypatch.setattr(pipeline, "pixel_sources", lambda: [edited if p == host else p for p in sources])
    with caplog.at_level(logging.WARNING):
        _cached(images)
    assert "another edgekit version or decoder" in caplog.text and len(_entries(edgekit_home)) == 1


def test_every_step_from_file_to_pixels_lives_in_a_hashed_source():
    """A decode step defined outside the hashed files would escape the cache key."""
    sources = {p.resolve() for p in pipeline.pixel_sources()}
    runner = decode.device_runner()
    steps = [pipeline.make_pipeline, pipeline._disk_cache, decode.decode_fn, decode._jpeg_ratio,
             decode._decode_jpeg, decode.pil_decode, runner.decode_image, runner.jpeg_draft_scale]
    assert {Path(inspect.getsourcefile(step)).resolve() for step in steps} <= sources


def test_full_disk_while_writing_continues_without_the_cache(images, edgekit_home, caplog, monkeypatch):
    class FullDisk:
        def __init__(self, path, mode):
            self.path = path

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(pixelcache, "open", FullDisk, raising=False)
    with caplog.at_level(logging.WARNING):
        pixels, _ = _cached(images)
    np.testing.assert_array_equal(pixels, load_pixels(images, SIZE))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "without the cache" in warnings[0]
    assert _entries(edgekit_home) == [] and not any((edgekit_home / "cache" / "pixels").iterdir())


def test_too_little_free_space_skips_the_cache(images, edgekit_home, caplog, monkeypatch):
    monkeypatch.setattr(pixelcache.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with caplog.at_level(logging.WARNING):
        pixels, _ = _cached(images)
    assert len(pixels) == len(images) and _entries(edgekit_home) == [] and "without the cache" in caplog.text


def test_size_limit_refuses_what_cannot_fit_and_evicts_least_recently_used(images, edgekit_home, monkeypatch,
                                                                           caplog):
    one_entry = SIZE * SIZE * 3 * 4 * 3
    monkeypatch.setenv("EDGEKIT_CACHE_LIMIT", str(one_entry))
    with caplog.at_level(logging.WARNING):
        _cached(images)  # six images do not fit
    assert _entries(edgekit_home) == [] and "over the cache limit" in caplog.text
    first, second = images.subset([0, 1, 2]), images.subset([3, 4, 5])
    _cached(first)
    [old] = _entries(edgekit_home)
    _cached(second)
    [new] = _entries(edgekit_home)
    assert new != old


def test_cache_off_writes_nothing(images, edgekit_home, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", "off")
    pixels, _ = _cached(images)
    assert len(pixels) == len(images) and not (edgekit_home / "cache" / "pixels").exists()


def test_bad_cache_limit_is_one_clear_error(images, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE_LIMIT", "lots")
    with pytest.raises(EdgekitError, match=r"EDGEKIT_CACHE_LIMIT='lots': not a size"):
        _cached(images)
    assert filecache.parse_size("1.5G", "x") == int(1.5 * (1 << 30)) and filecache.parse_size("20GiB", "x") == 20 << 30


def test_streamed_evaluation_equals_the_array_version(images):
    from edgekit.evaluate import evaluate_predictor

    class Brightness:  # a stand-in model: class 1 when the image is brighter than average
        def predict(self, x):
            bright = (x.mean(axis=(1, 2, 3)) > 127.5).astype(np.float32)
            return np.stack([1 - bright, bright], axis=1)

    labels = ("a", "b")
    whole = evaluate_predictor(Brightness(), load_pixels(images, SIZE), images.targets, labels)
    streamed = evaluate_predictor(Brightness(), iter_pixel_batches(images, SIZE, batch_size=4), None, labels)
    assert streamed == whole


def test_cli_no_cache_and_cache_limit(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    monkeypatch.setenv("EDGEKIT_CACHE", "on")  # restored after the test: the option sets the environment
    monkeypatch.setenv("EDGEKIT_CACHE_LIMIT", "20G")
    result = CliRunner().invoke(app, ["--cache-limit", "huge", "info", str(tmp_path)])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        "error: --cache-limit='huge': not a size; use bytes or a number with K, M, G or T (e.g. 20G)"]
    CliRunner().invoke(app, ["--no-cache", "--cache-limit", "5G", "info", str(tmp_path)])
    assert filecache.cache_settings() == filecache.CacheSettings(False, 5 << 30)
