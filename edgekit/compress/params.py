"""Every compression stage's parameters, free of TensorFlow so recipes validate in milliseconds.

A recipe is checked field by field before any work (and before TensorFlow is imported): these
dataclasses are the schema, with each field's rule declared on it and what needs two fields in the
class's RULES (edgekit.config's one idiom; `config.validate` and `config.from_mapping` enforce both).
Every training stage needs at least one epoch (EPOCHS): its wrappers only do their work while training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edgekit.config import EPOCHS, LEARNING_RATE, OneOf, Range, Rule

SCHEDULES = ("polynomial", "constant")
CENTROID_INIT_NAMES = ("kmeans++", "linear", "random", "density-based")
PRESERVE = ("auto", "none", "sparsity", "clusters", "sparsity+clusters")
MODES = ("float32", "float16", "dynamic", "int8")
IO_DTYPES = ("float32", "int8", "uint8")
STEPS = Range(0, 1_000_000_000, "steps")
SPARSITY = Range(0, 1, integer=False, below=True, why="1 would remove every weight")
# More than 256 centroids saves nothing: an int8 weight has 256 values, and each centroid costs a lookup.
CLUSTERS = Range(2, 256, "centroids")
CALIBRATION_SAMPLES = Range(0, 100_000, "images")
COMPILER_TIMEOUT_S = Range(1, 86_400, "seconds")


@dataclass(frozen=True)
class PruneParams:
    """How far and how fast to prune; `end_step=None` means the last step of fine-tuning.

    `frequency=None` means every 100 steps, or more often when the run is too short for 10 updates.
    `structured_2x4` zeroes 2 of every 4 consecutive input-channel weights (always 50%).
    `latency_policy` prunes only the 1x1 convolutions XNNPACK's sparse kernels can accelerate.
    """

    target_sparsity: float = SPARSITY.field(0.5)
    schedule: str = OneOf(SCHEDULES).field("polynomial")
    begin_step: int = STEPS.field(0)
    end_step: int | None = STEPS.field(None)
    frequency: int | None = Range(1, STEPS.high, "steps").field(None)
    initial_sparsity: float = SPARSITY.field(0.0)
    structured_2x4: bool = False
    latency_policy: bool = False
    epochs: int = EPOCHS.field(2)
    learning_rate: float = LEARNING_RATE.field(1e-4)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda p: p.initial_sparsity <= p.target_sparsity,
             "{initial_sparsity} must be in [0, target_sparsity={v.target_sparsity}]"),
        Rule(lambda p: p.end_step is None or p.end_step > p.begin_step,
             "{end_step} must be after begin_step ({v.begin_step}), or unset"),
        Rule(lambda p: not p.structured_2x4 or p.target_sparsity == 0.5,
             "{target_sparsity} structured_2x4 is always 50% sparse; use 0.5 or drop 2x4"),
    )


@dataclass(frozen=True)
class ClusterParams:
    """`clusters` unique values per kernel; `preserve_sparsity` keeps the zeros of a pruned model."""

    clusters: int = CLUSTERS.field(16)
    centroid_init: str = OneOf(CENTROID_INIT_NAMES).field("kmeans++")
    preserve_sparsity: bool = False
    epochs: int = EPOCHS.field(2)
    learning_rate: float = LEARNING_RATE.field(1e-5)


@dataclass(frozen=True)
class QATParams:
    """`preserve='auto'` keeps what the previous stage made: sparsity after prune, clusters after cluster."""

    epochs: int = EPOCHS.field(2)
    learning_rate: float = LEARNING_RATE.field(1e-5)
    preserve: str = OneOf(PRESERVE).field("auto")


@dataclass(frozen=True)
class ConvertParams:
    """`io_dtype` int8/uint8 makes the model take and return integers (uint8 for the Edge TPU)."""

    mode: str = OneOf(MODES).field("float32")
    calibration_samples: int = CALIBRATION_SAMPLES.field(100)
    io_dtype: str = OneOf(IO_DTYPES).field("float32")

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda p: p.io_dtype == "float32" or p.mode == "int8",
             "{io_dtype} integer input/output needs mode int8, not {v.mode}"),
    )


@dataclass(frozen=True)
class EdgeTPUParams:
    """Check the converted model against the Edge TPU and run edgetpu_compiler when it is installed."""

    run_compiler: bool = True
    compiler_timeout_s: int = COMPILER_TIMEOUT_S.field(600)
