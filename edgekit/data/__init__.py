"""Datasets and the pipelines that feed them: what the rest of edgekit imports from the data layer.

Imports inside the package run one way, bottom to top: `types` → `decode` → `filecache` (per-file
results) → `hashing` → `pixelcache` → `scan` (whose one read per file feeds the two below it) → `exclude`
→ `split` → `pipeline` → `datasets`, and this façade on top. A module of the package imports its
neighbours by their module name, never this façade; `tests/test_imports.py` keeps it so.
"""

from edgekit.data.datasets import export_digits, load_dataset, render_digits
from edgekit.data.decode import BadImage, inspect_image
from edgekit.data.filecache import cache_settings, parse_size
from edgekit.data.pipeline import calibration_images, iter_pixel_batches, load_pixels, make_pipeline
from edgekit.data.scan import scan_class_folders
from edgekit.data.split import stratified_split
from edgekit.data.types import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    DatasetRecord,
    DatasetSplits,
    DataSpec,
    ImageSet,
    ScannedFolder,
)

__all__ = [
    "IMAGE_EXTENSIONS", "SPLIT_NAMES", "BadImage", "DataSpec", "DatasetRecord", "DatasetSplits", "ImageSet",
    "ScannedFolder",
    "cache_settings", "calibration_images", "export_digits", "inspect_image", "iter_pixel_batches",
    "load_dataset", "load_pixels", "make_pipeline", "parse_size", "render_digits", "scan_class_folders",
    "stratified_split",
]
