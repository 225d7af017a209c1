"""Weight clustering as a compression stage: `apply` shares each kernel's values among a few centroids.

Built on tfmot's `cluster_weights` / `strip_clustering`. Conv2D and Dense kernels are clustered;
depthwise kernels and kernels with no more weights than clusters are left alone, as tfmot does.
"""

from __future__ import annotations

import numpy as np

from edgekit.compat import keras
from edgekit.compress.finetune import check_params, kernel_arrays, working_copy
from edgekit.compress.params import ClusterParams
from edgekit.errors import EdgekitError

# isort: split
import tensorflow_model_optimization as tfmot  # after edgekit.compat has set TF_USE_LEGACY_KERAS

CENTROID_INITS = {
    "kmeans++": "KMEANS_PLUS_PLUS",
    "linear": "LINEAR",
    "random": "RANDOM",
    "density-based": "DENSITY_BASED",
}


def apply(model: keras.Model, params: ClusterParams) -> tuple[keras.Model, list[keras.callbacks.Callback]]:
    """Wrap a copy of `model` for clustering; it needs no callbacks, so the list is empty."""
    check_params("cluster", params)
    copy = working_copy(model, "cluster")
    init = getattr(tfmot.clustering.keras.CentroidInitialization, CENTROID_INITS[params.centroid_init])
    try:
        wrapped = tfmot.clustering.keras.cluster_weights(
            copy,
            number_of_clusters=params.clusters,
            cluster_centroids_init=init,
            preserve_sparsity=params.preserve_sparsity,
        )
    except ValueError as exc:
        raise EdgekitError(f"cluster: tfmot cannot cluster this model ({str(exc).splitlines()[0]})") from None
    return wrapped, []


def finalize(wrapped: keras.Model) -> keras.Model:
    """The plain Keras model whose kernels hold only centroid values."""
    return tfmot.clustering.keras.strip_clustering(wrapped)


def unique_weights(model: keras.Model) -> dict[str, int]:
    """Number of distinct values in each Conv2D/Dense kernel: at most `clusters` once clustered."""
    return {name: int(np.unique(values).size) for name, values in kernel_arrays(model).items()}
