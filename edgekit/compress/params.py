"""Every compression stage's parameters, free of TensorFlow so recipes validate in milliseconds.

A recipe is checked field by field before any work (and before TensorFlow is imported): these
dataclasses are the schema, and each one's `problems()` lists values of the right type that cannot work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgekit.config import EPOCHS, LEARNING_RATE, Range

SCHEDULES = ("polynomial", "constant")
CENTROID_INIT_NAMES = ("kmeans++", "linear", "random", "density-based")
PRESERVE = ("auto", "none", "sparsity", "clusters", "sparsity+clusters")
MODES = ("float32", "float16", "dynamic", "int8")
IO_DTYPES = ("float32", "int8", "uint8")
STEPS = Range(0, 1_000_000_000, "steps")
# More than 256 centroids saves nothing: an int8 weight has 256 values, and each centroid costs a lookup.
CLUSTERS = Range(2, 256, "centroids")
CALIBRATION_SAMPLES = Range(0, 100_000, "images")
COMPILER_TIMEOUT_S = Range(1, 86_400, "seconds")


def _outside(found: list, params, *ranges: tuple[str, Range]) -> list[tuple[str, str]]:
    """(field, why) for each named field whose value is outside its range."""
    return found + [(name, f"must be {span.text}, got {getattr(params, name)}") for name, span in ranges
                    if getattr(params, name) is not None and getattr(params, name) not in span]


def common_problems(epochs: int, learning_rate: float) -> list[tuple[str, str]]:
    """A stage's wrappers only do their work while training, so every stage needs at least one epoch."""
    found = []
    if epochs not in EPOCHS:
        found.append(("epochs", f"must be {EPOCHS.text}, got {epochs}"))
    if learning_rate not in LEARNING_RATE:
        found.append(("learning_rate", f"must be {LEARNING_RATE.text}, got {learning_rate}"))
    return found


@dataclass(frozen=True)
class PruneParams:
    """How far and how fast to prune; `end_step=None` means the last step of fine-tuning.

    `frequency=None` means every 100 steps, or more often when the run is too short for 10 updates.
    `structured_2x4` zeroes 2 of every 4 consecutive input-channel weights (always 50%).
    `latency_policy` prunes only the 1x1 convolutions XNNPACK's sparse kernels can accelerate.
    """

    target_sparsity: float = 0.5
    schedule: Literal["polynomial", "constant"] = "polynomial"
    begin_step: int = 0
    end_step: int | None = None
    frequency: int | None = None
    initial_sparsity: float = 0.0
    structured_2x4: bool = False
    latency_policy: bool = False
    epochs: int = 2
    learning_rate: float = 1e-4

    def problems(self) -> list[tuple[str, str]]:
        """(field, why) for values of the right type that cannot work; empty when all is well."""
        found = []
        if not 0.0 <= self.target_sparsity < 1.0:
            found.append(("target_sparsity", "must be in [0, 1); 1 would remove every weight"))
        if not 0.0 <= self.initial_sparsity <= self.target_sparsity:
            found.append(("initial_sparsity", f"must be in [0, target_sparsity={self.target_sparsity}]"))
        if self.schedule not in SCHEDULES:
            found.append(("schedule", f"must be one of {', '.join(SCHEDULES)}"))
        if self.begin_step < 0:
            found.append(("begin_step", "must be 0 or more"))
        if self.end_step is not None and self.end_step <= self.begin_step:
            found.append(("end_step", f"must be after begin_step ({self.begin_step}), or unset"))
        if self.frequency is not None and self.frequency < 1:
            found.append(("frequency", "must be 1 or more, or unset"))
        if self.structured_2x4 and self.target_sparsity != 0.5:
            found.append(("target_sparsity", "structured_2x4 is always 50% sparse; use 0.5 or drop 2x4"))
        found = _outside(found, self, ("begin_step", STEPS), ("end_step", STEPS), ("frequency", STEPS))
        return found + common_problems(self.epochs, self.learning_rate)


@dataclass(frozen=True)
class ClusterParams:
    """`clusters` unique values per kernel; `preserve_sparsity` keeps the zeros of a pruned model."""

    clusters: int = 16
    centroid_init: Literal["kmeans++", "linear", "random", "density-based"] = "kmeans++"
    preserve_sparsity: bool = False
    epochs: int = 2
    learning_rate: float = 1e-5

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.clusters not in CLUSTERS:
            found.append(("clusters", f"must be {CLUSTERS.text}, got {self.clusters}"))
        if self.centroid_init not in CENTROID_INIT_NAMES:
            found.append(("centroid_init", f"must be one of {', '.join(CENTROID_INIT_NAMES)}"))
        return found + common_problems(self.epochs, self.learning_rate)


@dataclass(frozen=True)
class QATParams:
    """`preserve='auto'` keeps what the previous stage made: sparsity after prune, clusters after cluster."""

    epochs: int = 2
    learning_rate: float = 1e-5
    preserve: Literal["auto", "none", "sparsity", "clusters", "sparsity+clusters"] = "auto"

    def problems(self) -> list[tuple[str, str]]:
        found = [] if self.preserve in PRESERVE else [("preserve", f"must be one of {', '.join(PRESERVE)}")]
        return found + common_problems(self.epochs, self.learning_rate)


@dataclass(frozen=True)
class ConvertParams:
    """`io_dtype` int8/uint8 makes the model take and return integers (uint8 for the Edge TPU)."""

    mode: Literal["float32", "float16", "dynamic", "int8"] = "float32"
    calibration_samples: int = 100
    io_dtype: Literal["float32", "int8", "uint8"] = "float32"

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.mode not in MODES:
            found.append(("mode", f"must be one of {', '.join(MODES)}"))
        if self.io_dtype not in IO_DTYPES:
            found.append(("io_dtype", f"must be one of {', '.join(IO_DTYPES)}"))
        elif self.io_dtype != "float32" and self.mode != "int8":
            found.append(("io_dtype", f"integer input/output needs mode int8, not {self.mode}"))
        return _outside(found, self, ("calibration_samples", CALIBRATION_SAMPLES))


@dataclass(frozen=True)
class EdgeTPUParams:
    """Check the converted model against the Edge TPU and run edgetpu_compiler when it is installed."""

    run_compiler: bool = True
    compiler_timeout_s: int = 600

    def problems(self) -> list[tuple[str, str]]:
        return _outside([], self, ("compiler_timeout_s", COMPILER_TIMEOUT_S))
