"""edgekit: train, compress, measure and deploy image classifiers for edge devices."""

__version__ = "0.1.0"
