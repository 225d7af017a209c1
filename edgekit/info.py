"""`edgekit info`: what an artifact directory or any `.tflite` file is, without importing TensorFlow."""

from __future__ import annotations

from pathlib import Path

from edgekit import manifests
from edgekit.errors import EdgekitError
from edgekit.report import describe_manifest, describe_tflite


def describe_path(path: Path) -> tuple[dict, str]:
    """(JSON payload, text) for a run/variant/result directory, a file inside one, or a bare .tflite."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix == ".tflite":
        return _describe_model_file(path)
    directory = path if path.is_dir() else path.parent
    if path.is_file() and path.name != manifests.MANIFEST and manifests.read_optional(directory) is None:
        raise EdgekitError(f"{path}: not a .tflite file, and its folder has no edgekit manifest.json; pass a .tflite "
                           "file or a run, variant, eval or bench folder")
    manifest = manifests.read(directory)
    if isinstance(manifest, manifests.TuneManifest):
        from edgekit.tune.report import describe_tune

        return manifest.as_dict(), describe_tune(directory, manifest)
    return manifest.as_dict(), describe_manifest(directory, manifest)


def _describe_model_file(path: Path) -> tuple[dict, str]:
    from edgekit.tflite import parse, read_tflite
    from edgekit.tflite_metadata import describe_lines, read_metadata

    content = read_tflite(path)
    model = parse(content, str(path))
    standard = read_metadata(content, str(path))
    payload = {"path": str(path), **model.describe(),
               "standard_metadata": standard.as_dict() if standard is not None else None}
    text = describe_tflite(path, model)
    if standard is not None:
        text += "\n" + "\n".join(describe_lines(standard))
    manifest = manifests.read_optional(path.parent)
    if manifest is not None and path.name in manifest.files:
        payload["manifest"] = manifest.as_dict()
        text += "\n" + describe_manifest(path.parent, manifest)
    return payload, text
