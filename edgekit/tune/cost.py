"""What a tune study will cost on this machine, said before the first trial, and per candidate.

A candidate's training time is dominated by its forward and backward passes, which scale with the
model's multiply-accumulates (MACs) per image. Two short timed training steps on this machine (the
smallest and the largest candidate of the space, random data, the study's batch size) fit
seconds-per-image = c0 + c1 x MMACs, and every candidate is then estimated from its MACs, the size of the
training split and its epochs, plus the compression stages that train again (prune, cluster, QAT) and a
fixed allowance for conversion and benchmarking. Early stopping and pruning can only make a trial
shorter, so the estimate is an upper bound for training; the report puts each trial's estimate beside
its wall time.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from dataclasses import dataclass

import numpy as np

from edgekit.config import duration_seconds
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

# MobileNetV2 multiply-adds at 224 px by width multiplier (Sandler et al. 2018, the published table);
# other sizes scale with the pixel count, other widths are interpolated.
MMACS_AT_224 = {0.35: 59.0, 0.5: 97.0, 0.75: 209.0, 1.0: 300.0, 1.3: 509.0, 1.4: 582.0}
VALIDATION_SHARE = 1 / 3  # a forward pass costs about a third of a training step per image
CONVERT_AND_BENCH_S = 30.0  # conversion (13-50 s on 2 cores) and the short bench, per candidate
TIMED_STEPS = 3


def mmacs(width: float, image_size: int) -> float:
    """MobileNetV2's millions of multiply-adds per image at this width and input size."""
    widths = sorted(MMACS_AT_224)
    width = min(max(width, widths[0]), widths[-1])
    at_224 = float(np.interp(width, widths, [MMACS_AT_224[w] for w in widths]))
    return at_224 * (image_size / 224) ** 2


@dataclass(frozen=True)
class TrainRate:
    """Training seconds per image on this machine as a linear function of MMACs per image."""

    base_s: float
    per_mmac_s: float
    measured: tuple = ()  # ((width, size, seconds per image), ...) the fit came from

    def seconds_per_image(self, width: float, image_size: int) -> float:
        return max(self.base_s + self.per_mmac_s * mmacs(width, image_size), 1e-6)

    def as_dict(self) -> dict:
        return {"base_s": self.base_s, "per_mmac_s": self.per_mmac_s, "measured": [list(m) for m in self.measured]}

    @classmethod
    def from_dict(cls, data: dict) -> TrainRate:
        return cls(float(data["base_s"]), float(data["per_mmac_s"]), tuple(tuple(m) for m in data["measured"]))


def time_training_step(width: float, image_size: int, num_classes: int, batch_size: int) -> float:
    """Seconds per image of a training step of this candidate on random data (after one untimed step)."""
    from edgekit.compat import keras
    from edgekit.model import ModelSpec, build_classifier, compile_for_training

    model = build_classifier(ModelSpec(num_classes, image_size, width))
    compile_for_training(model, 1e-3)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, num_classes, batch_size)
    model.train_on_batch(x, y)  # graph tracing and allocation are not the steady cost
    started = time.perf_counter()
    for _ in range(TIMED_STEPS):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - started) / (TIMED_STEPS * batch_size)
    keras.backend.clear_session()
    return seconds


def measure_rate(widths: list[float], sizes: list[int], num_classes: int, batch_size: int) -> TrainRate:
    """Time the smallest and the largest candidate and fit the line between them."""
    small, large = (min(widths), min(sizes)), (max(widths), max(sizes))
    points = [small] if small == large else [small, large]
    measured = tuple((w, s, time_training_step(w, s, num_classes, batch_size)) for w, s in points)
    if len(measured) == 1:
        w, s, t = measured[0]
        return TrainRate(0.0, t / mmacs(w, s), measured)
    (w0, s0, t0), (w1, s1, t1) = measured
    slope = max((t1 - t0) / (mmacs(w1, s1) - mmacs(w0, s0)), 0.0)
    return TrainRate(max(t0 - slope * mmacs(w0, s0), 0.0), slope, measured)


def recipe_epochs(recipe) -> int:
    """Epochs of the stages that train again (prune, cluster, QAT)."""
    return sum(int(getattr(stage.params, "epochs", 0) or 0) for stage in recipe.stages
               if stage.type in ("prune", "cluster", "qat"))


def candidate_seconds(rate: TrainRate, width: float, image_size: int, epochs: int, extra_epochs: int,
                      n_train: int, n_val: int) -> float:
    """Upper-bound wall time of one candidate: training, validation each epoch, compression, bench."""
    per_image = rate.seconds_per_image(width, image_size)
    per_epoch = per_image * (n_train + VALIDATION_SHARE * n_val)
    return per_epoch * (epochs + extra_epochs) + CONVERT_AND_BENCH_S


def study_cost(space, rate: TrainRate, n_train: int, n_val: int, trials: int | None, load_recipe) -> dict:
    """Every discrete candidate's estimate, summarised: cheapest, median, dearest, and the study's total."""
    dims = space.dimensions
    epochs_values = dims["epochs"].values() if "epochs" in dims else [30]
    recipes = {name: recipe_epochs(load_recipe(name)) for name in dims["recipe"].values()}
    estimates = []
    for width, size, epochs, recipe in itertools.product(dims["width"].values(), dims["image_size"].values(),
                                                         epochs_values, recipes):
        seconds = candidate_seconds(rate, width, size, int(epochs), recipes[recipe], n_train, n_val)
        estimates.append((seconds, {"width": width, "image_size": size, "epochs": epochs, "recipe": recipe}))
    estimates.sort(key=lambda e: e[0])
    median = statistics.median(e[0] for e in estimates)
    return {"cheapest": {"seconds": estimates[0][0], **estimates[0][1]},
            "dearest": {"seconds": estimates[-1][0], **estimates[-1][1]},
            "median_s": median, "trials": trials, "study_median_s": median * trials if trials else None,
            "rate": rate.as_dict(), "n_train": n_train, "n_val": n_val}


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cost_lines(cost: dict) -> list[str]:
    """What `edgekit tune` prints before the first trial."""
    def name(c):
        return f"width {c['width']}, {c['image_size']} px, {c['epochs']} epochs, {c['recipe']}"

    lines = [f"estimated cost per candidate on this machine: {human_seconds(cost['cheapest']['seconds'])} "
             f"({name(cost['cheapest'])}) to {human_seconds(cost['dearest']['seconds'])} "
             f"({name(cost['dearest'])}), median {human_seconds(cost['median_s'])}"]
    if cost["study_median_s"]:
        lines.append(f"{cost['trials']} trials: about {human_seconds(cost['study_median_s'])} at the median "
                     "(less where candidates are rejected before training or stop early)")
    return lines


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '2h' → seconds; anything else is one line naming the option."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise EdgekitError(f"--budget {text!r}: a duration like 900, 30m or 2h")
    if not 0 < seconds <= 30 * 86400:
        raise EdgekitError(f"--budget {text!r}: between 1 s and 30 days")
    return seconds
